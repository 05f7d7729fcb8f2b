"""Tests for the optical-flow backends (DIS, RAFT) and stereo flow pairing."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.config import OpticalFlowConfig
from pipeline.stereo.optical_flow import DISFlow, RAFTFlow, make_flow_backend, stereo_flows
from pipeline.synthetic.renderer import SceneSpec, intrinsics, render_frames

STEREO = SceneSpec(width=320, height=144, fps=1.0, duration_s=1.0, seed=0, baseline_m=0.4)


@pytest.fixture(scope="module")
def stereo_pair():
    """(left, right, ground-truth disparity of the left view, usable mask: non-sky, match inside the right view)."""
    frame = next(render_frames(STEREO))
    fx = intrinsics(STEREO)[0, 0]
    sky = frame.sky_mask
    disparity = np.where(sky, 0.0, fx * STEREO.baseline_m / np.where(sky, 1.0, frame.depth)).astype(np.float32)
    inside = np.arange(STEREO.width)[None, :] - disparity >= 0
    return frame.image, frame.right_image, disparity, ~sky & inside


def test_right_view_is_left_shifted_by_minus_disparity(stereo_pair):
    # The convention everything else rests on: x_right = x_left - disparity, so the L->R flow u = -disparity.
    left, right, disparity, usable = stereo_pair
    rows, cols = np.nonzero(usable)
    matched = right[rows, np.rint(cols - disparity[rows, cols]).astype(int)].astype(float)
    wrong_sign = right[rows, np.clip(np.rint(cols + disparity[rows, cols]).astype(int), 0, STEREO.width - 1)]
    here = left[rows, cols].astype(float)
    assert np.abs(here - matched).mean() < 0.3 * np.abs(here - wrong_sign.astype(float)).mean()


def test_dis_recovers_minus_disparity(stereo_pair):
    left, right, disparity, usable = stereo_pair
    (flow,) = DISFlow()([left], [right])
    assert flow.shape == (STEREO.height, STEREO.width, 2) and flow.dtype == np.float32
    error = np.abs(flow[..., 0] + disparity)[usable]
    assert disparity[usable].max() > 10  # the pair has real parallax
    assert np.mean(error < 1.0) > 0.9  # measured: about 97% within 1 px, median 0.1 px
    assert np.median(error) < 0.3
    assert np.mean(np.abs(flow[..., 1])[usable] < 1.0) > 0.95  # rectified views: no vertical motion


def test_stereo_flows_have_opposite_signs(stereo_pair):
    left, right, disparity, usable = stereo_pair
    lr, rl = stereo_flows(DISFlow(), [left], [right])
    assert len(lr) == len(rl) == 1
    assert np.median(lr[0][..., 0][usable]) < -3
    assert np.median(rl[0][..., 0][~np.isclose(disparity, 0)]) > 3


def test_stereo_flows_makes_one_backend_call():
    calls = []

    def backend(first, second):
        calls.append((list(first), list(second)))
        return [np.full((2, 2, 2), i, np.float32) for i in range(len(first))]

    lefts, rights = ["L0", "L1"], ["R0", "R1"]
    lr, rl = stereo_flows(backend, lefts, rights)
    assert calls == [(["L0", "L1", "R0", "R1"], ["R0", "R1", "L0", "L1"])]
    assert [f[0, 0, 0] for f in lr] == [0, 1] and [f[0, 0, 0] for f in rl] == [2, 3]
    with pytest.raises(ValueError, match="left views"):
        stereo_flows(backend, lefts, rights[:1])


def test_dis_presets_and_overrides(stereo_pair):
    left, right, _, _ = stereo_pair
    for preset in ("ultrafast", "fast", "medium"):
        assert DISFlow(preset)([left], [right])[0].shape == (STEREO.height, STEREO.width, 2)
    coarse = DISFlow("medium", finest_scale=4, patch_size=8)([left], [right])[0]
    fine = DISFlow("medium")([left], [right])[0]
    assert not np.allclose(coarse, fine)  # the override reached OpenCV
    with pytest.raises(ValueError, match="preset"):
        DISFlow("slow")
    with pytest.raises(ValueError, match="no_such_knob"):
        DISFlow(no_such_knob=1)
    with pytest.raises(ValueError, match="sizes differ"):
        DISFlow()([left], [right[:-2]])
    with pytest.raises(ValueError, match="second images"):
        DISFlow()([left, left], [right])


def test_make_flow_backend(stereo_pair):
    dis = make_flow_backend(OpticalFlowConfig(dis_preset="fast"))
    assert isinstance(dis, DISFlow) and dis.preset == "fast" and dis.overrides == {}
    full = make_flow_backend(OpticalFlowConfig(dis_finest_scale=0))
    assert isinstance(full, DISFlow) and full.overrides == {"finest_scale": 0}
    left, right, disparity, usable = stereo_pair
    # Searching at full resolution is at least as close to the truth as medium's half resolution.
    errors = [np.abs(b([left], [right])[0][..., 0] + disparity)[usable].mean() for b in (full, DISFlow("medium"))]
    assert errors[0] <= errors[1] and not np.isclose(errors[0], errors[1])
    with pytest.raises(ValueError, match="raft_checkpoint"):
        make_flow_backend(OpticalFlowConfig(backend="raft"))


# ---------------------------------------------------------------- RAFT (random weights, tiny inputs)


@pytest.fixture(scope="module")
def raft_state():
    import torch

    from pipeline.torch_compat import ensure_torchvision

    ensure_torchvision()
    from torchvision.models.optical_flow import raft_small

    torch.manual_seed(0)
    return raft_small(weights=None).state_dict()


@pytest.fixture(scope="module")
def tiny_pairs():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    b = rng.integers(0, 256, (37, 61, 3), dtype=np.uint8)  # odd: uneven padding
    return [a, b, a[::-1].copy()], [np.roll(a, 2, axis=1), np.roll(b, 1, axis=0), a]


def test_raft_loads_a_local_state_dict(raft_state, tiny_pairs, tmp_path):
    import torch

    path = tmp_path / "raft_small.pt"
    torch.save(raft_state, path)
    raft = RAFTFlow(path, small=True, iterations=2, device="cpu", batch_size=2)
    first, second = tiny_pairs
    flows = raft(first, second)  # two sizes, three pairs: a batch of two 64x64 pairs and one 37x61
    assert [f.shape for f in flows] == [(64, 64, 2), (37, 61, 2), (64, 64, 2)]
    assert all(f.dtype == np.float32 and np.isfinite(f).all() for f in flows)
    # Batching and padding must not mix pairs up: one pair alone gives the same flow.
    alone = raft([first[2]], [second[2]])[0]
    np.testing.assert_allclose(alone, flows[2], atol=1e-3)
    assert not np.allclose(flows[0], flows[2], atol=1e-3)


def test_raft_pads_normalises_and_unpads(raft_state, tiny_pairs, tmp_path):
    # A stand-in model that returns its (padded) first image's R and G planes as "flow" shows what RAFT
    # is fed (RGB in [-1, 1], padded to a multiple of 8 and at least 128) and that the crop undoes the pad.
    import torch

    path = tmp_path / "raft_small.pt"
    torch.save(raft_state, path)
    raft = RAFTFlow(path, small=True, iterations=2, device="cpu", batch_size=2)
    seen = []

    def fake_model(image1, image2, num_flow_updates):
        seen.append((tuple(image1.shape), num_flow_updates))
        return [image1[:, :2] * 0.5, image1[:, :2]]

    raft.model = fake_model
    first, second = tiny_pairs
    flows = raft(first, second)
    assert sorted(seen) == [((1, 3, 128, 128), 2), ((2, 3, 128, 128), 2)]
    for image, flow in zip(first, flows):
        expected = image[..., [2, 1]].astype(np.float32) / 127.5 - 1.0
        np.testing.assert_allclose(flow, expected, atol=1e-6)


def test_raft_accepts_wrapped_checkpoints(raft_state, tiny_pairs, tmp_path):
    import torch

    plain, wrapped = tmp_path / "plain.pt", tmp_path / "wrapped.pt"
    torch.save(raft_state, plain)
    torch.save({"state_dict": {"module." + k: v for k, v in raft_state.items()}, "epoch": 3}, wrapped)
    first, second = tiny_pairs
    a = RAFTFlow(plain, small=True, iterations=2, device="cpu")(first[:1], second[:1])[0]
    b = RAFTFlow(wrapped, small=True, iterations=2, device="cpu")(first[:1], second[:1])[0]
    np.testing.assert_array_equal(a, b)


def test_raft_checkpoint_errors(raft_state, tmp_path):
    import torch

    with pytest.raises(FileNotFoundError, match="does not exist"):
        RAFTFlow(tmp_path / "missing.pt", small=True)
    path = tmp_path / "small.pt"
    torch.save(raft_state, path)
    with pytest.raises(ValueError, match="raft_large"):
        RAFTFlow(path, small=False)  # a raft_small state dict does not fit raft_large
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read"):
        RAFTFlow(junk, small=True)


def test_make_flow_backend_builds_raft(raft_state, tmp_path):
    import torch

    path = tmp_path / "raft_small.pt"
    torch.save(raft_state, path)
    backend = make_flow_backend(
        OpticalFlowConfig(
            backend="raft", raft_checkpoint=str(path), raft_small=True, raft_iterations=3, device="cpu", batch_size=4
        )
    )
    assert isinstance(backend, RAFTFlow)
    assert (backend.iterations, backend.batch_size, backend.device.type) == (3, 4, "cpu")
