"""Tests for the renderer's scene families and varied cameras (`draw_scene`)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from pipeline.synthetic.renderer import (
    FAMILIES,
    SceneSpec,
    camera_pose,
    draw_scene,
    intrinsics,
    render_frames,
)


def _scene(family: str, seed: int = 4) -> SceneSpec:
    # A tilted, rolling, swaying camera at an unusual focal length and height: every pose term is exercised.
    return dataclasses.replace(
        draw_scene(seed, width=96, height=64, fps=5.0, duration_s=1.6, family=family),  # type: ignore[arg-type]
        pitch_deg=8.0,
        roll_amplitude_deg=9.0,
        yaw_amplitude_deg=6.0,
        hfov_deg=55.0,
    )


def _world_points(depth: np.ndarray, k: np.ndarray, pose: np.ndarray) -> np.ndarray:
    """World points (3, N) of the finite-depth pixels."""
    v, u = np.nonzero(np.isfinite(depth))
    rays = np.linalg.inv(k) @ np.stack([u, v, np.ones_like(u)]).astype(np.float64)
    return pose[:3, :3] @ (rays * depth[v, u].astype(np.float64)) + pose[:3, 3:4]


@pytest.mark.parametrize("family", FAMILIES)
def test_depth_agrees_with_the_next_frame(family: str) -> None:
    """Frame 0's depth, moved by the poses into a frame 1.4 s later, matches that frame's depth where both see it."""
    spec = _scene(family)
    frames = list(render_frames(spec))
    first, third = frames[0], frames[-1]
    k = intrinsics(spec)
    points = _world_points(first.depth, k, first.pose)
    to_cam = np.linalg.inv(third.pose)
    cam = to_cam[:3, :3] @ points + to_cam[:3, 3:4]
    u, v = (k @ cam)[:2] / cam[2]
    inside = (cam[2] > 0) & (u > 0) & (u < spec.width - 1) & (v > 0) & (v < spec.height - 1)
    seen = third.depth[np.round(v[inside]).astype(int), np.round(u[inside]).astype(int)].astype(np.float64)
    rel = np.abs(seen - cam[2][inside]) / cam[2][inside]
    assert inside.mean() > 0.3
    # Rounding to the nearest pixel and occlusion edges leave a few large errors; the bulk must agree.
    assert np.median(rel) < 0.01
    assert np.mean(rel < 0.05) > 0.9


@pytest.mark.parametrize("family", FAMILIES)
def test_every_point_lies_on_or_above_the_ground(family: str) -> None:
    frame = next(render_frames(_scene(family)))
    points = _world_points(frame.depth, intrinsics(_scene(family)), frame.pose)
    assert points[1].min() > -1e-3
    assert np.isclose(points[1], 0.0, atol=1e-3).mean() > 0.05  # the ground is in view


def test_corridor_is_closed_and_narrow() -> None:
    frame = next(render_frames(_scene("corridor")))
    points = _world_points(frame.depth, intrinsics(_scene("corridor")), frame.pose)
    assert not frame.sky_mask.any()
    assert np.isfinite(frame.depth).all()
    assert np.abs(points[0]).max() < 2.6  # walls at most 2.5 m from the path
    assert points[1].max() < _scene("corridor").eye_height_m + 2.1  # under the ceiling


def test_terrain_has_objects_at_many_depths_and_sky() -> None:
    frame = next(render_frames(_scene("terrain")))
    points = _world_points(frame.depth, intrinsics(_scene("terrain")), frame.pose)
    raised = points[:, points[1] > 0.05]  # on crates and pillars, not the ground
    assert frame.sky_mask.any()
    assert raised.shape[1] > 0.02 * frame.depth.size
    assert np.ptp(raised[2]) > 10.0


def test_families_differ_for_one_seed() -> None:
    depths = [next(render_frames(_scene(family, seed=2))).depth for family in FAMILIES]
    for i in range(len(depths)):
        for j in range(i + 1, len(depths)):
            assert not np.array_equal(depths[i], depths[j])


def test_draw_scene_is_determined_by_its_seed() -> None:
    assert draw_scene(11) == draw_scene(11)
    first, again = (next(render_frames(draw_scene(11, width=64, height=32, duration_s=0.1))) for _ in range(2))
    assert np.array_equal(first.image, again.image) and np.array_equal(first.depth, again.depth)
    specs = [draw_scene(seed) for seed in range(30)]
    assert {spec.family for spec in specs} == set(FAMILIES)
    assert len({spec.hfov_deg for spec in specs}) == 30 and len({spec.eye_height_m for spec in specs}) == 30
    assert any(spec.roll_amplitude_deg > 0 for spec in specs) and any(spec.pitch_deg < 0 for spec in specs)


def test_pitch_looks_down_and_level_cameras_keep_the_old_pose() -> None:
    level = SceneSpec()
    down = dataclasses.replace(level, pitch_deg=10.0)
    forward = camera_pose(down, 0.0)[:3, 2]  # the optical axis in the world (y up)
    assert forward[1] == pytest.approx(-np.sin(np.radians(10.0)))
    rolled = camera_pose(dataclasses.replace(level, roll_amplitude_deg=5.0), 7.0 / 4)[:3, :3]
    assert np.allclose(rolled.T @ rolled, np.eye(3)) and np.linalg.det(rolled) == pytest.approx(1.0)
    assert np.array_equal(camera_pose(level, 1.3), camera_pose(dataclasses.replace(level, family="terrain"), 1.3))
