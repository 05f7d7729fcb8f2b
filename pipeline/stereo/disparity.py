"""Disparity from stereo flow: the MiDaS-style consistency checks, a per-pixel confidence and rejection rules.

Measured on Middlebury's real motorcycle pair (pipeline/synthetic/real_pairs.py, benchmarks/bench_stereo.py),
DIS medium's disparity is right almost everywhere it is consistent, except in bands along depth edges where
it smooths the foreground over the background in both directions: the left-right check keeps those, and
they were most of the 7.8% of kept pixels off by > 3 px (10.4% at 16% parallax, 3.3% at a movie's 3%). The
confidence's gradient and match cues drop them: 4.8%, 4.8% and 1.3%, at densities 0.78, 0.64 and 0.90
(from 0.88, 0.77 and 0.96). Alternatives measured and left out of the default: a StereoSGBM cross-check
(kept where both agree within 1 px: 0.61 / 2.5%, 0.47 / 2.3% and 0.81 / 0.8%, for 135 ms a pair, more than both
flows), seeding DIS (even with the ground truth blurred by 8 px as its initial flow: 0.65 / 4.4% at 16%,
0.90 / 1.2% at 3%: DIS's pyramid already reaches the range; its error is the half-resolution search),
full-res variational refinement (0.80 / 4.7%, 400 ms), a stricter confidence threshold (0.6: 0.75 / 4.2%,
0.61 / 4.2%, 0.88 / 1.05%) and DIS at finest scale 0 (0.81 / 3.1%, 0.67 / 2.7%, 0.90 / 0.91%, with the
synthetic EPE 0.071 -> 0.059 px, for 3-6x the flow time: `stereo.flow.dis_finest_scale: 0` where
accuracy matters more than speed). None keeps 0.70 at 16% parallax with 1% off by > 3 px.

The opt-in accuracy setting (`stereo.quality: accurate`, pipeline/config.py ACCURATE_STEREO): DIS at finest scale 0
with 6 px patches (`flow.dis_patch_size`), whose edges blur less, and a mask asking more of the left-right,
vertical and match cues but less of the gradient (max_disparity_gradient 3, min_match_ncc 0.6, min_confidence
0.625): 0.83 / 3.0%, 0.71 / 2.8% and 0.92 / 0.96% on motorcycle, and on Middlebury's real Aloe pair at 16.5%
parallax 0.70 / 0.21% with the frame kept (the default drops it as stereo_lr at 0.57), for ~5x DIS medium's flow
time. At min_confidence 0.7 (the first choice) motorcycle gave 0.81 / 2.5%, 0.69 / 2.3%, 0.91 / 0.78%, and Aloe
0.68 / 0.13%, under the 0.70 aim. Re-picking each
pixel's disparity among its neighbours' by 3x3 matching cost sharpened the re-rendered pairs' edges but cost
density on the real views (JPEG, exposure); keeping only where SGBM agrees within 1 px did worse per pixel kept
than raising min_confidence (0.50 / 1.4% against 0.62 / 1.3% at 16%); and a texture term would drop the wrong
pixels: the kept ones in flat windows are the most accurate (0.1-0.4% off), the errors sit at depth edges.

Issue 16's last aim on re-rendered motorcycle (0.70 kept, <= 1% off by > 3 px, at 16% parallax) is out of reach of
any mask over these flows. Measured on the accurate setting at min_confidence 0.7 (bench_stereo's accurate_* rows;
`equal_error`: the most density any min_confidence keeps at its 2.29%, and at 1%: 0.689 and 0.573) and left out: an
occlusion cue from the right->left flow's range map (Wang et al. 2018: left pixels no right pixel lands on) drops
473 of the 2,253 occluded pixels kept wrongly, and 3,145 right ones: the right->left flow smears the foreground over
the same band, so both flows agree and the range there is ~1 (0.688 and 0.557); left-right failures spread 4 px
towards the occluded side (0.686 and 0.583); a colour cue (3x3 means against the warped right view) 0.697 and 0.610,
but nothing on motorcycle's own views (0.810 against 0.810) and little on Aloe's (0.689 against 0.684): it helps the
re-rendered pairs, whose right view is the left resampled. Even removing every pixel the ground truth says is
occluded keeps 0.727 and 0.641; removing also every pixel within 1 px of a true depth edge keeps 0.678 at 0.85% (at
confidence 0.5). What is left wrong sits at depth edges and in thin structures (background seen through gaps
narrower than the parallax, which both flows fill with the foreground), and at 16% only 80% of the pixels are within
3 px at all: the disparity itself has to improve at edges, not the mask.
Re-estimating it there with shiftable windows (the classic remedy for a fattened foreground: 1-D search over the
local disparity range, each candidate's 5x5 ZNCC the best over horizontally shifted windows, both views, confidence
recomputed) raised the density at 1% from 0.573 to 0.656 on the re-rendered pair, but mostly as a stricter mask (the
old values under the new confidence: 0.642), and cost Aloe its 0.70 at any threshold (0.631 at 0.625; 7-9 s a pair
there). Among the wrong kept pixels, 43% are truly occluded, and on the rest a 7x7 or 9x9 cost prefers the truth to
the flow only 23-27% of the time: gaps narrower than the window, where the foreground wins in every window position.

Its PNG storage is in pipeline/media/codecs.py, so the trainer decodes it without the stereo stack.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from pipeline.config import StereoConfig
from pipeline.media.codecs import CONFIDENCE_LEVELS

_RANGE_PERCENTILES = (1.0, 99.0)
_GRADIENT_KERNEL = np.ones((5, 5), np.uint8)
_MATCH_WINDOW = (7, 7)
_FLAT_VARIANCE = 4.0  # grey levels^2 over the window: below it a ZNCC is noise and says nothing


@dataclass(frozen=True)
class StereoResult:
    """Disparity of the left view and how trustworthy it is.

    `valid` means measured and consistent: confidence >= stereo.min_confidence (by default: within the
    left-right, vertical, gradient and match limits) and not sky. Sky pixels are always valid=False, have
    confidence 0 and carry an assigned disparity (the frame's minimum valid one), so a trainer that wants
    MiDaS's behaviour (sky supervised as "far") uses `valid | sky_mask`; one that wants measurements only
    uses `valid`, or weighs them by `confidence`. All fractions except sky_fraction are over non-sky pixels;
    vertical_fail_fraction only over those that also pass the left-right check (see summarize).
    """

    disparity: np.ndarray  # HxW float32, -u of the left->right flow (positive = nearer than the screen plane)
    valid: np.ndarray  # HxW bool
    sky_mask: np.ndarray  # HxW bool
    confidence: np.ndarray  # HxW float32 in [0, 1] (code / 255), 0 on sky; valid = confidence >= min_confidence
    lr_pass_fraction: float
    vertical_fail_fraction: float
    disp_range_px: float  # 99th - 1st percentile of valid disparity
    sky_fraction: float


@dataclass(frozen=True)
class PixelChecks:
    """Per-pixel outcome of the checks and the confidence they add up to, before any sky mask is known."""

    disparity: np.ndarray  # -u_LR, float32
    lr_error: np.ndarray  # |u_LR(p) + u_RL(p + f_LR(p))|, inf where the match leaves the image
    lr_ok: np.ndarray  # bool: |u_LR(p) + u_RL(p + f_LR(p))| <= lr_max_px, and the match lands inside the image
    vertical_ok: np.ndarray  # bool: |v_LR| <= vertical_max_px
    confidence: np.ndarray  # HxW float32 in [0, 1], on the 8-bit grid the shard stores (code / 255)
    min_confidence: float  # valid = confidence >= this

    @property
    def valid(self) -> np.ndarray:
        return self.confidence >= self.min_confidence


def pixel_checks(
    flow_lr: np.ndarray,
    flow_rl: np.ndarray,
    cfg: StereoConfig,
    left: np.ndarray | None = None,
    right: np.ndarray | None = None,
) -> PixelChecks:
    """Disparity = -u_LR, the two MiDaS checks and a per-pixel confidence.

    LR check: |u_LR(p) + u_RL(p + f_LR(p))| <= lr_max_px; vertical check: |v_LR| <= vertical_max_px.
    Confidence = 1 - max(cues) / 2, each cue normalised to 1 at its limit, so min_confidence 0.5 keeps exactly
    the pixels within every limit. The cues beyond MiDaS's two target what the LR check cannot see on real
    footage: both flows smooth a foreground's disparity over the background beside it (the "fattened" edges
    of a DIS map), consistently in both directions. There the disparity changes fast (the gradient cue) and
    the right view, warped back by the flow, no longer looks like the left (the match cue, 7x7 ZNCC, left out
    on flat windows where it means nothing, and when the views are not given).
    """
    if flow_lr.ndim != 3 or flow_lr.shape[2] != 2 or flow_lr.shape != flow_rl.shape:
        raise ValueError(f"flows must both be HxWx2, got {flow_lr.shape} and {flow_rl.shape}")
    height, width = flow_lr.shape[:2]
    u = np.ascontiguousarray(flow_lr[..., 0], dtype=np.float32)
    v = np.ascontiguousarray(flow_lr[..., 1], dtype=np.float32)
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
    lr_error = np.add(u_back, u, out=u_back)
    np.abs(lr_error, out=lr_error)
    lr_error[~inside] = np.inf
    disparity = -u
    with np.errstate(invalid="ignore"):  # NaN flows compare False, i.e. fail
        lr_ok = lr_error <= cfg.lr_max_px
        cue = np.abs(v)
        vertical_ok = cue <= cfg.vertical_max_px
        cue *= np.float32(1 / cfg.vertical_max_px)
        np.maximum(cue, lr_error * np.float32(1 / cfg.lr_max_px), out=cue)
        np.maximum(cue, _gradient_cue(disparity, cfg.max_disparity_gradient), out=cue)
        if left is not None and right is not None:
            np.maximum(cue, _match_cue(left, right, map_x, map_y, cfg.min_match_ncc), out=cue)
        codes = _confidence_codes(cue)
    confidence = codes.astype(np.float32)
    confidence *= np.float32(1 / CONFIDENCE_LEVELS)
    return PixelChecks(disparity, lr_error, lr_ok, vertical_ok, confidence, cfg.min_confidence)


def _confidence_codes(cue: np.ndarray) -> np.ndarray:
    """uint8 round(255 * (1 - cue / 2)), cue clipped to [0, 2] and NaN (a NaN flow) taken as 2; cue is overwritten.

    Code 128 and up is exactly cue <= 1 (every limit kept), so min_confidence 0.5 is the plain checks.
    """
    np.fmin(cue, np.float32(2), out=cue)
    np.maximum(cue, np.float32(0), out=cue)
    cue *= np.float32(-CONFIDENCE_LEVELS / 2)
    cue += np.float32(CONFIDENCE_LEVELS + 0.5)
    return cue.astype(np.uint8)


def _gradient_cue(disparity: np.ndarray, limit: float) -> np.ndarray:
    """Largest |grad disparity| within 5x5, over limit (px per px): the smoothed band of a depth edge."""
    scale = 1 / (8 * limit)  # a 3x3 Sobel weighs a unit slope 8
    gx = cv2.Sobel(disparity, cv2.CV_32F, 1, 0, ksize=3, scale=scale)
    gy = cv2.Sobel(disparity, cv2.CV_32F, 0, 1, ksize=3, scale=scale)
    return cv2.dilate(cv2.magnitude(gx, gy), _GRADIENT_KERNEL)


def _match_cue(left: np.ndarray, right: np.ndarray, map_x: np.ndarray, map_y: np.ndarray, min_ncc: float) -> np.ndarray:
    """(1 - ZNCC) / (1 - min_ncc) of left and right warped by the flow, over 7x7; 0 where left's window is flat."""
    a = _grey(left)
    if a.shape != map_x.shape:
        raise ValueError(f"views {a.shape} do not match the flow {map_x.shape}")
    # Warping the 8-bit view and converting after is a third cheaper than warping floats, for the same cue.
    b = cv2.remap(_grey(right), map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE).astype(np.float32)
    a = a.astype(np.float32)
    mean_a, mean_b = cv2.blur(a, _MATCH_WINDOW), cv2.blur(b, _MATCH_WINDOW)
    var_a = np.subtract(cv2.blur(a * a, _MATCH_WINDOW), mean_a * mean_a)
    var_b = np.subtract(cv2.blur(b * b, _MATCH_WINDOW), mean_b * mean_b)
    cov = np.subtract(cv2.blur(a * b, _MATCH_WINDOW), mean_a * mean_b)
    denominator = np.multiply(var_b, var_a, out=var_b)
    np.maximum(denominator, np.float32(1e-6), out=denominator)
    np.sqrt(denominator, out=denominator)
    cue = np.divide(cov, denominator, out=cov)  # the ZNCC, then the cue in place
    np.subtract(np.float32(1), cue, out=cue)
    np.multiply(cue, np.float32(1 / (1 - min_ncc)), out=cue)
    cue[var_a < _FLAT_VARIANCE] = 0
    return cue


