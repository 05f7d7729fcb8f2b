"""Image encoding shared by shards, stereo right views and previews."""
from __future__ import annotations

import cv2
import numpy as np


def encode_jpeg(image: np.ndarray, quality: int = 95) -> bytes:
    """JPEG bytes of a BGR (or grey) uint8 image; ValueError when OpenCV cannot encode it."""
    try:
        ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    except cv2.error:  # OpenCV raises for some shapes and returns False for others
        ok = False
    if not ok:
        raise ValueError(f"cannot encode a {image.dtype} {image.shape} image as JPEG")
    return data.tobytes()
