"""The shard stream: batches as planned, no repeats across ranks and workers, exact resume."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from trainer.config import load_train_config
from trainer.data import BatchBuilder, DecodedFrames, ShardStream, make_loader, next_uses
from trainer.manifest import ManifestError, load_manifests
from trainer.plan import EpochPlan


def stream_for(train_root, rank=0, world_size=1, start_batch=0, **data) -> ShardStream:
    cfg = load_train_config(
        overrides={"data": {"batch_size": 2, "shuffle_buffer": 8, "height": 64, "width": 96, "num_workers": 2, **data}}
    )
    manifests = [train_root / "manifest" / "mono.parquet", train_root / "manifest" / "stereo.parquet"]
    plan = EpochPlan(load_manifests(manifests, "train", cfg.data.filters), cfg.data)
    return ShardStream(plan, cfg.data, rank=rank, world_size=world_size, start_batch=start_batch)


def test_one_epoch_over_two_ranks_of_two_workers_sees_each_sample_once(train_root):
    seen: list[str] = []
    steps = []
    for rank in range(2):
        stream = stream_for(train_root, rank=rank, world_size=2)
        per_epoch = 2 * len(stream.plan.epoch(0, 4)[0])
        batches = list(itertools.islice(make_loader(stream), per_epoch))
        steps.append(len(batches))
        seen += [sid for batch in batches for sid in batch["sample_id"]]
    assert steps[0] == steps[1] > 0
    assert len(seen) == len(set(seen))
    planned = {
        stream.plan.frame.loc[int(t), "sample_id"]
        for worker in stream.plan.epoch(0, 4)
        for b in worker
        for t in b.targets
    }
    assert set(seen) == planned


def test_batches_carry_what_each_kind_needs(train_root):
    stream = stream_for(train_root, num_workers=0)
    kinds = {}
    for batch in itertools.islice(iter(stream), 12):
        kinds[batch["kind"]] = batch
        image = batch["image"]
        assert image.dtype == torch.float32 and image.shape[:2] == (2, 3) and image.shape[2] % 32 == 0
        assert image.min() >= 0 and image.max() <= 1
        assert torch.isfinite(batch["intrinsics"]).all()  # the catalog gave intrinsics
    video, stereo = kinds["video"], kinds["stereo"]
    assert video["supports"].shape == (2, 2, *video["image"].shape[1:])
    assert stereo["disparity"].shape == (2, 1, *stereo["image"].shape[2:])
    assert stereo["valid"].dtype == torch.bool and stereo["valid"].float().mean() > 0.5
    assert stereo["sky"].dtype == torch.bool
    assert stereo["disparity"][stereo["valid"]].std() > 0.5  # real depth structure, not a constant


def test_resume_yields_the_same_next_batches(train_root):
    uninterrupted = list(itertools.islice(make_loader(stream_for(train_root)), 9))
    resumed = list(itertools.islice(make_loader(stream_for(train_root, start_batch=5)), 4))
    for a, b in zip(uninterrupted[5:], resumed):
        assert a["sample_id"] == b["sample_id"]
        assert torch.equal(a["image"], b["image"])
    # Past the end of the first epoch as well.
    per_epoch = 2 * len(stream_for(train_root).plan.epoch(0, 2)[0])
    later = list(itertools.islice(make_loader(stream_for(train_root)), per_epoch + 2))
    resumed = list(itertools.islice(make_loader(stream_for(train_root, start_batch=per_epoch + 1)), 1))
    assert later[-1]["sample_id"] == resumed[0]["sample_id"]


def test_too_little_data_for_the_batch_is_a_clear_error(train_root):
    with pytest.raises(ManifestError, match="too few samples for one batch of 64"):
        stream_for(train_root, batch_size=64)


def test_eval_mode_keeps_the_reference_shape_and_no_jitter(train_root):
    stream = stream_for(train_root, num_workers=0)
    builder = BatchBuilder(stream.plan, stream.cfg, train=False)
    batch = builder(stream.plan.epoch(0, 1)[0][0])
    assert batch["image"].shape[2:] == (64, 96)
    again = builder(stream.plan.epoch(0, 1)[0][0])
    assert torch.equal(batch["image"], again["image"])
    assert np.isfinite(batch["intrinsics"].numpy()).all()


def test_planned_decoding_reuses_frames_and_changes_no_pixel(train_root):
    stream = stream_for(train_root, num_workers=0)
    batches = stream.plan.epoch(0, 1)[0]
    plain = BatchBuilder(stream.plan, stream.cfg)
    planned = BatchBuilder(stream.plan, stream.cfg)
    planned.plan_ahead(batches)
    for batch in batches:
        a, b = plain(batch), planned(batch)
        assert a.keys() == b.keys()
        for key, value in a.items():
            assert torch.equal(value, b[key]) if isinstance(value, torch.Tensor) else value == b[key]
    assert planned.frames.hits > 0  # targets and supports overlap: some frames were decoded once for two uses
    assert planned.frames.position == sum(len(planned.decodes(b)[0]) for b in batches)  # it kept to the plan
    assert not planned.reader._groups  # every row group was dropped after its last planned read


def test_decoded_frames_keep_what_is_wanted_soonest():
    rows = np.array([1, 2, 3, 1, 2, 1])
    assert next_uses(rows).tolist() == [3, 4, -1, 5, -1, -1]
    frame = {r: np.full(8, r, np.uint8) for r in (1, 2, 3)}

    def replay(frames: DecodedFrames, order) -> list[bool]:
        hits = []
        for row in order:
            got = frames.get(row)
            hits.append(got is not None)
            assert got is None or got is frame[row]
            frames.done(row, frame[row])
        return hits

    assert replay(DecodedFrames(rows, 16), rows) == [False, False, False, True, True, True]
    # Room for one frame: row 2 (wanted at 4) gives way to row 1 (wanted at 3), as Belady's rule says.
    assert replay(DecodedFrames(rows, 8), rows) == [False, False, False, True, False, True]
    # A caller off the plan still gets correct frames (keyed by row) but no more caching.
    assert replay(DecodedFrames(rows, 16), [1, 3, 1, 2]) == [False, False, False, False]


def test_zoomed_batches_carry_their_resize_factor(train_root):
    plain = stream_for(train_root, num_workers=0)
    assert all("resize_factor" not in b for b in itertools.islice(iter(plain), 4))
    # 128x192: zooming out to half still leaves sides of at least 64 (zoomed_size's floor).
    stream = stream_for(
        train_root, num_workers=0, height=128, width=192, augment={"resize_prob": 1.0, "aspect_prob": 0.0}
    )
    factors, shapes = [], set()
    for batch in itertools.islice(iter(stream), 12):
        factor = batch["resize_factor"]
        assert factor.shape == (2,) and factor.dtype == torch.float32
        assert ((factor > 0.4) & (factor < 1.6)).all()
        factors += factor.tolist()
        shapes.add(tuple(batch["image"].shape[2:]))
        if batch["kind"] == "video":
            assert batch["supports"].shape[3:] == batch["image"].shape[2:]
    assert min(factors) < 0.9 and max(factors) > 1.1
    assert (128, 192) in shapes and len(shapes) > 1  # zooming out shrinks the batch, zooming in crops
    evaluation = BatchBuilder(stream.plan, stream.cfg, train=False)(stream.plan.epoch(0, 1)[0][0])
    assert "resize_factor" not in evaluation
