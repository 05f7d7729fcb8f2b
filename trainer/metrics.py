"""Evaluation metrics for depth (Eigen et al. / Monodepth2 set, MiDaS alignment) and stereo disparity.

Every metric is computed per image over its valid pixels, then averaged over images; images with no
valid pixel are left out of the average (a batch with none gives NaN, which MetricAccumulator skips).
Computation is in float64 so sums over large images do not lose precision.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from trainer.losses import align_scale_shift

DEPTH_KEYS = ("abs_rel", "sq_rel", "rmse", "log_rmse", "a1", "a2", "a3")
DISPARITY_KEYS = ("abs_rel", "rmse", "a1")
_ALIGNMENTS = ("lsq_disparity", "median", "none")


def _flat64(x: Tensor) -> Tensor:
    return x.detach().reshape(x.shape[0], -1).to(torch.float64)


def _masked_mean(x: Tensor, valid: Tensor) -> Tensor:
    """[B] mean of x over valid pixels per image; NaN where an image has none."""
    total = torch.where(valid, x, torch.zeros_like(x)).sum(1)
    count = valid.sum(1)
    return torch.where(count > 0, total / count.clamp(min=1), torch.full_like(total, float("nan")))


def _as_map(x: Tensor) -> Tensor:
    """[B,N] -> [B,1,1,N], the map layout align_scale_shift works on."""
    return x.view(x.shape[0], 1, 1, -1)


def _masked_median(x: Tensor, valid: Tensor) -> Tensor:
    return torch.nanmedian(torch.where(valid, x, torch.full_like(x, float("nan"))), dim=1).values


def _align_depth(pred: Tensor, gt: Tensor, valid: Tensor, alignment: str, min_depth: float, max_depth: float) -> Tensor:
    """pred depth aligned to gt as alignment says, then clipped to [min_depth, max_depth]."""
    if alignment == "lsq_disparity":
        # MiDaS evaluation: fit scale and shift in disparity, cap disparity at 1/max_depth, invert.
        inverse_pred, inverse_gt = 1.0 / pred.clamp(min=1e-12), 1.0 / gt.clamp(min=1e-12)
        aligned = align_scale_shift(_as_map(inverse_pred), _as_map(inverse_gt), _as_map(valid), "lsq").view_as(pred)
        pred = 1.0 / aligned.clamp(min=1.0 / max_depth)
    elif alignment == "median":
        ratio = _masked_median(gt, valid) / _masked_median(pred, valid)
        pred = pred * torch.nan_to_num(ratio, nan=1.0)[:, None]
    elif alignment != "none":
        raise ValueError(f"unknown alignment {alignment!r}; expected one of {', '.join(_ALIGNMENTS)}")
    return pred.clamp(min_depth, max_depth)


def depth_metrics_per_image(
    pred_depth: Tensor,
    gt_depth: Tensor,
    mask: Tensor,
    min_depth: float = 1e-3,
    max_depth: float = 80.0,
    alignment: str = "lsq_disparity",
    score_mask: Tensor | None = None,
) -> dict[str, Tensor]:
    """DEPTH_KEYS -> [B] float64 per-image values (NaN for images without valid pixels).

    score_mask: the alignment is still fitted on every valid pixel, but errors are averaged only over
    valid pixels inside it (a region such as moving objects, judged as the whole image is aligned).
    """
    pred, gt = _flat64(pred_depth), _flat64(gt_depth)
    valid = _flat64(mask).bool() & torch.isfinite(gt) & (gt > min_depth) & (gt < max_depth)
    gt = torch.where(valid, gt, torch.ones_like(gt))  # keeps the arithmetic below finite off the mask
    pred = _align_depth(pred, gt, valid, alignment, min_depth, max_depth)
    if score_mask is not None:
        valid = valid & _flat64(score_mask).bool()
    err = gt - pred
    ratio = torch.maximum(gt / pred, pred / gt)
    return {
        "abs_rel": _masked_mean(err.abs() / gt, valid),
        "sq_rel": _masked_mean(err**2 / gt, valid),
        "rmse": _masked_mean(err**2, valid).sqrt(),
        "log_rmse": _masked_mean((gt.log() - pred.log()) ** 2, valid).sqrt(),
        "a1": _masked_mean((ratio < 1.25).double(), valid),
        "a2": _masked_mean((ratio < 1.25**2).double(), valid),
        "a3": _masked_mean((ratio < 1.25**3).double(), valid),
    }


def _mean_over_images(per_image: dict[str, Tensor]) -> dict[str, float]:
    return {k: float(v.nanmean()) if torch.isfinite(v).any() else math.nan for k, v in per_image.items()}


def depth_metrics(
    pred_depth: Tensor,
    gt_depth: Tensor,
    mask: Tensor,
    min_depth: float = 1e-3,
    max_depth: float = 80.0,
    alignment: str = "lsq_disparity",
    score_mask: Tensor | None = None,
) -> dict[str, float]:
    """abs_rel, sq_rel, rmse, log_rmse, a1-a3 of [B,1,H,W] depths, per image then averaged over images.

    Valid pixels: mask & finite gt & min_depth < gt < max_depth. alignment: "lsq_disparity" fits
    scale and shift of 1/pred to 1/gt by least squares (MiDaS), "median" scales pred by
    median(gt)/median(pred), "none" uses pred as is; the aligned pred is clipped to [min_depth, max_depth].
    score_mask restricts the averaging, not the alignment (see depth_metrics_per_image).
    """
    return _mean_over_images(
        depth_metrics_per_image(pred_depth, gt_depth, mask, min_depth, max_depth, alignment, score_mask)
    )


def disparity_metrics(pred_disp: Tensor, gt_disp: Tensor, mask: Tensor, min_abs_gt: float = 1e-3) -> dict[str, float]:
    """abs_rel, rmse and a1 in disparity space (stereo samples), after least-squares scale-and-shift.

    Stereo disparity may be zero or negative (convergence shifts), so nothing is inverted to depth:
    abs_rel = mean |pred - gt| / |gt| and rmse are on disparity, and a1 counts pixels whose ratio
    max(pred/gt, gt/pred) < 1.25 with pred and gt of the same sign. Valid: mask & finite gt &
    |gt| > min_abs_gt.
    """
    pred, gt = _flat64(pred_disp), _flat64(gt_disp)
    valid = _flat64(mask).bool() & torch.isfinite(gt) & (gt.abs() > min_abs_gt)
    gt = torch.where(valid, gt, torch.ones_like(gt))
    pred = align_scale_shift(_as_map(pred), _as_map(gt), _as_map(valid), "lsq").view_as(gt)
    err = pred - gt
    same_sign = pred * gt > 0
    ratio = torch.where(same_sign, torch.maximum(pred / gt, gt / pred), torch.full_like(gt, float("inf")))
    return _mean_over_images(
        {
            "abs_rel": _masked_mean(err.abs() / gt.abs(), valid),
            "rmse": _masked_mean(err**2, valid).sqrt(),
            "a1": _masked_mean((ratio < 1.25).double(), valid),
        }
    )


class MetricAccumulator:
    """Image-weighted running means of metric dicts; NaN values (no valid images) are skipped."""

    def __init__(self) -> None:
        self._sums: dict[str, float] = {}
        self._counts: dict[str, int] = {}

    def update(self, metrics: dict[str, float], n_images: int = 1) -> None:
        """Add a dict of per-image means that covers n_images images."""
        for key, value in metrics.items():
            value = float(value)
            if math.isnan(value) or n_images <= 0:
                continue
            self._sums[key] = self._sums.get(key, 0.0) + value * n_images
            self._counts[key] = self._counts.get(key, 0) + n_images

    def compute(self) -> dict[str, float]:
        """Mean of every metric over the images seen."""
        return {key: self._sums[key] / self._counts[key] for key in self._sums}

    def reset(self) -> None:
        """Forget everything seen."""
        self._sums.clear()
        self._counts.clear()
