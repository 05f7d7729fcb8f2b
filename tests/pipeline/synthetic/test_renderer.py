"""Tests for the synthetic canyon renderer and its ffmpeg encoder."""

from __future__ import annotations

import json
import math
import os
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline.synthetic.renderer import (
    MovingObject,
    SceneSpec,
    encode_stereo_video,
    encode_video,
    intrinsics,
    normalized_intrinsics,
    render_frames,
    render_stereo_frames,
    render_stereo_video,
    render_video,
    save_ground_truth,
)

SMALL = SceneSpec(width=160, height=96, fps=10.0, duration_s=1.2, seed=0)


@pytest.fixture(scope="module")
def frames():
    return list(render_frames(SMALL))


def _gray(image: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(image, cv2.COLOR_BGR2GRAY).astype(np.float32)


def _back_project(depth: np.ndarray, k: np.ndarray, pose: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """World points (3, N) of the pixels in mask."""
    v, u = np.nonzero(mask)
    rays = np.linalg.inv(k) @ np.stack([u, v, np.ones_like(u)]).astype(np.float64)
    cam = rays * depth[mask].astype(np.float64)
    return pose[:3, :3] @ cam + pose[:3, 3:4]


def _project(points: np.ndarray, k: np.ndarray, pose: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates (2, N) and camera depth (N,) of world points in a camera-to-world pose."""
    world_to_cam = np.linalg.inv(pose)
    cam = world_to_cam[:3, :3] @ points + world_to_cam[:3, 3:4]
    pix = k @ cam
    return pix[:2] / pix[2], cam[2]


def _probe(path: Path) -> dict:
    out = subprocess.run(
        [
            "ffprobe",
            "-v",
            "error",
            "-count_frames",
            "-select_streams",
            "v:0",
            "-show_entries",
            "stream=width,height,nb_read_frames,codec_name,pix_fmt",
            "-of",
            "json",
            str(path),
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(out)["streams"][0]


def _decode(path: Path, width: int, height: int) -> np.ndarray:
    raw = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(path), "-f", "rawvideo", "-pix_fmt", "bgr24", "-"],
        check=True,
        capture_output=True,
    ).stdout
    return np.frombuffer(raw, np.uint8).reshape(-1, height, width, 3)


# ---------------------------------------------------------------- intrinsics and frames


def test_intrinsics_match_fov_and_normalise():
    k = intrinsics(SMALL)
    assert k.shape == (3, 3)
    assert math.degrees(2 * math.atan(SMALL.width / 2 / k[0, 0])) == pytest.approx(SMALL.hfov_deg)
    assert k[0, 0] == pytest.approx(k[1, 1])
    fx, fy, cx, cy = normalized_intrinsics(SMALL)
    assert (fx, fy) == pytest.approx((k[0, 0] / 160, k[1, 1] / 96))
    assert (cx, cy) == pytest.approx((0.5, 0.5))
    # Normalised intrinsics are resolution-free.
    assert normalized_intrinsics(SceneSpec(width=320, height=192)) == pytest.approx((fx, fy, cx, cy))


def test_frame_count_shapes_and_dtypes(frames):
    assert len(frames) == 12
    for f in frames:
        assert f.image.shape == (96, 160, 3) and f.image.dtype == np.uint8
        assert f.depth.shape == (96, 160) and f.depth.dtype == np.float32
        assert f.sky_mask.shape == (96, 160) and f.sky_mask.dtype == bool
        assert f.pose.shape == (4, 4) and f.pose.dtype == np.float64
        assert f.right_image is None and f.right_depth is None
    assert len(list(render_frames(SceneSpec(width=64, height=32, fps=7.0, duration_s=1.0)))) == 7


def test_poses_are_rigid_and_follow_the_trajectory(frames):
    for i, f in enumerate(frames):
        rot = f.pose[:3, :3]
        np.testing.assert_allclose(rot @ rot.T, np.eye(3), atol=1e-12)
        assert np.linalg.det(rot) == pytest.approx(1.0)
        np.testing.assert_allclose(f.pose[3], [0, 0, 0, 1])
        assert f.pose[:3, 3] == pytest.approx([0.0, 1.5, SMALL.speed_mps * i / SMALL.fps])
        assert f.pose[:3, 2] @ [0, 0, 1] > math.cos(math.radians(SMALL.yaw_amplitude_deg) + 1e-9)
    yaws = [math.atan2(f.pose[0, 2], f.pose[2, 2]) for f in frames]
    assert max(abs(y) for y in yaws) > math.radians(1.0)  # the camera does sway


def test_depth_is_finite_on_surfaces_and_inf_on_sky(frames):
    for f in frames:
        surface = ~f.sky_mask
        assert np.isfinite(f.depth[surface]).all() and (f.depth[surface] > 0).all()
        assert np.isinf(f.depth[f.sky_mask]).all()


def test_sky_is_the_upper_region_and_textureless(frames):
    cy = int(intrinsics(SMALL)[1, 2])
    for f in frames:
        assert f.sky_mask.any()
        assert not f.sky_mask[cy + 1 :].any()  # the ground fills everything below the horizon
        assert f.sky_mask[0, SMALL.width // 2]  # looking up the canyon sees sky
        lap = cv2.Laplacian(_gray(f.image), cv2.CV_32F)
        sky = cv2.erode(f.sky_mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        assert lap[sky].var() < 5.0
        assert lap[-20:, 50:110].var() > 200.0  # near ground is sharp texture


def test_no_sky_closes_the_canyon():
    f = next(render_frames(SceneSpec(width=160, height=96, duration_s=0.1, sky=False)))
    assert not f.sky_mask.any()
    assert np.isfinite(f.depth).all() and (f.depth > 0).all()
    assert cv2.Laplacian(_gray(f.image), cv2.CV_32F)[:20].var() > 50.0  # a textured roof, not a gradient


# ---------------------------------------------------------------- geometry


def test_ground_pixels_back_project_onto_the_ground_plane(frames):
    k = intrinsics(SMALL)
    mask = np.zeros((96, 160), bool)
    mask[-8:, 64:96] = True  # bottom centre: ground, well inside the canyon
    for f in frames[::4]:
        world = _back_project(f.depth, k, f.pose, mask)
        np.testing.assert_allclose(world[1], 0.0, atol=1e-4)


def test_walls_back_project_onto_planes_parallel_to_the_travel_direction(frames):
    """Absolute check of K against the renderer: a wrong fx or cx would tilt or bend the walls."""
    k = intrinsics(SMALL)
    for f in frames[::2]:
        world = _back_project(f.depth, k, f.pose, ~f.sky_mask & (f.depth < 40))
        above_ground = world[:, world[1] > 0.05]
        for side in (1.0, -1.0):
            x = side * above_ground[0][side * above_ground[0] > 0]
            # The canyon wall is the outermost surface on each side; many points must lie exactly on it.
            on_wall = x > x.max() - 1e-3
            assert on_wall.sum() > 150


@pytest.mark.parametrize("start", [0, 3, 7])
def test_depth_reprojects_between_consecutive_frames(frames, start):
    a, b = frames[start], frames[start + 1]
    k = intrinsics(SMALL)
    mask = ~a.sky_mask & (a.depth < 40)
    (u, v), z = _project(_back_project(a.depth, k, a.pose, mask), k, b.pose)
    inside = (u >= 0) & (u <= 159) & (v >= 0) & (v <= 95)
    assert inside.mean() > 0.8
    u, v, z = u[inside], v[inside], z[inside]
    # Frame t+1's own depth at the predicted pixel equals the transformed z, barring occlusion edges.
    rounded = b.depth[np.round(v).astype(int), np.round(u).astype(int)]
    near = cv2.remap(b.depth, u.astype(np.float32)[None], v.astype(np.float32)[None], cv2.INTER_LINEAR)[0]
    rel = np.abs(near - z) / z
    assert np.nanmedian(rel) < 1e-3
    assert np.mean(rel < 0.01) > 0.95
    assert np.mean(np.abs(rounded - z) / z < 0.05) > 0.95


def test_images_agree_with_the_geometry(frames):
    """Warping frame t+1 back through depth and poses reproduces frame t far better than no warp."""
    a, b = frames[4], frames[5]
    k = intrinsics(SMALL)
    mask = ~a.sky_mask & (a.depth < 40)
    (u, v), _ = _project(_back_project(a.depth, k, a.pose, mask), k, b.pose)
    map_x = np.full(mask.shape, -10, np.float32)
    map_y = np.full(mask.shape, -10, np.float32)
    map_x[mask], map_y[mask] = u, v
    warped = cv2.remap(b.image, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    valid = mask & (map_x >= 0) & (map_x <= 159) & (map_y >= 0) & (map_y <= 95)
    warped_err = np.abs(warped.astype(np.float32) - a.image)[valid].mean()
    identity_err = np.abs(b.image.astype(np.float32) - a.image)[valid].mean()
    assert warped_err < 0.5 * identity_err


def test_right_view_is_shifted_by_the_disparity():
    baseline = 0.3
    spec = SceneSpec(width=160, height=96, duration_s=0.2, seed=1, baseline_m=baseline)
    k = intrinsics(spec)
    for f in render_frames(spec):
        assert f.right_image.shape == f.image.shape and f.right_depth.shape == f.depth.shape
        left, right = _gray(f.image), _gray(f.right_image)
        for v, u in [(85, 80), (75, 60), (90, 100)]:
            z = float(f.depth[v, u])
            assert np.isfinite(z)
            expected = k[0, 0] * baseline / z
            patch = left[v - 4 : v + 5, u - 4 : u + 5]
            costs = [np.abs(right[v - 4 : v + 5, u - d - 4 : u - d + 5] - patch).mean() for d in range(0, 25)]
            assert abs(int(np.argmin(costs)) - expected) <= 1.0  # right view moves left by fx*B/z
            assert f.right_depth[v, int(round(u - expected))] == pytest.approx(z, rel=0.02)


# ---------------------------------------------------------------- determinism


def test_same_spec_renders_identically(frames):
    again = list(render_frames(SMALL))
    for a, b in zip(frames, again):
        np.testing.assert_array_equal(a.image, b.image)
        np.testing.assert_array_equal(a.depth, b.depth)
        np.testing.assert_array_equal(a.pose, b.pose)


def test_different_seeds_render_different_scenes(frames):
    other = next(render_frames(SceneSpec(width=160, height=96, duration_s=0.1, seed=1)))
    diff = np.abs(frames[0].image.astype(np.int16) - other.image).mean()
    assert diff > 15.0
    # A coarse perceptual hash (8x8 mean-thresholded) differs as well.
    hashes = [cv2.resize(_gray(img), (8, 8), interpolation=cv2.INTER_AREA) for img in (frames[0].image, other.image)]
    bits = [h > h.mean() for h in hashes]
    assert (bits[0] != bits[1]).sum() >= 8


# ---------------------------------------------------------------- encoding


@pytest.mark.parametrize(("codec", "name"), [("h264", "clip.mp4"), ("mpeg4", "clip.mkv"), ("vp9", "clip.webm")])
def test_encode_video_is_readable_with_right_size_and_count(frames, tmp_path, codec, name):
    path = encode_video((f.image for f in frames), tmp_path / name, SMALL.fps, codec=codec)
    assert path == tmp_path / name
    info = _probe(path)
    assert (info["width"], info["height"]) == (160, 96)
    assert int(info["nb_read_frames"]) == len(frames)
    assert info["pix_fmt"] == "yuv420p"
    assert info["codec_name"] == codec
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # no temp file left behind


@pytest.mark.parametrize(("codec", "name"), [("h264", "a.mp4"), ("mpeg4", "a.avi")])
def test_encode_video_is_byte_identical_across_runs(frames, tmp_path, codec, name):
    images = [f.image for f in frames]
    first = encode_video(images, tmp_path / f"1{name}", SMALL.fps, codec)
    second = encode_video(images, tmp_path / f"2{name}", SMALL.fps, codec)
    assert first.read_bytes() == second.read_bytes()


def test_encoded_frames_resemble_the_renders(frames, tmp_path):
    path = encode_video([f.image for f in frames], tmp_path / "c.mp4", SMALL.fps)
    decoded = _decode(path, 160, 96)
    assert decoded.shape[0] == len(frames)
    assert np.abs(decoded[5].astype(np.int16) - frames[5].image).mean() < 6.0


def test_encode_video_rejects_bad_input(tmp_path):
    odd = [np.zeros((95, 160, 3), np.uint8)]
    with pytest.raises(ValueError, match="even"):
        encode_video(odd, tmp_path / "odd.mp4", 10.0)
    with pytest.raises(ValueError):
        encode_video([], tmp_path / "empty.mp4", 10.0)
    with pytest.raises(ValueError, match="codec"):
        encode_video([np.zeros((96, 160, 3), np.uint8)], tmp_path / "x.mp4", 10.0, codec="nope")
    mixed = [np.zeros((96, 160, 3), np.uint8), np.zeros((64, 64, 3), np.uint8)]
    with pytest.raises(ValueError):
        encode_video(mixed, tmp_path / "mixed.mp4", 10.0)
    assert list(tmp_path.iterdir()) == []


def test_ffmpeg_failure_raises_with_its_stderr(tmp_path):
    frame = np.zeros((96, 160, 3), np.uint8)
    with pytest.raises(RuntimeError, match="ffmpeg") as info:
        encode_video([frame], tmp_path / "clip.notacontainer", 10.0)
    assert "notacontainer" in str(info.value) or "format" in str(info.value).lower()
    assert list(tmp_path.iterdir()) == []


def test_encode_video_replaces_existing_file(frames, tmp_path):
    target = tmp_path / "clip.mp4"
    target.write_bytes(b"stale")
    encode_video([f.image for f in frames[:2]], target, SMALL.fps)
    assert int(_probe(target)["nb_read_frames"]) == 2
    assert os.stat(target).st_mode & 0o044  # readable by others, unlike a mkstemp file


def test_render_video_with_cut_has_a_hard_cut(tmp_path):
    spec = SceneSpec(width=160, height=96, fps=10.0, duration_s=0.8, seed=0)
    other = SceneSpec(width=160, height=96, fps=10.0, duration_s=0.5, seed=3)
    path = render_video(spec, tmp_path / "cut.mp4", cut_to=other)
    decoded = _decode(path, 160, 96)
    assert len(decoded) == 8 + 5
    # Compare coarse thumbnails: full-resolution texture moves too much frame to frame to show the cut.
    thumbs = np.stack([cv2.resize(_gray(f), (16, 16), interpolation=cv2.INTER_AREA) for f in decoded])
    steps = np.abs(np.diff(thumbs, axis=0)).mean(axis=(1, 2))
    assert int(np.argmax(steps)) == 7  # between frame 7 (spec) and frame 8 (cut_to)
    assert steps[7] > 3 * np.delete(steps, 7).max()
    with pytest.raises(ValueError):
        render_video(spec, tmp_path / "bad.mp4", cut_to=SceneSpec(width=64, height=32))


def test_render_video_mpeg4_mkv(tmp_path):
    spec = SceneSpec(width=160, height=96, fps=10.0, duration_s=0.5)
    info = _probe(render_video(spec, tmp_path / "v.mkv", codec="mpeg4"))
    assert int(info["nb_read_frames"]) == 5 and info["codec_name"] == "mpeg4"


# ---------------------------------------------------------------- ground truth file


def test_save_ground_truth_round_trips(frames, tmp_path):
    path = save_ground_truth(SMALL, tmp_path / "gt.npz")
    assert path == tmp_path / "gt.npz"
    with np.load(path) as gt:
        assert gt["depth"].shape == (12, 96, 160)
        assert gt["poses"].shape == (12, 4, 4)
        assert gt["sky"].shape == (12, 96, 160) and gt["sky"].dtype == bool
        np.testing.assert_allclose(gt["K"], intrinsics(SMALL))
        np.testing.assert_array_equal(gt["sky"], np.stack([f.sky_mask for f in frames]))
        np.testing.assert_array_equal(gt["poses"], np.stack([f.pose for f in frames]))
        assert "moving" not in gt and "moving_attached" not in gt  # no objects: the npz is as before
        depth = gt["depth"].astype(np.float32)
        # Grazing hits near the vanishing point can exceed float16's range and saturate.
        expected = np.minimum(np.stack([f.depth for f in frames]), np.finfo(np.float16).max)
        assert np.isinf(depth[gt["sky"]]).all()
        surface = ~gt["sky"]
        np.testing.assert_allclose(depth[surface], expected[surface], rtol=2e-3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gt.npz"]


def test_save_ground_truth_includes_right_depth_for_stereo(tmp_path):
    spec = SceneSpec(width=64, height=32, duration_s=0.3, baseline_m=0.2)
    with np.load(save_ground_truth(spec, tmp_path / "gt.npz")) as gt:
        assert gt["right_depth"].shape == (3, 32, 64)
        assert float(gt["baseline_m"]) == pytest.approx(0.2)


# ---------------------------------------------------------------- stereo ground truth

STEREO = SceneSpec(width=160, height=96, fps=10.0, duration_s=0.3, seed=0, baseline_m=0.3)
CONVERGENCE = 4.0  # with a 0.3 m baseline, far points (< 4 px of parallax) go negative, the near ground positive


@pytest.fixture(scope="module")
def stereo_pairs():
    return list(render_stereo_frames(STEREO, convergence_px=CONVERGENCE))


def _warp_right_onto_left(pair, dy: float = 0.0) -> np.ndarray:
    """Per-pixel error of the right image sampled at (x - disparity, y + dy) against the left image."""
    h, w = pair.disparity.shape
    map_x = np.arange(w, dtype=np.float32)[None, :] - pair.disparity
    map_y = np.repeat(np.arange(h, dtype=np.float32)[:, None] + dy, w, axis=1)
    warped = cv2.remap(pair.right, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return np.abs(warped.astype(np.float32) - pair.left).mean(axis=2)


def _visible_surface(pair) -> np.ndarray:
    # One pixel of margin around occlusions: bilinear sampling there mixes in the occluder.
    near_occlusion = cv2.dilate(pair.occluded.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    return ~near_occlusion & ~pair.sky_mask


def test_stereo_frames_shapes_and_types(stereo_pairs):
    assert len(stereo_pairs) == 3
    for pair in stereo_pairs:
        assert pair.left.shape == pair.right.shape == (96, 160, 3) and pair.right.dtype == np.uint8
        assert pair.disparity.shape == (96, 160) and pair.disparity.dtype == np.float32
        assert pair.occluded.dtype == bool and pair.sky_mask.dtype == bool
        assert np.isinf(pair.depth[pair.sky_mask]).all() and np.isfinite(pair.disparity).all()


def test_stereo_disparity_sign_and_value(stereo_pairs):
    fx = intrinsics(STEREO)[0, 0]
    for pair in stereo_pairs:
        assert pair.sky_mask.any()
        np.testing.assert_array_equal(pair.disparity[pair.sky_mask], -CONVERGENCE)
        surface = ~pair.sky_mask
        np.testing.assert_allclose(
            pair.disparity[surface], fx * 0.3 / pair.depth[surface] - CONVERGENCE, rtol=1e-5, atol=1e-5
        )
        assert (pair.disparity[-5:] > 0).all()  # the ground right below the camera is near
        assert (pair.disparity[surface] < 0).any()  # far walls and ground lie behind the zero-parallax plane


def test_stereo_disparity_agrees_with_the_images(stereo_pairs):
    for pair in stereo_pairs:
        visible = _visible_surface(pair)
        assert visible.mean() > 0.4
        err = _warp_right_onto_left(pair)[visible]
        # The same lookup without the disparity (pure convergence) shows what a wrong map costs.
        wrong = _warp_right_onto_left(
            type(pair)(
                pair.left,
                pair.right,
                np.full_like(pair.disparity, -CONVERGENCE),
                pair.occluded,
                pair.sky_mask,
                pair.depth,
            )
        )[visible]
        assert err.mean() < 3.0
        assert err.mean() < 0.3 * wrong.mean()


def test_occluded_pixels_are_the_ones_the_right_view_cannot_explain(stereo_pairs):
    for pair in stereo_pairs:
        err = _warp_right_onto_left(pair)
        cols = np.arange(160)[None, :] - pair.disparity
        # Matches that leave the right image, or land on the columns the convergence shift filled by replication.
        outside = (cols < CONVERGENCE) | (cols > 159)
        assert outside.any() and pair.occluded[outside].all()
        # Inside the image, the z-buffer test: something nearer covers these points in the right view
        # (in this canyon mostly sky just above a wall's top edge, which the right view sees as wall).
        hidden = pair.occluded & ~outside
        assert hidden.sum() > 50
        assert err[hidden].mean() > 3.0 * err[_visible_surface(pair)].mean()


def test_convergence_shifts_disparity_and_right_image_only(stereo_pairs):
    plain = next(render_stereo_frames(STEREO))
    pair = stereo_pairs[0]
    np.testing.assert_array_equal(pair.left, plain.left)
    np.testing.assert_allclose(pair.disparity, plain.disparity - CONVERGENCE, atol=1e-5)
    # The right image moved right by the (integer) convergence shift.
    np.testing.assert_array_equal(pair.right[:, 4:], plain.right[:, :-4])
    assert (plain.disparity >= 0).all()


def test_vertical_shift_moves_the_right_image_but_not_the_disparity(stereo_pairs):
    shifted = next(render_stereo_frames(STEREO, convergence_px=CONVERGENCE, vertical_px=3.0))
    pair = stereo_pairs[0]
    np.testing.assert_array_equal(shifted.disparity, pair.disparity)
    np.testing.assert_array_equal(shifted.right[3:], pair.right[:-3])
    assert shifted.occluded[-3:].all()  # rows that leave the right image
    visible = _visible_surface(shifted)
    assert _warp_right_onto_left(shifted, dy=3.0)[visible].mean() < 0.5 * _warp_right_onto_left(shifted)[visible].mean()


def test_zero_baseline_is_a_pure_convergence_shift():
    spec = SceneSpec(width=64, height=32, duration_s=0.1, seed=2)
    pair = next(render_stereo_frames(spec))
    np.testing.assert_array_equal(pair.right, pair.left)
    assert (pair.disparity == 0).all()
    assert (next(render_stereo_frames(spec, convergence_px=2.0)).disparity == -2.0).all()


@pytest.mark.parametrize(
    ("layout", "size"),
    [("sbs_full", (320, 96)), ("sbs_half", (160, 96)), ("tab_full", (160, 192)), ("tab_half", (160, 96))],
)
def test_encode_stereo_video_packs_the_layout(stereo_pairs, tmp_path, layout, size):
    path = encode_stereo_video(stereo_pairs, tmp_path / "s.mp4", STEREO.fps, layout)
    info = _probe(path)
    assert (info["width"], info["height"]) == size
    assert int(info["nb_read_frames"]) == len(stereo_pairs)


def test_render_stereo_video_holds_both_views(stereo_pairs, tmp_path):
    path = render_stereo_video(STEREO, tmp_path / "s.mkv", layout="sbs_full", convergence_px=CONVERGENCE, codec="mpeg4")
    decoded = _decode(path, 320, 96)
    assert decoded.shape[0] == len(stereo_pairs)
    for frame, pair in zip(decoded, stereo_pairs):
        assert np.abs(frame[:, :160].astype(np.int16) - pair.left).mean() < 6.0
        assert np.abs(frame[:, 160:].astype(np.int16) - pair.right).mean() < 6.0


def test_encode_stereo_video_rejects_an_unknown_layout(stereo_pairs, tmp_path):
    with pytest.raises(ValueError, match="unknown stereo layout"):
        encode_stereo_video(stereo_pairs, tmp_path / "s.mp4", STEREO.fps, "mono")
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- independently moving objects

ACROSS = MovingObject(size=(1.0, 1.0, 1.0), centre=(2.0, 0.5, 8.0), velocity=(-2.0, 0.0, 0.0))
ONCOMING = MovingObject(size=(0.8, 1.2, 0.8), centre=(-1.5, 0.6, 14.0), velocity=(0.0, 0.0, -1.0))
WITH_CAMERA = MovingObject(size=(0.8, 0.6, 0.5), centre=(0.6, 0.6, 3.0), attached=True)
MOVING = SceneSpec(width=160, height=96, fps=10.0, duration_s=1.0, seed=0, objects=(ACROSS, ONCOMING, WITH_CAMERA))


@pytest.fixture(scope="module")
def moving_frames():
    plain = SceneSpec(**{**MOVING.__dict__, "objects": ()})
    return list(render_frames(MOVING)), list(render_frames(plain))


def _object_frame(obj: MovingObject, pose: np.ndarray, t_s: float) -> np.ndarray:
    """The object's frame-to-world 4x4 at t_s."""
    if obj.attached:
        return pose
    to_world = np.eye(4)
    to_world[:3, 3] = np.asarray(obj.velocity) * t_s
    return to_world


def test_objects_only_change_the_pixels_their_mask_covers(moving_frames):
    frames, plain = moving_frames
    for frame, base in zip(frames, plain):
        assert frame.object_index.shape == frame.depth.shape and frame.object_index.dtype == np.uint8
        scene = frame.object_index == 0
        np.testing.assert_array_equal(frame.image[scene], base.image[scene])
        np.testing.assert_array_equal(frame.depth[scene], base.depth[scene])
        assert (frame.depth[~scene] < base.depth[~scene]).all()  # an object occludes what lies behind it
        assert not frame.sky_mask[~scene].any()
        assert set(np.unique(frame.object_index)) == {0, 1, 2, 3}  # all three in view in every frame
    assert all(f.object_index is None for f in plain)


def test_object_pixels_back_project_onto_the_moving_box(moving_frames):
    frames, _ = moving_frames
    k = intrinsics(MOVING)
    for i, frame in enumerate(frames):
        for number, obj in enumerate(MOVING.objects, start=1):
            mask = frame.object_index == number
            world = _back_project(frame.depth, k, frame.pose, mask)
            to_world = _object_frame(obj, frame.pose, i / MOVING.fps)
            local = np.linalg.inv(to_world)[:3, :3] @ world + np.linalg.inv(to_world)[:3, 3:4]
            extent = np.abs(local - np.asarray(obj.centre)[:, None]) / (np.asarray(obj.size)[:, None] / 2)
            # On the surface: the largest normalised coordinate is 1 (up to float32 rounding).
            np.testing.assert_allclose(extent.max(axis=0), 1.0, atol=2e-3)


def test_objects_move_where_their_velocity_takes_them(moving_frames):
    frames, _ = moving_frames
    k = intrinsics(MOVING)
    for i, frame in enumerate(frames):
        centre = np.asarray(ACROSS.centre) + np.asarray(ACROSS.velocity) * i / MOVING.fps
        near_face = centre - np.array([0.0, 0.0, ACROSS.size[2] / 2])  # the camera looks down +z
        (u, v), z = _project(near_face[:, None], k, frame.pose)
        u, v = int(round(u[0])), int(round(v[0]))
        assert frame.object_index[v, u] == 1
        assert frame.depth[v, u] == pytest.approx(z[0], rel=0.02)


def test_the_object_attached_to_the_camera_stays_put_in_the_image(moving_frames):
    frames, _ = moving_frames
    first = frames[0].object_index == 3
    assert first.sum() > 100
    for frame in frames[1:]:
        np.testing.assert_array_equal(frame.object_index == 3, first)
        np.testing.assert_array_equal(frame.depth[first], frames[0].depth[first])
        # Its texture is fixed to it, so it looks the same in every frame: photometrically it has no motion.
        np.testing.assert_array_equal(frame.image[first], frames[0].image[first])
    # The world objects do move across the image.
    assert not np.array_equal(frames[0].object_index == 1, frames[-1].object_index == 1)


def test_save_ground_truth_holds_the_moving_masks(moving_frames, tmp_path):
    frames, _ = moving_frames
    with np.load(save_ground_truth(MOVING, tmp_path / "gt.npz")) as gt:
        index = np.stack([f.object_index for f in frames])
        assert gt["moving"].dtype == bool and gt["moving"].shape == (10, 96, 160)
        np.testing.assert_array_equal(gt["moving"], index > 0)
        np.testing.assert_array_equal(gt["moving_attached"], index == 3)
        surface = index > 0
        np.testing.assert_allclose(
            gt["depth"].astype(np.float32)[surface], np.stack([f.depth for f in frames])[surface], rtol=1e-3
        )
