"""DepthTraining's options: translation divided by the zoom once, explainability, AQUANet and SPIMO wired in."""

from __future__ import annotations

import pytest
import torch

from trainer import objective
from trainer.checkpoint import save_checkpoint
from trainer.config import load_train_config
from trainer.objective import DepthTraining

H, W = 64, 64  # small: these check wiring, and the CI machine has two cores


def _cfg(**sections):
    base = {"model": {"encoder": "test_convnext", "pose_encoder": "test_resnet"}, "loss": {"scales": 2}}
    for name, values in sections.items():
        base[name] = {**base.get(name, {}), **values}
    return load_train_config(overrides=base)


def _batch(batch: int = 2, seed: int = 0, **extra) -> dict:
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(batch, 3, H, W, generator=g)
    supports = torch.stack([torch.roll(image, 2, dims=3), torch.roll(image, -2, dims=3)], 1)
    intrinsics = torch.tensor([[0.8, 1.2, 0.5, 0.5]]).repeat(batch, 1)
    return {"kind": "video", "image": image, "supports": supports, "intrinsics": intrinsics, **extra}


def _model(cfg) -> DepthTraining:
    torch.manual_seed(0)
    return DepthTraining(cfg.model, cfg.loss)


def _recording_warp(monkeypatch) -> list[torch.Tensor]:
    """The real warp, with every transform it is handed recorded."""
    seen: list[torch.Tensor] = []
    real = objective.warp

    def recording(source, depth, transform, k):
        seen.append(transform.detach().clone())
        return real(source, depth, transform, k)

    monkeypatch.setattr(objective, "warp", recording)
    return seen


@pytest.mark.parametrize("photometric_resolution", ["full", "scale"])
def test_translation_is_divided_by_the_resize_factor_exactly_once(monkeypatch, photometric_resolution):
    cfg = _cfg(loss={"photometric_resolution": photometric_resolution})
    model = _model(cfg).eval()
    with torch.no_grad():
        for p in model.pose.pose[-1].parameters():
            p.normal_(0, 1.0)  # a visible motion
    batch = _batch()
    with torch.no_grad():
        raw = [model.pose(batch["image"], batch["supports"][:, s], source_first=s == 0)[0] for s in range(2)]
    seen = _recording_warp(monkeypatch)
    factor = torch.tensor([2.0, 0.5])
    with torch.no_grad():
        model.video_loss({**batch, "resize_factor": factor})
    assert len(seen) == cfg.loss.scales * 2  # every scale and support warps with the scaled motion
    for i, transform in enumerate(seen):
        expected = raw[i % 2].clone()
        expected[:, :3, 3] /= factor.view(-1, 1)
        assert raw[i % 2][:, :3, 3].abs().max() > 1e-3
        torch.testing.assert_close(transform, expected, rtol=1e-6, atol=1e-7)
    seen.clear()
    with torch.no_grad():
        model.video_loss(batch)  # no factor: the motion as predicted
    for i, transform in enumerate(seen):
        torch.testing.assert_close(transform, raw[i % 2])


def test_explainability_weights_the_loss_and_trains_the_mask_head():
    cfg = _cfg(loss={"explainability": {"enabled": True, "weight": 0.2}})
    model = _model(cfg)
    out = model(_batch())
    assert torch.isfinite(out["loss"]) and 0 < out["explainability"] < 1
    out["loss"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.pose.explain.parameters())
    assert "explainability" not in _model(_cfg())(_batch())  # off by default, no mask head
    assert _model(_cfg()).pose.explain is None


def test_aquanet_head_trains_through_the_video_and_stereo_losses():
    cfg = _cfg(model={"disparity_head": "aquanet", "aquanet_levels": 33})
    model = _model(cfg)
    out = model(_batch())
    assert torch.isfinite(out["loss"])
    out["loss"].backward()
    assert model.depth.dispconv["0"].conv.weight.grad.abs().sum() > 0
    disparity = model.predict_disparity(_batch()["image"])
    assert disparity.shape == (2, 1, H, W) and ((disparity >= 0) & (disparity <= 1)).all()


def _save(path, model, cfg):
    """A checkpoint of `model` as fit writes one (step 1)."""
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    return save_checkpoint(path, model=model, optimizer=optimizer, scheduler=scheduler, step=1, batches=1, cfg=cfg)


