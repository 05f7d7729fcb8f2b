"""Tests for the image codecs: JPEG frames, 16-bit disparity PNG, 1-bit mask PNG."""

from __future__ import annotations

import io
import struct
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image

from pipeline.media.codecs import (
    decode_confidence_png,
    decode_disparity_png,
    decode_mask_png,
    encode_confidence_png,
    encode_disparity_png,
    encode_jpeg,
    encode_mask_png,
)


def test_jpeg_round_trip_and_quality():
    image = (np.random.default_rng(0).random((48, 64, 3)) * 255).astype(np.uint8)
    high, low = encode_jpeg(image, 95), encode_jpeg(image, 30)
    decoded = cv2.imdecode(np.frombuffer(high, np.uint8), cv2.IMREAD_COLOR)
    assert decoded.shape == image.shape and len(low) < len(high)


def test_unencodable_image_is_a_clear_error():
    with pytest.raises(ValueError, match="JPEG"):
        encode_jpeg(np.zeros((4, 4, 7), np.uint8))


def test_disparity_png_round_trip():
    rng = np.random.default_rng(0)
    d = (rng.normal(0, 12, (72, 96)) + np.linspace(-30, 40, 96)[None, :]).astype(np.float32)
    png, scale, offset = encode_disparity_png(d)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    codes = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)
    assert codes.dtype == np.uint16 and codes.min() == 0 and codes.max() == 65535
    np.testing.assert_allclose(codes * scale + offset, d, atol=scale)  # the documented decode formula
    assert offset == pytest.approx(d.min()) and scale == pytest.approx((d.max() - d.min()) / 65535)
    decoded = decode_disparity_png(png, scale, offset)
    assert decoded.dtype == np.float32 and decoded.shape == d.shape
    assert np.abs(decoded - d).max() <= scale / 2 + 1e-5
    assert np.abs(decoded - d).max() < (d.max() - d.min()) / 1000


def test_disparity_png_uses_valid_range_and_survives_flat_frames():
    d = np.linspace(0, 10, 50, dtype=np.float32).reshape(5, 10)
    valid = d >= 2
    d_with_outlier = d.copy()
    d_with_outlier[0, 0] = -1000.0  # invalid: must not stretch the scale
    png, scale, offset = encode_disparity_png(d_with_outlier, valid)
    low, high = float(d[valid].min()), float(d[valid].max())
    assert offset == pytest.approx(low) and scale == pytest.approx((high - low) / 65535)
    decoded = decode_disparity_png(png, scale, offset)
    assert np.abs(decoded - d)[valid].max() <= scale
    flat_png, flat_scale, flat_offset = encode_disparity_png(np.full((4, 4), 3.5, np.float32))
    assert flat_scale > 0
    np.testing.assert_array_equal(decode_disparity_png(flat_png, flat_scale, flat_offset), 3.5)
    with pytest.raises(ValueError, match="16-bit"):
        decode_disparity_png(encode_mask_png(valid), scale, offset)


def test_mask_png_round_trip():
    rng = np.random.default_rng(1)
    mask = rng.random((37, 53)) > 0.6
    data = encode_mask_png(mask)
    np.testing.assert_array_equal(decode_mask_png(data), mask)
    assert data[24] == 1  # IHDR bit depth
    smooth = np.zeros((400, 940), bool)
    smooth[:120] = True
    assert len(encode_mask_png(smooth)) < 2000  # 1-bit: a sky mask costs next to nothing


def _png_rows(data: bytes, row_bytes: int) -> np.ndarray:
    """The filtered rows of a PNG (its IDAT data inflated): column 0 is each row's filter type."""
    idat, at = b"", 8
    while at < len(data):
        (length,), kind = struct.unpack(">I", data[at : at + 4]), data[at + 4 : at + 8]
        if kind == b"IDAT":
            idat += data[at + 8 : at + 8 + length]
        at += 12 + length
    return np.frombuffer(zlib.decompress(idat), np.uint8).reshape(-1, row_bytes + 1)


def test_confidence_png_round_trip_uses_the_up_filter():
    rng = np.random.default_rng(2)
    confidence = np.clip(cv2.GaussianBlur(rng.random((60, 90)).astype(np.float32), (0, 0), 2) * 2 - 0.3, 0, 1)
    confidence[0, :5] = np.nan  # a NaN flow's confidence stores code 0
    data = encode_confidence_png(confidence)
    codes = np.rint(np.nan_to_num(confidence) * 255)
    np.testing.assert_array_equal(decode_confidence_png(data), codes.astype(np.float32) / 255)
    assert (_png_rows(data, 90)[:, 0] == 2).all()  # Up on every row: smaller than OpenCV's default Sub


@pytest.mark.parametrize("shape", [(1, 1), (1, 9), (7, 13), (40, 64)])
def test_pngs_read_back_the_same_in_a_second_decoder(shape):
    # The PNG container is written here (ISA-L deflate); Pillow checks every chunk's CRC and the zlib stream.
    rng = np.random.default_rng(shape[1])
    disparity = rng.normal(0, 20, shape).astype(np.float32)
    mask, confidence = rng.random(shape) > 0.5, rng.random(shape).astype(np.float32)
    png, scale, offset = encode_disparity_png(disparity)
    with Image.open(io.BytesIO(png)) as image:
        image.load()
        codes = np.asarray(image).astype(np.float64)
    np.testing.assert_array_equal(decode_disparity_png(png, scale, offset), (codes * scale + offset).astype(np.float32))
    assert np.abs(codes * scale + offset - disparity).max() <= scale / 2 + 1e-4
    with Image.open(io.BytesIO(encode_mask_png(mask))) as image:
        assert image.mode == "1" and image.size == shape[::-1]
        np.testing.assert_array_equal(np.asarray(image), mask)
    with Image.open(io.BytesIO(encode_confidence_png(confidence))) as image:
        np.testing.assert_array_equal(np.asarray(image), np.rint(confidence * 255).astype(np.uint8))


def test_an_empty_map_is_a_clear_error():
    with pytest.raises(ValueError, match="at least one pixel"):
        encode_mask_png(np.zeros((0, 5), bool))
    with pytest.raises(ValueError, match="at least one pixel"):
        encode_confidence_png(np.zeros((4, 0), np.float32))
