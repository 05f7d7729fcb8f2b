"""Training losses: photometric reprojection (Monodepth2 / SlowTV) and scale-and-shift-invariant (MiDaS).

All maps are [B, C, H, W]; masks are [B, 1, H, W] bool. Photometric losses take images in [0, 1].
The SSI losses work per image on its valid pixels; images with fewer than min_valid_pixels valid
pixels contribute nothing, and a batch with none gives a zero loss that still backpropagates.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

_SSIM_C1 = 0.01**2
_SSIM_C2 = 0.03**2
_IDENTITY_NOISE = 1e-5  # Monodepth2: breaks ties between identity and reprojection errors
_EPS = 1e-6
MIN_VALID_PIXELS = 16  # fewer valid pixels than this and an image's median/MAD means little


# ---------------------------------------------------------------- photometric (self-supervised)


def ssim_distance(x: Tensor, y: Tensor) -> Tensor:
    """(1 - SSIM) / 2 per pixel and channel over 3x3 reflection-padded windows, clamped to [0, 1]."""
    x = F.pad(x, (1, 1, 1, 1), mode="reflect")
    y = F.pad(y, (1, 1, 1, 1), mode="reflect")
    mu_x, mu_y = F.avg_pool2d(x, 3, 1), F.avg_pool2d(y, 3, 1)
    sigma_x = F.avg_pool2d(x * x, 3, 1) - mu_x * mu_x
    sigma_y = F.avg_pool2d(y * y, 3, 1) - mu_y * mu_y
    sigma_xy = F.avg_pool2d(x * y, 3, 1) - mu_x * mu_y
    num = (2 * mu_x * mu_y + _SSIM_C1) * (2 * sigma_xy + _SSIM_C2)
    den = (mu_x * mu_x + mu_y * mu_y + _SSIM_C1) * (sigma_x + sigma_y + _SSIM_C2)
    return ((1 - num / den) / 2).clamp(0, 1)


def photometric_error(pred: Tensor, target: Tensor) -> Tensor:
    """0.85 * SSIM distance + 0.15 * L1, averaged over channels: [B,1,H,W]."""
    l1 = (pred - target).abs().mean(1, keepdim=True)
    return 0.85 * ssim_distance(pred, target).mean(1, keepdim=True) + 0.15 * l1


def reprojection_loss(
    target: Tensor,
    warped: list[Tensor],
    sources: list[Tensor],
    valid: list[Tensor] | None = None,
    automask: bool = True,
    weights: list[Tensor] | None = None,
    keep: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Per-pixel minimum photometric error over supports, automasked: (loss, mask_used).

    A warped pixel that is not valid cannot win the minimum. With automask, the identity errors of the
    unwarped sources (plus tiny noise) join the minimum, and pixels where one wins are not trained:
    static scenes, objects moving with the camera, textureless regions. mask_used is [B,1,H,W] bool.
    The loss is the mean of the minimum over every pixel with a finite one, identity winners included
    (Monodepth2): their error is a constant, but dividing by the used pixels alone would reward a pose
    that hands the hard pixels to the identity, which on textured scenes makes a wrong motion score
    better than none.
    weights: per-support [B,1,H,W] factors on the warped errors (SfMLearner's explainability mask).
    keep: [B,1,H,W] bool; pixels outside it are left out of the loss altogether (SPIMO's moving mask).
    """
    errors = torch.cat([photometric_error(w, target) for w in warped], 1)
    if weights is not None:
        errors = errors * torch.cat(weights, 1).to(errors.dtype)
    if valid is not None:
        errors = torch.where(torch.cat(valid, 1), errors, torch.full_like(errors, float("inf")))
    n_identity = 0
    if automask:
        identity = torch.cat([photometric_error(s, target) for s in sources], 1)
        identity = identity + torch.randn_like(identity) * _IDENTITY_NOISE
        errors = torch.cat([identity, errors], 1)
        n_identity = identity.shape[1]
    best, index = errors.min(1, keepdim=True)
    finite = torch.isfinite(best)
    if keep is not None:
        finite = finite & keep
    mask = (index >= n_identity) & finite
    # where, not multiply: best is inf where no support was valid, and inf * 0 is NaN.
    total = torch.where(finite, best, torch.zeros_like(best)).sum()
    return total / finite.sum().clamp(min=1), mask


