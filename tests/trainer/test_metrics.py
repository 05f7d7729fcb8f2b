"""Depth and disparity metrics, alignment modes and the accumulator."""

from __future__ import annotations

import math

import pytest
import torch

from trainer.metrics import DEPTH_KEYS, MetricAccumulator, depth_metrics, disparity_metrics

H, W = 16, 24
ALIGNMENTS = ["lsq_disparity", "median", "none"]


def _depth(batch: int = 2, seed: int = 0) -> torch.Tensor:
    return 1.0 + 40.0 * torch.rand(batch, 1, H, W, generator=torch.Generator().manual_seed(seed))


def _all(batch: int = 2) -> torch.Tensor:
    return torch.ones(batch, 1, H, W, dtype=torch.bool)


@pytest.mark.parametrize("alignment", ALIGNMENTS)
def test_perfect_prediction_is_perfect(alignment):
    gt = _depth()
    m = depth_metrics(gt.clone(), gt, _all(), alignment=alignment)
    assert set(m) == set(DEPTH_KEYS)
    for key in ("abs_rel", "sq_rel", "rmse", "log_rmse"):
        assert m[key] < 1e-6, key
    assert m["a1"] == m["a2"] == m["a3"] == 1.0


def test_scaled_and_shifted_disparity_is_perfect_after_lsq_disparity_alignment():
    gt = _depth()
    pred = 1.0 / (0.3 / gt + 0.05)  # an affine map of disparity, as a relative-depth network gives
    aligned = depth_metrics(pred, gt, _all(), alignment="lsq_disparity")
    assert aligned["abs_rel"] < 1e-6 and aligned["a1"] == 1.0
    assert depth_metrics(pred, gt, _all(), alignment="none")["abs_rel"] > 0.3
    assert depth_metrics(pred, gt, _all(), alignment="median")["abs_rel"] > 0.05  # a shift is not a scale


def test_median_scaling_fixes_scale():
    gt = _depth()
    m = depth_metrics(3.7 * gt, gt, _all(), alignment="median")
    assert m["abs_rel"] < 1e-6 and m["a1"] == 1.0
    assert depth_metrics(3.7 * gt, gt, _all(), alignment="none")["a1"] == 0.0


def test_hand_computed_example():
    gt = torch.tensor([[[[1.0, 2.0], [4.0, 8.0]]]])
    pred = torch.full_like(gt, 2.0)
    m = depth_metrics(pred, gt, torch.ones_like(gt, dtype=torch.bool), alignment="none")
    # |gt - pred| = 1, 0, 2, 6; ratios max(gt/pred, pred/gt) = 2, 1, 2, 4.
    assert m["abs_rel"] == pytest.approx((1 / 1 + 0 + 2 / 4 + 6 / 8) / 4)  # 0.5625
    assert m["sq_rel"] == pytest.approx((1 / 1 + 0 + 4 / 4 + 36 / 8) / 4)  # 1.625
    assert m["rmse"] == pytest.approx(math.sqrt((1 + 0 + 4 + 36) / 4))  # 3.2016
    assert m["log_rmse"] == pytest.approx(math.log(2) * math.sqrt((1 + 0 + 1 + 4) / 4))
    assert m["a1"] == m["a2"] == m["a3"] == pytest.approx(0.25)  # only the exact pixel; 2 > 1.25**3


