"""Evaluation: stereo disparity and rendered depth, aligned, in a table."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trainer.config import load_train_config
from trainer.data import GroundTruth
from trainer.evaluate import evaluate_model, evaluation_batches, format_metrics
from trainer.manifest import load_manifests
from trainer.plan import EpochPlan


class Replay(torch.nn.Module):
    """Predicts whatever it is handed next: lets a test feed the ground truth back as the prediction."""

    def __init__(self, answers):
        super().__init__()
        self.answers = iter(answers)

    def predict_disparity(self, image):
        return next(self.answers)


@pytest.fixture(scope="module")
def setup(train_root):
    cfg = load_train_config(overrides={"data": {"height": 64, "width": 96, "batch_size": 4}})
    frame = load_manifests(
        [train_root / "manifest" / "mono.parquet", train_root / "manifest" / "stereo.parquet"], "val", cfg.data.filters
    )
    return cfg, EpochPlan(frame, cfg.data), GroundTruth(train_root / "ground_truth")


def truth_answers(plan, cfg, truth, scale=3.0, shift=0.5):
    """Per batch: an affine map of the true disparity (stereo) or of the true inverse depth (video)."""
    answers = []
    for batch in evaluation_batches(plan, cfg, truth):
        if batch["kind"] == "stereo":
            answers.append(batch["disparity"] * scale + shift)
        else:
            depth = batch["gt_depth"]
            answers.append(torch.where(torch.isfinite(depth), scale / depth + shift, torch.zeros_like(depth)))
    return answers


def test_truth_up_to_scale_and_shift_is_perfect(setup):
    cfg, plan, truth = setup
    metrics = evaluate_model(Replay(truth_answers(plan, cfg, truth)), plan, cfg, "cpu", truth)
    assert set(metrics) == {"mono/video", "stereo/stereo"}  # drive has no rendered depth: left out
    for values in metrics.values():
        assert values["abs_rel"] == pytest.approx(0.0, abs=1e-3)
        assert values["a1"] == pytest.approx(1.0)


def test_a_flat_prediction_scores_worse(setup):
    cfg, plan, truth = setup
    noise = [torch.rand_like(a) for a in truth_answers(plan, cfg, truth)]
    metrics = evaluate_model(Replay(noise), plan, cfg, "cpu", truth)
    assert all(values["abs_rel"] > 0.05 for values in metrics.values())
    table = format_metrics(metrics)
    assert "stereo/stereo" in table and "abs_rel" in table.splitlines()[0]


def test_ground_truth_lookup(train_root):
    truth = GroundTruth(train_root / "ground_truth")
    depth = truth.depth("walk", 1.0, (48, 80))
    assert depth.shape == (48, 80) and np.isfinite(depth).mean() > 0.5
    assert truth.depth("drive", 1.0, (48, 80)) is None