def _grey(image: np.ndarray) -> np.ndarray:
    return image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)


def summarize(checks: PixelChecks, sky_mask: np.ndarray | None = None) -> StereoResult:
    """Frame-level result: sky excluded from the fractions and given the frame's minimum valid disparity.

    The vertical check judges the source (is the pair rectified?), so its fraction counts only the pixels
    whose match is consistent both ways: an occluded, out-of-view or textureless pixel has an arbitrary v
    that says nothing about the rig, and it is already counted by the left-right rule. On the real motorcycle
    pair re-rendered to disparities of up to 16% of the width, DIS leaves 10.7% of all pixels over 2 px
    vertically (occluded, out of view), so MiDaS's 10% rule dropped the frame, against 2.3% of the
    LR-consistent ones; a render shifted 5 px vertically fails over 80% either way.
    """
    shape = checks.disparity.shape
    sky = np.zeros(shape, bool) if sky_mask is None else np.asarray(sky_mask, bool)
    if sky.shape != shape:
        raise ValueError(f"sky mask {sky.shape} does not match flow {shape}")
    n_sky = int(np.count_nonzero(sky))
    valid = checks.valid & ~sky if n_sky else checks.valid
    matched = checks.lr_ok & ~sky if n_sky else checks.lr_ok
    n_ground = sky.size - n_sky
    n_matched = int(np.count_nonzero(matched))
    n_vertical_ok = int(np.count_nonzero(matched & checks.vertical_ok))
    disparity = checks.disparity
    valid_disp = disparity[valid]
    if valid_disp.size:
        # valid_disp is this function's own copy: the percentile may reorder it (its minimum stays the same).
        low, high = np.percentile(valid_disp, _RANGE_PERCENTILES, overwrite_input=True)
        disp_range = float(high - low)
        if n_sky:  # sky is the farthest thing in the frame: give it the smallest disparity measured anywhere
            disparity = np.where(sky, valid_disp.min(), disparity)
    else:
        disp_range = 0.0
    confidence = np.where(sky, np.float32(0), checks.confidence) if n_sky else checks.confidence.copy()
    # Counts, not means of masked copies: the same fractions (an exact integer over an integer), less memory traffic.
    return StereoResult(
        disparity=disparity.astype(np.float32),
        valid=valid,
        sky_mask=sky,
        confidence=confidence,
        lr_pass_fraction=n_matched / n_ground if n_ground else 0.0,
        vertical_fail_fraction=(n_matched - n_vertical_ok) / n_matched if n_matched else 0.0,
        disp_range_px=disp_range,
        sky_fraction=n_sky / sky.size if sky.size else 0.0,
    )


def check_stereo(
    flow_lr: np.ndarray,
    flow_rl: np.ndarray,
    cfg: StereoConfig,
    sky_mask: np.ndarray | None = None,
    left: np.ndarray | None = None,
    right: np.ndarray | None = None,
) -> StereoResult:
    """The per-pixel checks and the frame-level summary in one call."""
    return summarize(pixel_checks(flow_lr, flow_rl, cfg, left, right), sky_mask)


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