def explainability_regulariser(masks: list[Tensor]) -> Tensor:
    """SfMLearner's cross-entropy of each explainability mask towards 1: mean of -log(mask)."""
    return torch.stack([-torch.log(m.float().clamp(min=_EPS)).mean() for m in masks]).mean()


def positional_variance(depths: Tensor) -> Tensor:
    """SPIMO's normalised depth variance over N predictions [N,B,1,H,W]: sum (D_i - mean)^2 / (mean^2 (N - 1))."""
    mean = depths.mean(0)
    return ((depths - mean) ** 2).sum(0) / (mean**2 * (depths.shape[0] - 1)).clamp(min=_EPS)


def moving_mask(depths: Tensor, gamma: float = 0.03) -> Tensor:
    """[B,1,H,W] bool: pixels whose depth changes with the positional offset (likely moving) (SPIMO)."""
    return positional_variance(depths) > gamma


def masked_log_disparity_loss(pred: Tensor, target: Tensor, mask: Tensor, reference: Tensor) -> Tensor:
    """Mean |log pred - log(s * target)| over mask, s the per-image median ratio pred/target over reference.

    SPIMO's boosting: two self-supervised runs agree on depth only up to scale, so the target is scaled
    to pred on the pixels both trust (reference) before the masked pixels are compared. Zero without any.
    """
    pred, target = pred.float().clamp(min=_EPS), target.float().clamp(min=_EPS)
    ratio = torch.where(reference, (pred / target).detach(), torch.full_like(pred, float("nan")))
    scale = torch.nanmedian(_flat(ratio), dim=1).values.nan_to_num(1.0).view(-1, 1, 1, 1)
    error = (pred.log() - (scale * target).log()).abs()
    return torch.where(mask, error, torch.zeros_like(error)).sum() / mask.sum().clamp(min=1)


def smoothness_loss(disp: Tensor, image: Tensor) -> Tensor:
    """Edge-aware first-order smoothness of mean-normalised disparity (Monodepth2); scale-invariant."""
    norm = disp / (disp.mean((2, 3), keepdim=True) + 1e-7)
    grad_x = (norm[..., :, 1:] - norm[..., :, :-1]).abs()
    grad_y = (norm[..., 1:, :] - norm[..., :-1, :]).abs()
    img_x = (image[..., :, 1:] - image[..., :, :-1]).abs().mean(1, keepdim=True)
    img_y = (image[..., 1:, :] - image[..., :-1, :]).abs().mean(1, keepdim=True)
    return (grad_x * torch.exp(-img_x)).mean() + (grad_y * torch.exp(-img_y)).mean()


def disp_to_depth(disp: Tensor, min_depth: float, max_depth: float) -> tuple[Tensor, Tensor]:
    """Sigmoid output in [0, 1] -> (disparity scaled to [1/max_depth, 1/min_depth], depth) as Monodepth2."""
    min_disp, max_disp = 1.0 / max_depth, 1.0 / min_depth
    scaled = min_disp + (max_disp - min_disp) * disp
    return scaled, 1.0 / scaled


# ---------------------------------------------------------------- scale-and-shift invariant (MiDaS)


def _flat(x: Tensor) -> Tensor:
    return x.reshape(x.shape[0], -1)