def test_metrics_average_over_images_not_pixels():
    gt = torch.full((2, 1, H, W), 10.0)
    pred = gt.clone()
    pred[1] = 12.0  # abs_rel 0.2 on the second image only
    mask = _all()
    mask[1, :, : H // 2] = False  # the second image has half as many valid pixels
    m = depth_metrics(pred, gt, mask, alignment="none")
    assert m["abs_rel"] == pytest.approx(0.1)
    assert m["a1"] == pytest.approx(1.0)


def test_invalid_pixels_are_ignored_and_predictions_clipped():
    gt, mask = _depth(1), _all(1)
    pred = gt.clone()
    pred[..., 0, :] = 1e6  # wrong, but outside the mask
    mask[..., 0, :] = False
    gt[..., 1, :] = float("inf")  # sky
    gt[..., 2, :] = 500.0  # beyond max_depth
    gt[..., 3, :] = 0.0  # no measurement
    assert depth_metrics(pred, gt, mask, alignment="none")["abs_rel"] < 1e-6
    far = torch.full((1, 1, 2, 2), 70.0)
    clipped = depth_metrics(torch.full_like(far, 1e4), far, torch.ones_like(far, dtype=torch.bool), alignment="none")
    assert clipped["abs_rel"] == pytest.approx(10 / 70)  # the prediction counts as max_depth = 80


def test_images_without_valid_pixels_are_left_out():
    gt, pred = _depth(2), _depth(2, seed=1)
    mask = _all()
    mask[0] = False
    both = depth_metrics(pred, gt, mask, alignment="median")
    alone = depth_metrics(pred[1:], gt[1:], mask[1:], alignment="median")
    for key in DEPTH_KEYS:
        assert both[key] == pytest.approx(alone[key])
    empty = depth_metrics(pred, gt, torch.zeros_like(mask), alignment="lsq_disparity")
    assert all(math.isnan(v) for v in empty.values())


def test_unknown_alignment_raises():
    with pytest.raises(ValueError, match="alignment"):
        depth_metrics(_depth(), _depth(), _all(), alignment="mean")


def test_disparity_metrics_align_scale_and_shift_in_disparity_space():
    gt = torch.linspace(-5.0, 20.0, H * W).view(1, 1, H, W)  # convergence-shifted: some negative
    mask = _all(1)
    m = disparity_metrics(0.1 * gt - 3.0, gt, mask)
    assert set(m) == {"abs_rel", "rmse", "a1"}
    assert m["abs_rel"] < 1e-6 and m["rmse"] < 1e-5 and m["a1"] == 1.0
    noisy = gt + torch.randn(gt.shape, generator=torch.Generator().manual_seed(0))
    m = disparity_metrics(noisy, gt, mask)
    assert 0 < m["rmse"] < 1.2 and m["a1"] < 1.0


def test_disparity_a1_needs_the_right_sign():
    gt = torch.tensor([[[[-2.0, -1.0, 1.0, 2.0]]]])
    pred = torch.tensor([[[[-2.0, 1.0, 1.0, 2.0]]]])  # second pixel flipped
    m = disparity_metrics(pred, gt, torch.ones_like(gt, dtype=torch.bool))
    assert m["a1"] < 1.0


def test_accumulator_weights_by_images_and_skips_nan():
    acc = MetricAccumulator()
    acc.update({"abs_rel": 0.1, "a1": 0.9}, n_images=3)
    acc.update({"abs_rel": 0.5, "a1": 0.5}, n_images=1)
    acc.update({"abs_rel": float("nan"), "a1": float("nan")}, n_images=4)  # a batch with no valid image
    out = acc.compute()
    assert out["abs_rel"] == pytest.approx((0.3 + 0.5) / 4)
    assert out["a1"] == pytest.approx((2.7 + 0.5) / 4)
    acc.reset()
    assert acc.compute() == {}


def test_score_mask_restricts_the_average_but_not_the_alignment():
    gt = torch.tensor([[[[1.0, 2.0], [4.0, 8.0]]]])
    pred = gt.clone()
    pred[..., 1, 1] = 16.0  # one wrong pixel
    region = torch.tensor([[[[False, False], [False, True]]]])
    whole = depth_metrics(pred, gt, torch.ones_like(region), alignment="median")
    scored = depth_metrics(pred, gt, torch.ones_like(region), alignment="median", score_mask=region)
    # Median over the whole image: pred/gt medians are 3 and 3, so no rescale; only the wrong pixel scores.
    assert whole["abs_rel"] == pytest.approx(1.0 / 4)
    assert scored["abs_rel"] == pytest.approx(1.0) and scored["a1"] == 0.0
    # Aligning on the region alone would have hidden the error.
    assert depth_metrics(pred, gt, region, alignment="median")["abs_rel"] < 1e-9
    # An image with nothing in the region is left out, as one without valid pixels.
    empty = depth_metrics(pred, gt, torch.ones_like(region), score_mask=torch.zeros_like(region))
    assert math.isnan(empty["abs_rel"])
