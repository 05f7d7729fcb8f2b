"""Preview images: coloured disparity, contact sheets, atomic JPEG writes."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from pipeline.video.previews import (
    GAP_PX,
    INVALID_BGR,
    LABEL_HEIGHT_PX,
    colorize_disparity,
    contact_sheet,
    mask_image,
    write_preview_jpeg,
)


def _ramp(height: int = 40, width: int = 100) -> np.ndarray:
    return np.tile(np.linspace(0.0, 50.0, width, dtype=np.float32), (height, 1))


def test_colorize_disparity_shape_and_order():
    out = colorize_disparity(_ramp())
    assert out.shape == (40, 100, 3) and out.dtype == np.uint8
    far, near = out[20, 5].astype(int), out[20, 95].astype(int)
    assert np.abs(far - near).sum() > 100  # larger disparity, clearly different colour
    assert near[2] > near[0] and far[0] > far[2]  # TURBO: near is red, far is blue (BGR order)


def test_colorize_disparity_invalid_and_nan_pixels():
    disparity = _ramp()
    valid = np.ones(disparity.shape, bool)
    valid[:, 40:50] = False
    disparity[0, 0] = np.nan
    out = colorize_disparity(disparity, valid)
    assert (out[:, 40:50] == INVALID_BGR).all()
    assert (out[0, 0] == INVALID_BGR).all()
    assert not (out[:, 50:] == INVALID_BGR).all(axis=2).any()  # no valid pixel looks invalid


def test_colorize_disparity_is_robust_to_outliers():
    disparity = _ramp()
    clean = colorize_disparity(disparity)
    disparity[0, 0] = 1e6  # one wild pixel must not squash everything else into one colour
    wild = colorize_disparity(disparity)
    assert np.abs(wild[1:].astype(int) - clean[1:].astype(int)).max() <= 12
    assert len(np.unique(wild[1:].reshape(-1, 3), axis=0)) > 50


def test_colorize_disparity_tints_sky():
    disparity = _ramp()
    sky = np.zeros(disparity.shape, bool)
    sky[:10] = True
    out = colorize_disparity(disparity, sky_mask=sky)
    plain = colorize_disparity(disparity)
    assert not np.array_equal(out[:10], plain[:10])
    assert np.array_equal(out[10:], plain[10:])  # the sky does not change the range of the rest
    assert (out[:10, :, 0] > out[:10, :, 2]).all()  # bluish (B > R), whatever colour lies beneath
    with pytest.raises(ValueError, match="sky_mask"):
        colorize_disparity(disparity, sky_mask=np.zeros((3, 3), bool))


def test_colorize_disparity_all_invalid_or_flat():
    assert (colorize_disparity(np.zeros((8, 8), np.float32), np.zeros((8, 8), bool)) == INVALID_BGR).all()
    flat = colorize_disparity(np.full((8, 8), 3.0, np.float32))
    assert flat.shape == (8, 8, 3) and not (flat == INVALID_BGR).all(axis=2).any()


def test_contact_sheet_dimensions():
    left = np.full((400, 940, 3), 200, np.uint8)
    disparity = colorize_disparity(_ramp(400, 940))
    sky = mask_image(np.eye(400, 940, dtype=bool))
    rows = [[left, disparity, sky] for _ in range(3)]
    sheet = contact_sheet(rows, tile_width=320)
    tile_height = round(400 * 320 / 940)  # 136
    assert sheet.shape == (GAP_PX + 3 * (tile_height + GAP_PX), GAP_PX + 3 * (320 + GAP_PX), 3)
    assert sheet.dtype == np.uint8
    # The first tile sits one gap in from the corner and is the resized left view.
    assert (sheet[GAP_PX : GAP_PX + tile_height, GAP_PX : GAP_PX + 320] == 200).all()
    assert (sheet[:GAP_PX] != 200).any()

    labelled = contact_sheet(rows, tile_width=320, labels=["left", "disparity", "sky"])
    assert labelled.shape[0] == sheet.shape[0] + LABEL_HEIGHT_PX + GAP_PX
    assert labelled.shape[1] == sheet.shape[1]
    header = labelled[: LABEL_HEIGHT_PX + GAP_PX]
    assert (header > 200).any()  # the labels are drawn in light grey on the dark background


def test_contact_sheet_mixed_tiles_and_errors():
    wide = np.zeros((50, 200, 3), np.uint8)
    tall = np.zeros((200, 100), np.uint8)  # grey
    mask = np.ones((20, 20), bool)
    sheet = contact_sheet([[wide], [tall, mask]], tile_width=100)
    assert sheet.shape == (GAP_PX + (25 + GAP_PX) + (200 + GAP_PX), GAP_PX + 2 * (100 + GAP_PX), 3)
    with pytest.raises(ValueError, match="at least one"):
        contact_sheet([[]])
    with pytest.raises(ValueError, match="uint8"):
        contact_sheet([[np.zeros((4, 4, 3), np.float32)]])


def test_write_preview_jpeg_is_atomic_and_decodable(tmp_path):
    image = colorize_disparity(_ramp(120, 160))
    path = write_preview_jpeg(image, tmp_path / "previews" / "demo" / "video.jpg", quality=85)
    assert path == tmp_path / "previews" / "demo" / "video.jpg"
    decoded = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert decoded is not None and decoded.shape == image.shape
    assert np.abs(decoded.astype(int) - image.astype(int)).mean() < 8
    assert sorted(p.name for p in path.parent.iterdir()) == ["video.jpg"]  # no temporary left behind
    write_preview_jpeg(np.zeros((10, 10, 3), np.uint8), path)  # overwriting replaces the file
    assert cv2.imread(str(path)).shape == (10, 10, 3)
    assert sorted(p.name for p in path.parent.iterdir()) == ["video.jpg"]
