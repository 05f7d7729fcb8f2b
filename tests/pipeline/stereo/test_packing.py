"""Tests for stereo layouts: splitting, layout detection, letterbox bars and the per-view crop/resize plan."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline.stereo.packing import (
    DEFAULT_STEREO_THRESHOLD,
    STEREO_LAYOUTS,
    CropBox,
    ViewGeometry,
    apply_geometry,
    centre_crop_box,
    detect_layout,
    find_letterbox,
    looks_stereo,
    pack_views,
    plan_view_geometry,
    split_views,
)
from pipeline.synthetic.renderer import (
    SceneSpec,
    encode_video,
    render_frames,
    render_stereo_frames,
    render_stereo_video,
)

CONVERGENCE = 4.0
SPEC = SceneSpec(width=160, height=96, fps=10.0, duration_s=0.4, seed=0, baseline_m=0.3)
MONO = SceneSpec(width=160, height=96, fps=10.0, duration_s=0.4, seed=0)


def _decode(path: Path) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    assert frames, f"nothing decoded from {path}"
    return frames


def _mad(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float32) - b.astype(np.float32)).mean())


@pytest.fixture(scope="module")
def pairs():
    return list(render_stereo_frames(SPEC, convergence_px=CONVERGENCE))


@pytest.fixture(scope="module")
def decoded(tmp_path_factory) -> dict[str, list[np.ndarray]]:
    """Decoded frames of SPEC encoded in every layout, plus two mono videos."""
    directory = tmp_path_factory.mktemp("stereo")
    out = {
        layout: _decode(
            render_stereo_video(SPEC, directory / f"{layout}.mp4", layout=layout, convergence_px=CONVERGENCE)
        )
        for layout in STEREO_LAYOUTS
    }
    out["mono"] = _decode(encode_video((f.image for f in render_frames(MONO)), directory / "mono.mp4", MONO.fps))
    # The adversarial mono case: two different canyons side by side share the same overall structure.
    other = SceneSpec(width=160, height=96, fps=10.0, duration_s=0.4, seed=12)
    wide = (np.concatenate([a.image, b.image], axis=1) for a, b in zip(render_frames(MONO), render_frames(other)))
    out["two_scenes"] = _decode(encode_video(wide, directory / "two.mp4", MONO.fps))
    return out


# ---------------------------------------------------------------- split and pack


@pytest.mark.parametrize("layout", ["sbs_full", "tab_full"])
def test_pack_then_split_is_exact_for_full_layouts(pairs, layout):
    left, right = split_views(pack_views(pairs[0].left, pairs[0].right, layout), layout)
    np.testing.assert_array_equal(left, pairs[0].left)
    np.testing.assert_array_equal(right, pairs[0].right)


@pytest.mark.parametrize(
    ("layout", "packed_shape"),
    [("sbs_half", (96, 160, 3)), ("tab_half", (96, 160, 3)), ("sbs_full", (96, 320, 3)), ("tab_full", (192, 160, 3))],
)
def test_pack_gives_the_layout_geometry(pairs, layout, packed_shape):
    assert pack_views(pairs[0].left, pairs[0].right, layout).shape == packed_shape


@pytest.mark.parametrize("layout", STEREO_LAYOUTS)
def test_split_views_recovers_both_views_after_the_codec(pairs, decoded, layout):
    left, right = split_views(decoded[layout][1], layout)
    assert left.shape == right.shape == pairs[1].left.shape  # half layouts are stretched back
    tol = 6.0 if layout.endswith("full") else 14.0  # a half view lost half its resolution along one axis
    assert _mad(left, pairs[1].left) < tol
    assert _mad(right, pairs[1].right) < tol
    # The views differ enough that a swapped or misplaced split would fail the tolerance.
    assert _mad(left, pairs[1].right) > _mad(left, pairs[1].left) + 3.0


def test_split_views_drops_an_odd_last_column_and_rejects_unknown_layouts():
    frame = np.zeros((10, 21, 3), np.uint8)
    frame[:, 10:20] = 200
    left, right = split_views(frame, "sbs_full")
    assert left.shape == right.shape == (10, 10, 3)
    assert (left == 0).all() and (right == 200).all()
    with pytest.raises(ValueError, match="unknown stereo layout"):
        split_views(frame, "mono")
    with pytest.raises(ValueError, match="differ in shape"):
        pack_views(frame, frame[:, :20], "sbs_full")


# ---------------------------------------------------------------- layout detection


@pytest.mark.parametrize("layout", STEREO_LAYOUTS)
def test_detect_layout_finds_each_layout_in_decoded_video(decoded, layout):
    guess = detect_layout(decoded[layout][:3])
    assert guess.layout == layout, guess.scores
    arrangement, other = ("sbs", "tab") if layout.startswith("sbs") else ("tab", "sbs")
    assert guess.scores[arrangement] > 0.8
    assert guess.scores[other] < 0.5


@pytest.mark.parametrize("name", ["mono", "two_scenes"])
def test_mono_video_is_mono_and_fails_a_declared_stereo_layout(decoded, name):
    guess = detect_layout(decoded[name][:3])
    assert guess.layout == "mono", guess.scores
    assert max(guess.scores.values()) < DEFAULT_STEREO_THRESHOLD
    for layout in STEREO_LAYOUTS:
        ok, score = looks_stereo(decoded[name][:3], layout)
        assert not ok and score < DEFAULT_STEREO_THRESHOLD


@pytest.mark.parametrize("layout", STEREO_LAYOUTS)
def test_looks_stereo_accepts_the_declared_layout_and_rejects_the_other_arrangement(decoded, layout):
    ok, score = looks_stereo(decoded[layout][:3], layout)
    assert ok and score > DEFAULT_STEREO_THRESHOLD
    crossed = {"sbs_full": "tab_full", "sbs_half": "tab_half", "tab_full": "sbs_full", "tab_half": "sbs_half"}
    assert not looks_stereo(decoded[layout][:3], crossed[layout])[0]


@pytest.mark.parametrize(
    ("view", "layout"),
    [
        ((240, 100), "sbs_half"),  # 2.4:1 content squeezed: a 1.2 view, still "half"
        ((128, 96), "sbs_full"),  # 4:3 content: a 1.33 view, still "full"
        ((128, 96), "tab_half"),  # 4:3 squeezed vertically: a 2.67 view
        ((240, 100), "tab_full"),  # 2.4:1 content: a 2.4 view
    ],
)
def test_full_vs_half_follows_the_view_aspect_at_the_extremes(view, layout):
    spec = SceneSpec(width=view[0], height=view[1], fps=10.0, duration_s=0.1, seed=3, baseline_m=0.3)
    frames = [pack_views(p.left, p.right, layout) for p in render_stereo_frames(spec, convergence_px=2.0)]
    assert detect_layout(frames).layout == layout


def test_textureless_frames_are_mono():
    flat = [np.full((96, 320, 3), 120, np.uint8)]
    guess = detect_layout(flat)
    assert guess.layout == "mono" and guess.scores == {"sbs": 0.0, "tab": 0.0}


def test_detect_layout_rejects_bad_input():
    with pytest.raises(ValueError, match="at least one frame"):
        detect_layout([])
    with pytest.raises(ValueError, match="differ in shape"):
        detect_layout([np.zeros((96, 320, 3), np.uint8), np.zeros((96, 160, 3), np.uint8)])
    with pytest.raises(ValueError, match="unknown stereo layout"):
        looks_stereo([np.zeros((96, 320, 3), np.uint8)], "sbs")


# ---------------------------------------------------------------- letterbox


def _barred(image: np.ndarray, top: int, bottom: int, left: int, right: int) -> np.ndarray:
    return cv2.copyMakeBorder(image, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(0, 0, 0))


def test_find_letterbox_finds_bars_on_raw_frames(pairs):
    frames = [_barred(p.left, 12, 10, 8, 6) for p in pairs]
    assert find_letterbox(frames) == CropBox(8, 12, 160, 96)


def test_find_letterbox_survives_the_codec_and_subtitles_in_a_bar(pairs, tmp_path):
    frames = [_barred(p.left, 12, 12, 8, 8) for p in pairs]
    for frame in frames:
        cv2.putText(frame, "subtitle", (40, 116), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (255, 255, 255), 1)
    decoded = _decode(encode_video(frames, tmp_path / "bars.mp4", SPEC.fps))
    box = find_letterbox(decoded)
    assert abs(box.x - 8) <= 1 and abs(box.y - 12) <= 1
    assert abs(box.width - 160) <= 2 and abs(box.height - 96) <= 2


def test_find_letterbox_keeps_a_dark_frame_from_shrinking_the_box(pairs):
    frames = [_barred(p.left, 12, 12, 0, 0) for p in pairs]
    frames.append(np.zeros_like(frames[0]))  # a fade to black
    frames.append(_barred((pairs[0].left * 0.05).astype(np.uint8), 12, 12, 0, 0))  # a very dark shot
    assert find_letterbox(frames) == CropBox(0, 12, 160, 96)


def test_find_letterbox_without_bars_or_with_nothing_visible():
    assert find_letterbox([np.full((50, 80, 3), 90, np.uint8)]) == CropBox(0, 0, 80, 50)
    assert find_letterbox([np.zeros((50, 80, 3), np.uint8)]) == CropBox(0, 0, 80, 50)


# ---------------------------------------------------------------- crop, resize, disparity scale


def test_centre_crop_box_centres_inside_the_view_or_the_letterbox():
    assert centre_crop_box(1920, 1080, (1880, 800)) == CropBox(20, 140, 1880, 800)
    assert centre_crop_box(1920, 1080, None) == CropBox(0, 0, 1920, 1080)
    inside = CropBox(0, 132, 1920, 816)
    assert centre_crop_box(1920, 1080, (1880, 800), inside) == CropBox(20, 140, 1880, 800)
    assert centre_crop_box(1920, 1080, None, inside) == inside


def test_centre_crop_box_keeps_what_fits_when_the_view_is_smaller():
    assert centre_crop_box(1440, 600, (1880, 800)) == CropBox(0, 0, 1440, 600)
    assert centre_crop_box(1920, 1080, (1880, 800), CropBox(0, 300, 1920, 480)) == CropBox(20, 300, 1880, 480)
    with pytest.raises(ValueError, match="does not lie inside"):
        centre_crop_box(100, 100, (50, 50), CropBox(60, 0, 50, 100))
    with pytest.raises(ValueError, match="positive"):
        centre_crop_box(100, 100, (0, 50))


def test_plan_view_geometry_and_disparity_scale():
    geometry = plan_view_geometry(
        1920, 1080, letterbox=CropBox(0, 140, 1920, 800), crop=(1880, 800), output_size=(940, 400)
    )
    assert geometry == ViewGeometry(CropBox(20, 140, 1880, 800), (940, 400))
    assert geometry.disparity_scale == pytest.approx(0.5)
    kept = plan_view_geometry(320, 180, letterbox=None, crop=None, output_size=None)
    assert kept == ViewGeometry(CropBox(0, 0, 320, 180), (320, 180)) and kept.disparity_scale == 1.0


def test_a_view_smaller_than_the_crop_is_cut_to_the_output_aspect_never_stretched():
    # 1282x1110 under crop 1880x800: 1282x800 fits, and 940x400 from it would squeeze the height 1.47x.
    geometry = plan_view_geometry(1282, 1110, letterbox=None, crop=(1880, 800), output_size=(940, 400))
    assert geometry == ViewGeometry(CropBox(0, 282, 1282, 546), (940, 400))
    vertical_scale = geometry.output_size[1] / geometry.box.height
    assert vertical_scale == pytest.approx(geometry.disparity_scale, rel=0.002)
    # A view too tall for the aspect loses rows, one too wide loses columns; both stay centred.
    assert plan_view_geometry(741, 500, letterbox=None, crop=None, output_size=(940, 400)).box == CropBox(
        0, 92, 741, 315
    )
    assert plan_view_geometry(2000, 400, letterbox=None, crop=None, output_size=(940, 400)).box == CropBox(
        530, 0, 940, 400
    )
    letterboxed = plan_view_geometry(
        1440, 1080, letterbox=CropBox(0, 240, 1440, 600), crop=(1880, 800), output_size=(940, 400)
    )
    assert letterboxed.box == CropBox(15, 240, 1410, 600)
    view = np.zeros((1110, 1282, 3), np.uint8)
    cv2.circle(view, (641, 555), 200, (255, 255, 255), -1)
    out = apply_geometry(view, geometry)
    rows, cols = np.nonzero(out[..., 0] > 127)
    assert (cols.max() - cols.min()) == pytest.approx(rows.max() - rows.min(), abs=2)  # a circle stays round


def test_apply_geometry_crops_then_resizes():
    view = np.arange(40 * 60, dtype=np.uint16).reshape(40, 60).astype(np.float32)
    geometry = ViewGeometry(CropBox(10, 5, 40, 30), (40, 30))
    np.testing.assert_array_equal(apply_geometry(view, geometry), view[5:35, 10:50])
    assert apply_geometry(view, ViewGeometry(CropBox(10, 5, 40, 30), (20, 15))).shape == (15, 20)
    assert apply_geometry(view, ViewGeometry(CropBox(10, 5, 40, 30), (80, 60))).shape == (60, 80)
    with pytest.raises(ValueError, match="does not lie inside"):
        apply_geometry(view, ViewGeometry(CropBox(30, 0, 40, 30), (40, 30)))


def _warp_error(left: np.ndarray, right: np.ndarray, disparity: np.ndarray, valid: np.ndarray) -> float:
    """Mean error of the right view sampled at x - disparity against the left view, over valid pixels."""
    h, w = disparity.shape
    map_x = np.arange(w, dtype=np.float32)[None, :] - disparity.astype(np.float32)
    map_y = np.repeat(np.arange(h, dtype=np.float32)[:, None], w, axis=1)
    warped = cv2.remap(right, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return float(np.abs(warped.astype(np.float32) - left).mean(axis=2)[valid].mean())


def test_the_same_geometry_on_both_views_keeps_disparity_valid_up_to_its_scale(pairs):
    pair = pairs[2]
    geometry = plan_view_geometry(160, 96, letterbox=CropBox(0, 8, 160, 80), crop=(120, 64), output_size=(60, 32))
    left, right = apply_geometry(pair.left, geometry), apply_geometry(pair.right, geometry)
    # Disparity is a horizontal offset between views: the crop cancels out, only the resize scales it.
    box = geometry.box
    disparity = pair.disparity[box.y : box.y + box.height, box.x : box.x + box.width]
    disparity = cv2.resize(disparity, geometry.output_size, interpolation=cv2.INTER_AREA) * geometry.disparity_scale
    bad = (pair.occluded | pair.sky_mask)[box.y : box.y + box.height, box.x : box.x + box.width]
    bad = cv2.resize(bad.astype(np.float32), geometry.output_size, interpolation=cv2.INTER_AREA) > 0
    valid = ~bad
    assert valid.mean() > 0.4
    scaled = _warp_error(left, right, disparity, valid)
    unscaled = _warp_error(left, right, disparity / geometry.disparity_scale, valid)
    assert scaled < 4.0
    assert scaled < 0.6 * unscaled
