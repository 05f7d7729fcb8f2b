"""The degenerate-solution detector: flat disparity and a translation the views do not fix warn; the rest do not."""

from __future__ import annotations

import json
import math

import pytest
import torch

from trainer.collapse import CollapseDetector, CollapseMonitor, CollapseStats, disparity_cv, translation_gain
from trainer.config import CollapseConfig, load_train_config
from trainer.objective import DepthTraining
from trainer.train import fit

CFG = CollapseConfig(disparity_cv_min=0.05, translation_gain_min=0.05, patience=3, after_step=0)


def varied_disparity(seed: int = 0) -> torch.Tensor:
    """[4,1,32,48] disparity of a ground plane (near at the bottom) with texture: spatial CV about 0.5."""
    rows = torch.linspace(0.05, 1.0, 32).view(1, 1, 32, 1)
    noise = torch.rand(4, 1, 32, 48, generator=torch.Generator().manual_seed(seed))
    return rows.expand(4, 1, 32, 48) * (0.8 + 0.4 * noise)


def test_constant_disparity_warns_after_patience_logged_steps_once():
    detector = CollapseDetector(CFG)
    flat = CollapseStats(disparity_cv(torch.full((4, 1, 32, 48), 0.011) + 1e-4 * torch.rand(4, 1, 32, 48)))
    assert flat.disparity_cv < 0.01
    fired = [detector.update(step, flat) for step in (10, 20, 30, 40)]
    assert [len(w) for w in fired] == [0, 0, 1, 0]  # once, when the run reaches `patience`
    (warning,) = fired[2]
    assert warning.kind == "constant_disparity" and warning.step == 30 and warning.value == flat.disparity_cv
    assert "near constant" in warning.message
    summary = detector.summary()
    assert [w["kind"] for w in summary["warnings"]] == ["constant_disparity"]
    assert summary["ongoing"] == ["constant_disparity"] and summary["disparity_cv"] == flat.disparity_cv


def test_varied_disparity_and_a_translation_the_views_fix_do_not_warn():
    detector = CollapseDetector(CFG)
    for step in range(1, 11):
        stats = CollapseStats(disparity_cv(varied_disparity(step)), translation_gain(0.04, 0.07))
        assert stats.disparity_cv > 0.3 and stats.translation_gain == pytest.approx(0.75)
        assert detector.update(step, stats) == []
    assert detector.summary()["warnings"] == [] and detector.summary()["ongoing"] == []


def test_a_translation_as_good_reversed_warns():
    """The motion run's held-out batches: 0.0800 with its translation, 0.0799 reversed (and 0.0958 / 0.0810)."""
    detector = CollapseDetector(CFG)
    gains = [translation_gain(0.0800, 0.0799), translation_gain(0.0958, 0.0810), translation_gain(0.0739, 0.0748)]
    warnings = [w for step, gain in enumerate(gains, 1) for w in detector.update(step, CollapseStats(0.5, gain))]
    assert [(w.step, w.kind) for w in warnings] == [(3, "reversible_translation")]


def test_a_break_in_the_run_restarts_the_count_and_ends_it():
    detector = CollapseDetector(CFG)
    flat, varied = CollapseStats(0.01), CollapseStats(0.5)
    assert not any(detector.update(step, s) for step, s in enumerate([flat, flat, varied, flat, flat]))
    assert detector.update(5, flat)  # the third in a row since the break
    detector.update(6, varied)
    assert detector.ongoing() == [] and len(detector.warnings) == 1


def test_nothing_is_counted_up_to_after_step():
    detector = CollapseDetector(CFG.model_copy(update={"after_step": 100}))
    assert not any(detector.update(step, CollapseStats(0.0)) for step in range(10, 101, 10))
    assert [detector.update(step, CollapseStats(0.0)) != [] for step in (110, 120, 130)] == [False, False, True]


def test_stereo_steps_neither_grow_nor_break_a_translation_run():
    detector = CollapseDetector(CFG)
    video, stereo = CollapseStats(0.5, 0.0), CollapseStats(0.5)
    kinds = [w.kind for s in (video, stereo, video, stereo, video) for w in detector.update(1, s)]
    assert kinds == ["reversible_translation"]