def _clean(x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Mask with non-finite values dropped, and x with zeros outside it, so nothing there makes NaN."""
    if x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()  # medians, sorts and least squares need more than half precision (autocast)
    mask = mask.bool() & torch.isfinite(x)
    return torch.where(mask, x, torch.zeros_like(x)), mask


def median_mad(x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Per-image median and mean absolute deviation from it over valid pixels: ([B], [B]).

    Images without valid pixels get (0, 1); the deviation is floored so dividing by it is safe.
    """
    x, mask = _clean(x, mask)
    flat, m = _flat(x), _flat(mask)
    masked = torch.where(m, flat, torch.full_like(flat, float("nan")))
    t = torch.nanmedian(masked, dim=1).values
    any_valid = m.any(1)
    t = torch.where(any_valid, t, torch.zeros_like(t))
    s = torch.where(m, (flat - t[:, None]).abs(), torch.zeros_like(flat)).sum(1) / m.sum(1).clamp(min=1)
    s = torch.where(any_valid, s.clamp(min=_EPS), torch.ones_like(s))
    return t, s


def normalize_median_mad(x: Tensor, mask: Tensor) -> Tensor:
    """MiDaS normalisation (x - median) / MAD per image over valid pixels; zero outside the mask."""
    t, s = median_mad(x, mask)
    x, mask = _clean(x, mask)
    out = (x - t.view(-1, 1, 1, 1)) / s.view(-1, 1, 1, 1)
    return torch.where(mask, out, torch.zeros_like(out))


def _lsq_scale_shift(pred: Tensor, target: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Per-image (scale, shift) minimising sum over mask of (scale * pred + shift - target)^2."""
    p, t, m = _flat(pred), _flat(target), _flat(mask).to(pred.dtype)
    n = m.sum(1).clamp(min=1)
    p_mean, t_mean = (m * p).sum(1) / n, (m * t).sum(1) / n
    # Centred sums: far better conditioned than the raw normal equations when values sit far from 0.
    pc, tc = (p - p_mean[:, None]) * m, (t - t_mean[:, None]) * m
    var = (pc * pc).sum(1)
    # A constant pred has no defined scale; rounding leaves it a centred spread of ~eps * |value|,
    # so the test is relative to the values' magnitude, whatever units they are in.
    ok = var > (64 * torch.finfo(pred.dtype).eps) ** 2 * (m * p * p).sum(1)
    scale = torch.where(ok, (pc * tc).sum(1) / torch.where(ok, var, torch.ones_like(var)), torch.zeros_like(var))
    return scale, t_mean - scale * p_mean


def align_scale_shift(pred: Tensor, target: Tensor, mask: Tensor, method: str = "lsq") -> Tensor:
    """pred mapped into target's space per image: least squares ("lsq") or median/MAD ("median").

    A constant prediction maps to the target's mean (lsq) or median (median).
    """
    target, mask = _clean(target, mask)
    pred, mask = _clean(pred, mask)
    if method == "lsq":
        scale, shift = _lsq_scale_shift(pred, target, mask)
    elif method == "median":
        tp, sp = median_mad(pred, mask)
        tt, st = median_mad(target, mask)
        scale, shift = st / sp, tt - st / sp * tp
    else:
        raise ValueError(f"unknown alignment {method!r}; expected 'lsq' or 'median'")
    return pred * scale.view(-1, 1, 1, 1) + shift.view(-1, 1, 1, 1)


def _image_weights(mask: Tensor, min_valid_pixels: int) -> Tensor:
    """[B] 1.0 for images with enough valid pixels to count, else 0.0."""
    return (_flat(mask).sum(1) >= min_valid_pixels).to(torch.float32)


def _mean_over_images(per_image: Tensor, weights: Tensor) -> Tensor:
    """Mean over counted images; zero (still differentiable) when none count."""
    per_image = torch.where(weights > 0, per_image, torch.zeros_like(per_image))
    return per_image.sum() / weights.sum().clamp(min=1)


def trimmed_mae_loss(
    pred: Tensor,
    target: Tensor,
    mask: Tensor,
    trim: float = 0.2,
    normalize: bool = True,
    min_valid_pixels: int = MIN_VALID_PIXELS,
) -> Tensor:
    """MiDaS trimmed MAE: per image, 1/(2M) * sum of the smallest (1 - trim) * M absolute residuals.

    pred and target are median/MAD-normalised first (normalize=False: used as given).
    """
    pred, mask = _clean(pred, mask)
    target, mask = _clean(target, mask)
    if normalize:
        pred, target = normalize_median_mad(pred, mask), normalize_median_mad(target, mask)
    m = _flat(mask)
    residual = torch.where(m, _flat(pred - target).abs(), torch.full_like(_flat(pred), float("inf")))
    ordered = residual.sort(1).values  # invalid pixels (inf) sort last
    count = m.sum(1)
    keep = count - torch.floor(count.to(torch.float32) * trim).long()
    rank = torch.arange(ordered.shape[1], device=ordered.device)[None, :]
    kept = torch.where(rank < keep[:, None], ordered, torch.zeros_like(ordered)).sum(1)
    per_image = kept / (2 * count.clamp(min=1))
    return _mean_over_images(per_image, _image_weights(mask, min_valid_pixels))


def gradient_matching_loss(
    pred: Tensor,
    target: Tensor,
    mask: Tensor,
    scales: int = 4,
    alignment: str | None = "median",
    min_valid_pixels: int = MIN_VALID_PIXELS,
) -> Tensor:
    """MiDaS multi-scale gradient matching of the residual R = aligned pred - target.

    Per scale k (the maps subsampled by 2^k, as MiDaS does), the sum of |dR/dx| + |dR/dy| over pixel
    pairs that are both valid, divided by the valid pixel count; summed over scales, then averaged over
    images. alignment: "median" normalises both maps by median/MAD, "lsq" aligns pred to target by
    least squares, None takes them as already aligned.
    """
    pred, mask = _clean(pred, mask)
    target, mask = _clean(target, mask)
    if alignment == "median":
        pred, target = normalize_median_mad(pred, mask), normalize_median_mad(target, mask)
    elif alignment is not None:
        pred = align_scale_shift(pred, target, mask, alignment)
    residual = torch.where(mask, pred - target, torch.zeros_like(pred))
    total = torch.zeros(pred.shape[0], dtype=pred.dtype, device=pred.device)
    for k in range(scales):
        step = 2**k
        r, m = residual[..., ::step, ::step], mask[..., ::step, ::step]
        gx = (r[..., :, 1:] - r[..., :, :-1]).abs() * (m[..., :, 1:] & m[..., :, :-1])
        gy = (r[..., 1:, :] - r[..., :-1, :]).abs() * (m[..., 1:, :] & m[..., :-1, :])
        total = total + (_flat(gx).sum(1) + _flat(gy).sum(1)) / _flat(m).sum(1).clamp(min=1)
    return _mean_over_images(total, _image_weights(mask, min_valid_pixels))


def ssi_loss(
    pred_disp: Tensor,
    target_disp: Tensor,
    mask: Tensor,
    alpha: float = 0.5,
    trim: float = 0.2,
    alignment: str = "median",
    scales: int = 4,
    min_valid_pixels: int = MIN_VALID_PIXELS,
) -> Tensor:
    """MiDaS scale-and-shift-invariant loss: trimmed MAE + alpha * gradient matching, in disparity.

    The target is median/MAD-normalised; pred is mapped into that space by median/MAD ("median", MiDaS)
    or by least squares ("lsq"), so the loss has the same units either way and ignores pred's scale
    (> 0 for "median") and shift.
    """
    target_disp, mask = _clean(target_disp, mask)
    pred_disp, mask = _clean(pred_disp, mask)
    target = normalize_median_mad(target_disp, mask)
    if alignment == "median":
        pred = normalize_median_mad(pred_disp, mask)
    elif alignment == "lsq":
        pred = align_scale_shift(pred_disp, target, mask, "lsq")
    else:
        raise ValueError(f"unknown alignment {alignment!r}; expected 'median' or 'lsq'")
    data = trimmed_mae_loss(pred, target, mask, trim, normalize=False, min_valid_pixels=min_valid_pixels)
    if alpha == 0:
        return data
    grad = gradient_matching_loss(pred, target, mask, scales, alignment=None, min_valid_pixels=min_valid_pixels)
    return data + alpha * grad
