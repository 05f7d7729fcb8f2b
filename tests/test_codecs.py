from __future__ import annotations

import cv2
import numpy as np
import pytest

from pipeline.codecs import encode_jpeg


def test_jpeg_round_trip_and_quality():
    image = (np.random.default_rng(0).random((48, 64, 3)) * 255).astype(np.uint8)
    high, low = encode_jpeg(image, 95), encode_jpeg(image, 30)
    decoded = cv2.imdecode(np.frombuffer(high, np.uint8), cv2.IMREAD_COLOR)
    assert decoded.shape == image.shape and len(low) < len(high)


def test_unencodable_image_is_a_clear_error():
    with pytest.raises(ValueError, match="JPEG"):
        encode_jpeg(np.zeros((4, 4, 7), np.uint8))
