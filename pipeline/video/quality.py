"""Per-frame quality measures and the drop rules built on them: dark, blank, blurry, static."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from pipeline.config import QualityConfig


@dataclass(frozen=True)
class FrameQuality:
    brightness: float  # mean luma, 0-255
    contrast: float  # luma standard deviation
    sharpness: float  # variance of the Laplacian at the analysis width


def analysis_view(image: np.ndarray, width: int) -> np.ndarray:
    """The frame scaled to `width` (never up), so thresholds do not depend on the source resolution."""
    h, w = image.shape[:2]
    if w <= width:
        return image
    return cv2.resize(image, (width, max(1, round(h * width / w))), interpolation=cv2.INTER_AREA)


def measure_quality(gray: np.ndarray) -> FrameQuality:
    mean, std = cv2.meanStdDev(gray)
    lap = cv2.Laplacian(gray, cv2.CV_32F)
    return FrameQuality(float(mean[0, 0]), float(std[0, 0]), float(lap.var()))


def quality_drop_reason(quality: FrameQuality, cfg: QualityConfig) -> str | None:
    """`dark`, `blank` or `blurry` when the frame fails that rule, else None (checked in that order)."""
    if quality.brightness < cfg.dark_max_brightness:
        return "dark"
    if quality.contrast < cfg.blank_max_std:
        return "blank"
    if quality.sharpness < cfg.blur_min_sharpness:
        return "blurry"
    return None


class MotionMeter:
    """Camera motion between two frames: median optical-flow magnitude as a fraction of the image width."""

    def __init__(self) -> None:
        # DIS ultrafast: about a millisecond at the analysis width, and robust enough for a median.
        self._dis = cv2.DISOpticalFlow.create(cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST)

    def __call__(self, previous_gray: np.ndarray, gray: np.ndarray) -> float:
        flow = self._dis.calc(previous_gray, gray, None)  # type: ignore[call-overload]  # OpenCV takes None
        magnitude = np.sqrt(flow[..., 0] ** 2 + flow[..., 1] ** 2)
        return float(np.median(magnitude)) / gray.shape[1]