def test_spimo_second_stage_loads_the_frozen_first_stage_and_masks_moving_pixels(tmp_path):
    first_cfg = _cfg(model={"positional_encoding": True})
    first = _model(first_cfg)
    path = _save(tmp_path / "first.pt", first, first_cfg)
    with pytest.raises(ValueError, match="first_stage_checkpoint"):
        _cfg(loss={"spimo": {"enabled": True}})
    second_cfg = _cfg(
        loss={"spimo": {"enabled": True, "first_stage_checkpoint": str(path), "gamma": 0.03, "boost_weight": 0.1}}
    )
    second = _model(second_cfg)
    teacher = second.spimo_teacher
    for key, value in teacher.state_dict().items():
        torch.testing.assert_close(value, first.depth.state_dict()[key])
    assert not any(p.requires_grad for p in teacher.parameters())
    assert second.depth.position is None  # the second stage is a fresh network of its own config
    batch = _batch(1)
    keep = second.spimo_keep(batch["image"])
    assert keep.shape == (1, 1, H, W) and keep.dtype == torch.bool
    out = second(batch)
    assert torch.isfinite(out["loss"]) and 0 <= out["moving_fraction"] <= 1
    assert torch.isfinite(out["spimo_boost"])
    boosted = second.spimo_boost_target(batch["image"])  # 3/4, 1, 5/4 of 64x64 at stride 32: 64, 64, 96
    assert boosted.shape == (1, 1, H, W) and ((boosted >= 0) & (boosted <= 1)).all()
    out["loss"].backward()
    assert all(p.grad is None for p in teacher.parameters())
    # A saved second-stage run carries the teacher: loading it needs no first-stage file.
    saved = _save(tmp_path / "second.pt", second, second_cfg)
    path.unlink()
    loaded, _ = DepthTraining.from_checkpoint(saved)
    for key, value in loaded.spimo_teacher.state_dict().items():
        torch.testing.assert_close(value, teacher.state_dict()[key])


def test_spimo_rejects_a_first_stage_without_positional_encoding(tmp_path):
    first_cfg = _cfg()
    first = _model(first_cfg)
    path = _save(tmp_path / "first.pt", first, first_cfg)
    with pytest.raises(ValueError, match="positional_encoding"):
        _model(_cfg(loss={"spimo": {"enabled": True, "first_stage_checkpoint": str(path)}}))


def _saturated(model: DepthTraining) -> DepthTraining:
    """Every disparity head pushed to the sigmoid's top: depth at min_depth everywhere, as the collapse ends."""
    with torch.no_grad():
        for head in model.depth.dispconv.values():
            head.bias.fill_(30.0)
    return model


def _stereo_batch(batch: int = 2) -> dict:
    image = torch.rand(batch, 3, H, W, generator=torch.Generator().manual_seed(1))
    disparity = torch.linspace(1, 8, W).expand(batch, 1, H, W).clone()
    valid = torch.ones(batch, 1, H, W, dtype=torch.bool)
    return {"kind": "stereo", "image": image, "disparity": disparity, "valid": valid, "sky": ~valid}


@pytest.mark.parametrize("make_batch", [_batch, _stereo_batch], ids=["video", "stereo"])
def test_logit_penalty_brings_a_saturated_disparity_head_back(make_batch):
    grads = {}
    for weight in (0.0, 1e-3):
        model = _saturated(_model(_cfg(loss={"logit_penalty": weight})))
        model(make_batch())["loss"].backward()
        grads[weight] = model.depth.dispconv["0"].bias.grad
    # Saturated, the sigmoid passes no gradient: the network cannot leave, whatever the batch says.
    assert grads[0.0].abs().max() < 1e-9
    # The penalty's gradient does not go through the sigmoid: descent lowers the logits towards 0.
    assert grads[1e-3].min() > 1e-4


def test_logits_are_the_sigmoid_heads_inputs_and_the_penalty_can_be_turned_off():
    model = _model(_cfg(loss={"logit_penalty": 0.0})).eval()
    image = _batch()["image"]
    with torch.no_grad():
        disparities, logits = model.depth(image), model.depth(image, logits=True)
    assert len(logits) == len(disparities) == 2
    for d, x in zip(disparities, logits):
        torch.testing.assert_close(torch.sigmoid(x), d)
    assert model.disparities(image)[1] == 0
    assert _model(_cfg()).disparities(image)[1] > 0  # on by default
    aquanet = _model(_cfg(model={"disparity_head": "aquanet"}))
    with pytest.raises(ValueError, match="sigmoid"):
        aquanet.depth(image, logits=True)
