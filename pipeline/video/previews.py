"""Contact sheets for eyeballing a curated video: frames, disparity in colour, sky masks."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from pipeline.io.storage import write_bytes_atomic
from pipeline.media.codecs import encode_jpeg

INVALID_BGR = (0, 0, 0)  # colormaps below never produce pure black for a valid pixel
SKY_BGR = (255, 200, 140)  # light blue, blended over the sky so its (flattened) disparity still shows
SKY_ALPHA = 0.7
GAP_PX = 4
PREVIEW_CLIPS = 6  # a contact sheet shows the first kept frame of this many clips
BACKGROUND_BGR = (32, 32, 32)
LABEL_HEIGHT_PX = 22
# The lowest colormap level a valid pixel gets: TURBO and INFERNO are near-black at 0, the invalid colour.
COLORMAP_FLOOR = 8


@dataclass(frozen=True)
class PreviewFrame:
    """A kept frame chosen for the video's contact sheet (the first kept frame of each of its first clips)."""

    clip_id: int
    image: np.ndarray  # BGR, as written to the shard
    stereo: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # disparity, valid, sky; None for mono


def colorize_disparity(
    disparity: np.ndarray,
    valid: np.ndarray | None = None,
    sky_mask: np.ndarray | None = None,
    colormap: int = cv2.COLORMAP_TURBO,
) -> np.ndarray:
    """BGR uint8 image of a disparity map: near (large) red, far blue (TURBO); invalid black; sky tinted light blue."""
    disparity = np.asarray(disparity, np.float32)
    if disparity.ndim != 2:
        raise ValueError(f"disparity must be HxW, got shape {disparity.shape}")
    ok = np.isfinite(disparity)
    if valid is not None:
        ok &= _mask_like(valid, disparity.shape, "valid")
    sky = _mask_like(sky_mask, disparity.shape, "sky_mask") if sky_mask is not None else None
    # Sky carries the frame's minimum disparity, so it must not set the range that the rest is coloured in.
    ranged = ok & ~sky if sky is not None and (ok & ~sky).any() else ok
    low, high = colour_range(disparity, ranged)
    scale = 255.0 / max(high - low, 1e-6)
    levels = np.clip((np.where(ok, disparity, low) - low) * scale, 0, 255).astype(np.uint8)
    levels = np.maximum(levels, COLORMAP_FLOOR)
    out = cv2.applyColorMap(levels, colormap)
    out[~ok] = INVALID_BGR
    if sky is not None and sky.any():  # over invalid pixels too: an unmatched sky shows as a darker blue
        tint = np.array(SKY_BGR, np.float32)
        out[sky] = (out[sky].astype(np.float32) * (1 - SKY_ALPHA) + tint * SKY_ALPHA + 0.5).astype(np.uint8)
    return out


def colour_range(disparity: np.ndarray, ranged: np.ndarray) -> tuple[float, float]:
    """The disparities at the two ends of colorize_disparity's colormap: 2nd and 98th percentiles of `ranged`."""
    if not ranged.any():
        return 0.0, 1.0
    low, high = (float(v) for v in np.percentile(disparity[ranged], [2, 98]))
    return low, high


def mask_image(mask: np.ndarray, colour: tuple[int, int, int] = (255, 255, 255)) -> np.ndarray:
    """A bool mask as a BGR tile: colour where set, black elsewhere."""
    out = np.zeros((*mask.shape, 3), np.uint8)
    out[np.asarray(mask, bool)] = colour
    return out


def contact_sheet(
    rows: Sequence[Sequence[np.ndarray]], *, tile_width: int = 320, labels: Sequence[str] | None = None
) -> np.ndarray:
    """Grid of BGR tiles, each resized to tile_width (keeping aspect), with small gaps and optional column labels.

    Rows may hold different numbers of tiles and tiles different aspects: each row is as tall as its tallest
    tile and the sheet as wide as the longest row. Grey (HxW) and bool tiles are accepted too.
    """
    if tile_width < 1:
        raise ValueError(f"tile_width must be positive, got {tile_width}")
    resized = [[_as_tile(image, tile_width) for image in row] for row in rows]
    columns = max((len(row) for row in resized), default=0)
    if columns == 0:
        raise ValueError("contact_sheet needs at least one image")
    header = LABEL_HEIGHT_PX + GAP_PX if labels else 0
    heights = [max((t.shape[0] for t in row), default=0) for row in resized]
    width = GAP_PX + columns * (tile_width + GAP_PX)
    height = header + GAP_PX + sum(h + GAP_PX for h in heights)
    sheet = np.full((height, width, 3), BACKGROUND_BGR, np.uint8)
    if labels:
        for col, text in enumerate(list(labels)[:columns]):
            _put_label(sheet, str(text), GAP_PX + col * (tile_width + GAP_PX), GAP_PX, tile_width)
    y = header + GAP_PX
    for row, row_height in zip(resized, heights):
        for col, tile in enumerate(row):
            x = GAP_PX + col * (tile_width + GAP_PX)
            sheet[y : y + tile.shape[0], x : x + tile.shape[1]] = tile
        y += row_height + GAP_PX
    return sheet


def video_sheet(frames: Sequence[PreviewFrame]) -> np.ndarray:
    """One row per previewed clip: the frame, and for stereo its coloured disparity and sky mask."""
    rows = []
    for frame in frames:
        if frame.stereo is None:
            rows.append([frame.image])
        else:
            disparity, valid, sky = frame.stereo
            rows.append([frame.image, colorize_disparity(disparity, valid, sky), mask_image(sky)])
    return contact_sheet(rows)


def write_preview_jpeg(image: np.ndarray, path: str | Path, quality: int = 90) -> Path:
    """Encode image as JPEG and write it atomically (readers never see a partial file); returns path."""
    path = Path(path)
    write_bytes_atomic(path, encode_jpeg(image, quality))
    return path


def _as_tile(image: np.ndarray, tile_width: int) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype == bool:
        image = image.astype(np.uint8) * 255
    if image.dtype != np.uint8:
        raise ValueError(f"contact sheet tiles must be uint8 or bool, got {image.dtype}")
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.ndim != 3 or image.shape[2] != 3 or 0 in image.shape[:2]:
        raise ValueError(f"contact sheet tiles must be HxWx3 BGR or HxW, got shape {image.shape}")
    h, w = image.shape[:2]
    height = max(1, round(h * tile_width / w))
    if (w, h) == (tile_width, height):
        return image
    interpolation = cv2.INTER_AREA if w > tile_width else cv2.INTER_LINEAR
    return cv2.resize(image, (tile_width, height), interpolation=interpolation)


def _put_label(sheet: np.ndarray, text: str, x: int, y: int, max_width: int) -> None:
    font, thickness = cv2.FONT_HERSHEY_SIMPLEX, 1
    scale = 0.5
    (tw, th), baseline = cv2.getTextSize(text, font, scale, thickness)
    if tw > max_width:  # shrink a long label to its column rather than spill into the next
        scale *= max_width / tw
        (tw, th), baseline = cv2.getTextSize(text, font, scale, thickness)
    org = (x + 2, y + (LABEL_HEIGHT_PX + th) // 2)
    cv2.putText(sheet, text, org, font, scale, (235, 235, 235), thickness, cv2.LINE_AA)


def _mask_like(mask: np.ndarray, shape: tuple[int, ...], name: str) -> np.ndarray:
    mask = np.asarray(mask, bool)
    if mask.shape != shape:
        raise ValueError(f"{name} {mask.shape} must match the disparity's {shape}")
    return mask
