"""Streaming scene-cut detection, in the manner of PySceneDetect's ContentDetector."""
from __future__ import annotations

import cv2
import numpy as np

from pipeline.config import ShotConfig


class CutDetector:
    """Feed frames in order; `update` says whether a new shot starts at this frame."""

    def __init__(self, cfg: ShotConfig):
        self.cfg = cfg
        self._previous: np.ndarray | None = None
        self._since_cut = 0

    def update(self, bgr: np.ndarray) -> bool:
        hsv = cv2.cvtColor(bgr, cv2.COLOR_BGR2HSV).astype(np.int16)
        previous, self._previous = self._previous, hsv
        self._since_cut += 1
        if previous is None or previous.shape != hsv.shape:
            return False
        score = float(np.abs(hsv - previous).mean(axis=(0, 1)).mean())
        if score >= self.cfg.threshold and self._since_cut >= self.cfg.min_frames:
            self._since_cut = 0
            return True
        return False
