"""Disparity from stereo flow: the MiDaS-style consistency checks and rejection rules.

Its PNG storage is in pipeline/media/codecs.py, so the trainer decodes it without the stereo stack.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from pipeline.config import StereoConfig

_RANGE_PERCENTILES = (1.0, 99.0)


@dataclass(frozen=True)
class StereoResult:
    """Disparity of the left view and how trustworthy it is.

    `valid` means measured and consistent: the pixel passes the left-right and vertical checks and is
    not sky. Sky pixels are always valid=False and carry an assigned disparity (the frame's minimum
    valid one), so a trainer that wants MiDaS's behaviour (sky supervised as "far") uses
    `valid | sky_mask`; one that wants measurements only uses `valid`. All fractions except
    sky_fraction are over non-sky pixels.
    """

    disparity: np.ndarray  # HxW float32, -u of the left->right flow (positive = nearer than the screen plane)
    valid: np.ndarray  # HxW bool
    sky_mask: np.ndarray  # HxW bool
    lr_pass_fraction: float
    vertical_fail_fraction: float
    disp_range_px: float  # 99th - 1st percentile of valid disparity
    sky_fraction: float


@dataclass(frozen=True)
class PixelChecks:
    """Per-pixel outcome of the two checks, before any sky mask is known."""

    disparity: np.ndarray  # -u_LR, float32
    lr_error: np.ndarray  # |u_LR(p) + u_RL(p + f_LR(p))|, inf where the match leaves the image
    lr_ok: np.ndarray  # bool: |u_LR(p) + u_RL(p + f_LR(p))| <= lr_max_px, and the match lands inside the image
    vertical_ok: np.ndarray  # bool: |v_LR| <= vertical_max_px

    @property
    def valid(self) -> np.ndarray:
        return self.lr_ok & self.vertical_ok


def pixel_checks(flow_lr: np.ndarray, flow_rl: np.ndarray, cfg: StereoConfig) -> PixelChecks:
    """Disparity = -u_LR; vertical check |v_LR| <= vertical_max_px.

    LR check: |u_LR(p) + u_RL(p + f_LR(p))| <= lr_max_px.
    """
    if flow_lr.ndim != 3 or flow_lr.shape[2] != 2 or flow_lr.shape != flow_rl.shape:
        raise ValueError(f"flows must both be HxWx2, got {flow_lr.shape} and {flow_rl.shape}")
    height, width = flow_lr.shape[:2]
    u = flow_lr[..., 0].astype(np.float32)
    v = flow_lr[..., 1].astype(np.float32)
    map_x = np.arange(width, dtype=np.float32)[None, :] + u
    map_y = np.arange(height, dtype=np.float32)[:, None] + v
    # Pixels whose match leaves the right image have no backward flow to compare with: they fail. Pixel
    # i covers [i - 0.5, i + 0.5], so a match a hair above row 0 (tiny v on the top row) still counts.
    inside = (map_x >= -0.5) & (map_x <= width - 0.5) & (map_y >= -0.5) & (map_y <= height - 0.5)
    u_back = cv2.remap(
        np.ascontiguousarray(flow_rl[..., 0], dtype=np.float32),
        map_x,
        map_y,
        cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REPLICATE,
    )
    lr_error = np.where(inside, np.abs(u + u_back), np.float32(np.inf))
    with np.errstate(invalid="ignore"):  # NaN flows compare False, i.e. fail
        lr_ok = lr_error <= cfg.lr_max_px
        vertical_ok = np.abs(v) <= cfg.vertical_max_px
    return PixelChecks(-u, lr_error, lr_ok, vertical_ok)


def summarize(checks: PixelChecks, sky_mask: np.ndarray | None = None) -> StereoResult:
    """Frame-level result: sky excluded from the fractions and given the frame's minimum valid disparity."""
    shape = checks.disparity.shape
    sky = np.zeros(shape, bool) if sky_mask is None else np.asarray(sky_mask, bool)
    if sky.shape != shape:
        raise ValueError(f"sky mask {sky.shape} does not match flow {shape}")
    valid = checks.valid & ~sky
    ground = ~sky
    n_ground = int(ground.sum())
    disparity = checks.disparity
    valid_disp = disparity[valid]
    if valid_disp.size:
        low, high = np.percentile(valid_disp, _RANGE_PERCENTILES)
        disp_range = float(high - low)
        # Sky is the farthest thing in the frame: give it the smallest disparity measured anywhere.
        disparity = np.where(sky, valid_disp.min(), disparity)
    else:
        disp_range = 0.0
    return StereoResult(
        disparity=disparity.astype(np.float32),
        valid=valid,
        sky_mask=sky,
        lr_pass_fraction=float(checks.lr_ok[ground].mean()) if n_ground else 0.0,
        vertical_fail_fraction=float((~checks.vertical_ok[ground]).mean()) if n_ground else 0.0,
        disp_range_px=disp_range,
        sky_fraction=float(sky.mean()) if sky.size else 0.0,
    )


def check_stereo(
    flow_lr: np.ndarray, flow_rl: np.ndarray, cfg: StereoConfig, sky_mask: np.ndarray | None = None
) -> StereoResult:
    """Both checks and the frame-level summary in one call."""
    return summarize(pixel_checks(flow_lr, flow_rl, cfg), sky_mask)


def rejection_reason(result: StereoResult, cfg: StereoConfig) -> str | None:
    """Why the frame is not usable stereo, or None; the first rule that fires names it.

    Order: stereo_too_much_sky, stereo_no_valid (no non-sky pixel at all), stereo_vertical, stereo_lr,
    stereo_no_valid (no valid pixel although the rates passed, only with permissive thresholds),
    stereo_range. The rate rules come before "no valid pixel" because a failed check is what empties
    the valid mask (a 5 px vertical offset fails every pixel) and naming that check says more.
    """
    if result.sky_fraction > cfg.max_sky_fraction:
        return "stereo_too_much_sky"
    if result.sky_mask.all():
        return "stereo_no_valid"  # reachable only with max_sky_fraction = 1
    if result.vertical_fail_fraction > cfg.max_vertical_fail:
        return "stereo_vertical"
    if result.lr_pass_fraction < cfg.min_lr_pass:
        return "stereo_lr"
    if not result.valid.any():
        return "stereo_no_valid"
    if result.disp_range_px < cfg.min_disparity_range_px:
        return "stereo_range"
    return None