def test_the_monitor_reverses_translations_only_while_measuring_and_leaves_the_model_as_it_was():
    cfg = load_train_config(overrides={"model": {"encoder": "test_convnext", "pose_encoder": "test_resnet"}})
    torch.manual_seed(0)
    core = DepthTraining(cfg.model, cfg.loss)
    monitor = CollapseMonitor(core, CFG)
    image, support = torch.rand(2, 3, 64, 96), torch.rand(2, 3, 64, 96)
    before = core.pose(image, support).transform
    monitor.reverse = True
    reversed_ = core.pose(image, support).transform
    monitor.reverse = False
    assert torch.equal(reversed_[:, :3, 3], -before[:, :3, 3]) and torch.equal(reversed_[:, :3, :3], before[:, :3, :3])
    batch = {
        "kind": "video",
        "image": image,
        "supports": torch.stack([support, torch.rand(2, 3, 64, 96)], 1),
        "intrinsics": torch.tensor([[0.8, 1.2, 0.5, 0.5]] * 2),
    }
    core.train()
    core(batch)  # the training forward the monitor measures
    buffers = {name: b.clone() for name, b in core.named_buffers()}
    rng = torch.get_rng_state()
    observed = monitor.observe(1, batch)
    assert torch.equal(torch.get_rng_state(), rng)  # the automask's noise drew from a fork
    assert 0 < observed.stats.disparity_cv < 1 and math.isfinite(observed.stats.translation_gain)
    assert core.training and not monitor.reverse
    assert all(torch.equal(b, buffers[name]) for name, b in core.named_buffers())  # batch-norm statistics untouched


def test_a_tiny_fit_logs_the_measures_and_the_warnings(train_root, tmp_path):
    """Bounds no measure can meet: both warnings at the second logged step, in log.jsonl and metrics.json."""
    out_dir = tmp_path / "run"
    cfg = load_train_config(
        overrides={
            "data": {"height": 64, "width": 96, "batch_size": 2, "num_workers": 0, "shuffle_buffer": 16},
            "model": {"encoder": "test_convnext", "pose_encoder": "test_resnet"},
            "optim": {"warmup_steps": 0, "max_steps": 3},
            "run": {
                "out_dir": str(out_dir),
                "log_every": 1,
                "eval_batches": 1,
                "tensorboard": False,
                "collapse": {"disparity_cv_min": 1e9, "translation_gain_min": 1e9, "patience": 2, "after_step": 0},
            },
        }
    )
    fit([str(train_root / "manifest" / "mono.parquet")], cfg)
    rows = [json.loads(line) for line in (out_dir / "log.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3] and {r["kind"] for r in steps} == {"video"}
    assert all(0 <= r["disparity_cv"] < 1 and math.isfinite(r["translation_gain"]) for r in steps)
    warned = sorted((r["step"], r["collapse_warning"]["kind"]) for r in rows if "collapse_warning" in r)
    assert warned == [(2, "constant_disparity"), (2, "reversible_translation")]
    summary = json.loads((out_dir / "metrics.json").read_text())["collapse"]
    assert sorted(w["kind"] for w in summary["warnings"]) == ["constant_disparity", "reversible_translation"]
    assert summary["ongoing"] == ["constant_disparity", "reversible_translation"]
    assert summary["disparity_cv"] == steps[-1]["disparity_cv"]


def test_the_monitor_measures_disparities_when_the_forward_returns_logits():
    overrides = {"model": {"encoder": "test_convnext", "pose_encoder": "test_resnet"}, "loss": {"logit_penalty": 1e-3}}
    cfg = load_train_config(overrides=overrides)
    torch.manual_seed(0)
    core = DepthTraining(cfg.model, cfg.loss)
    monitor = CollapseMonitor(core, CFG)
    image = torch.rand(2, 3, 64, 96)
    with torch.no_grad():
        core.disparities(image)  # the penalty's forward: logits out of the depth net
    assert monitor.disparity is not None
    torch.testing.assert_close(monitor.disparity, core.predict_disparity(image))
