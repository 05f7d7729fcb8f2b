"""Streaming scene-cut detection, in the manner of PySceneDetect's content and adaptive detectors."""

from __future__ import annotations

import collections

import cv2
import numpy as np

from pipeline.config import ShotConfig


class CutDetector:
    """Feed frames in order; `update` says whether a new shot starts at this frame."""

    def __init__(self, cfg: ShotConfig):
        self.cfg = cfg
        self._previous: np.ndarray | None = None
        self._recent: collections.deque[float] = collections.deque(maxlen=cfg.window)
        self._since_cut = -1  # the first frame opens a shot as a cut does, so the first shot also spans min_frames

    def update(self, bgr: np.ndarray) -> bool:
        hsv = cv2.cvtColor(bgr, cv2.COLOR_BGR2HSV).astype(np.int16)
        previous, self._previous = self._previous, hsv
        self._since_cut += 1
        if previous is None or previous.shape != hsv.shape:
            return False
        score = float(np.abs(hsv - previous).mean(axis=(0, 1)).mean())
        baseline = float(np.mean(self._recent)) if self._recent else None
        self._recent.append(score)
        is_cut = score >= self.cfg.threshold or (
            baseline is not None and score >= self.cfg.min_score and score >= self.cfg.adaptive_ratio * baseline
        )
        if is_cut and self._since_cut >= self.cfg.min_frames:
            self._since_cut = 0
            self._recent.clear()  # the new shot gets its own baseline
            return True
        return False
