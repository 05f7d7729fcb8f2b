"""Camera geometry: intrinsics, poses, projection round trips, and view synthesis on exact ground truth."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline.synthetic.renderer import SceneSpec, intrinsics, normalized_intrinsics, render_frames
from trainer.geometry import (
    backproject,
    intrinsics_matrix,
    pose_vec_to_matrix,
    project,
    rotation_from_axisangle,
    warp,
)
from trainer.losses import photometric_error

H, W = 24, 32


def _k(batch: int = 1) -> torch.Tensor:
    return intrinsics_matrix(torch.tensor([[0.9, 1.2, 0.5, 0.45]] * batch), H, W)


def _image(frame) -> torch.Tensor:
    """BGR uint8 HxWx3 -> RGB float [1,3,H,W] in [0, 1]."""
    return torch.from_numpy(frame.image[..., ::-1].astype(np.float32) / 255.0).permute(2, 0, 1)[None]


def _depth(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(array.astype(np.float32))[None, None]


def test_intrinsics_matrix_matches_renderer():
    spec = SceneSpec(width=160, height=96)
    k = intrinsics_matrix(torch.tensor([normalized_intrinsics(spec)], dtype=torch.float64), 96, 160)
    np.testing.assert_allclose(k[0].numpy(), intrinsics(spec), rtol=1e-12, atol=1e-9)


def test_pose_vec_to_matrix_is_a_proper_rotation_and_invert_inverts():
    gen = torch.Generator().manual_seed(0)
    axisangle = torch.randn(5, 3, generator=gen, dtype=torch.float64)
    axisangle[0] = 0.0  # the small-angle branch
    axisangle[1] = 1e-5
    translation = torch.randn(5, 3, generator=gen, dtype=torch.float64)
    m = pose_vec_to_matrix(axisangle, translation)
    r = m[:, :3, :3]
    eye = torch.eye(3, dtype=torch.float64).expand(5, 3, 3)
    torch.testing.assert_close(r @ r.transpose(1, 2), eye)
    torch.testing.assert_close(torch.linalg.det(r), torch.ones(5, dtype=torch.float64))
    torch.testing.assert_close(m[:, :3, 3], translation)
    torch.testing.assert_close(m[:, 3], torch.tensor([[0.0, 0.0, 0.0, 1.0]] * 5, dtype=torch.float64))
    inv = pose_vec_to_matrix(axisangle, translation, invert=True)
    torch.testing.assert_close(inv @ m, torch.eye(4, dtype=torch.float64).expand(5, 4, 4))
    # The axis is a fixed point and the angle is the norm: a quarter turn about z maps x to y.
    quarter = rotation_from_axisangle(torch.tensor([[0.0, 0.0, math.pi / 2]], dtype=torch.float64))
    torch.testing.assert_close(
        quarter[0] @ torch.tensor([1.0, 0, 0], dtype=torch.float64), torch.tensor([0.0, 1, 0], dtype=torch.float64)
    )


def test_rotation_gradient_is_finite_at_zero():
    axisangle = torch.zeros(2, 3, requires_grad=True)
    pose_vec_to_matrix(axisangle, torch.zeros(2, 3)).sum().backward()
    assert torch.isfinite(axisangle.grad).all()


def test_backproject_then_project_identity_returns_the_pixel_grid():
    depth = torch.rand(2, 1, H, W, generator=torch.Generator().manual_seed(1)) * 10 + 0.5
    k = _k(2)
    points = backproject(depth, torch.linalg.inv(k))
    torch.testing.assert_close(points[:, 2], depth.view(2, -1))
    grid, in_front = project(points, k, torch.eye(4).expand(2, 4, 4), H, W)
    v, u = torch.meshgrid(torch.arange(H, dtype=torch.float32), torch.arange(W, dtype=torch.float32), indexing="ij")
    expected = torch.stack([(u + 0.5) / W * 2 - 1, (v + 0.5) / H * 2 - 1], -1).expand(2, H, W, 2)
    torch.testing.assert_close(grid, expected, atol=1e-5, rtol=0)
    assert in_front.all()
    # With align_corners=False that grid samples every pixel exactly at its centre.
    image = torch.rand(2, 3, H, W)
    resampled = F.grid_sample(image, grid, align_corners=False)
    torch.testing.assert_close(resampled, image, atol=1e-4, rtol=0)


def test_warp_marks_out_of_view_and_behind_camera_invalid():
    depth = torch.full((1, 1, H, W), 5.0)
    k = _k()
    # Half a field of view to the side: the left part leaves the source image.
    shift = torch.eye(4)[None].clone()
    shift[0, 0, 3] = 5.0 * 0.5 / 0.9
    _, valid = warp(torch.rand(1, 3, H, W), depth, shift, k)
    assert valid[..., : W // 4].all() and not valid[..., -W // 4 :].any()
    behind = torch.eye(4)[None].clone()
    behind[0, 2, 3] = -10.0
    warped, valid = warp(torch.rand(1, 3, H, W), depth, behind, k)
    assert not valid.any() and torch.isfinite(warped).all()
    # Infinite depth (sky) is invalid rather than NaN.
    warped, valid = warp(torch.rand(1, 3, H, W), torch.full_like(depth, float("inf")), shift, k)
    assert not valid.any() and torch.isfinite(warped).all()


@pytest.fixture(scope="module")
def rendered_pair():
    spec = SceneSpec(width=160, height=96, fps=10.0, duration_s=0.2, seed=0, sky=False)
    target, source = list(render_frames(spec))
    k = torch.from_numpy(intrinsics(spec)).float()[None]
    # Camera-to-world poses: target camera -> world -> source camera.
    t_target_to_source = torch.from_numpy(np.linalg.inv(source.pose) @ target.pose).float()[None]
    return target, source, k, t_target_to_source


def test_warp_with_true_depth_pose_and_intrinsics_reproduces_the_target(rendered_pair):
    target, source, k, transform = rendered_pair
    depth = _depth(target.depth)
    assert torch.isfinite(depth).all()  # sky=False: every pixel hits a surface
    warped, valid = warp(_image(source), depth, transform, k)
    # Occluded pixels: the source sees a nearer surface where the target point lands.
    source_depth_there, _ = warp(_depth(source.depth), depth, transform, k)
    points = backproject(depth, torch.linalg.inv(k))
    z_in_source = (transform[:, :3, :3] @ points + transform[:, :3, 3:])[:, 2].view_as(depth)
    visible = valid & ((source_depth_there - z_in_source).abs() < 0.02 * z_in_source)
    assert visible.float().mean() > 0.85

    def error(d: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
        w, ok = warp(_image(source), d, transform, k)
        return photometric_error(w, _image(target))[where & ok]

    true_error = error(depth, visible)
    identity = photometric_error(_image(source), _image(target)).mean()
    # The renderer point-samples a texture near one texel per pixel, so bilinear resampling leaves a
    # floor; it is far below the unwarped frame and every wrong depth.
    assert true_error.median() < 0.04
    assert true_error.mean() < 0.08
    assert true_error.mean() < 0.3 * identity
    assert true_error.mean() < 0.35 * error(depth * 0.5, valid).mean()
    assert true_error.mean() < 0.6 * error(torch.full_like(depth, float(depth.median())), valid).mean()


def test_warp_with_inverted_transform_fails(rendered_pair):
    """The direction matters: source_to_target in place of target_to_source is clearly worse."""
    target, source, k, transform = rendered_pair
    depth = _depth(target.depth)
    right, ok = warp(_image(source), depth, transform, k)
    wrong, ok_wrong = warp(_image(source), depth, torch.linalg.inv(transform), k)
    e_right = photometric_error(right, _image(target))[ok].mean()
    e_wrong = photometric_error(wrong, _image(target))[ok_wrong].mean()
    assert e_right < 0.5 * e_wrong


def test_warp_backpropagates_to_depth_pose_and_intrinsics():
    """The self-supervised loss trains depth, pose and the learned intrinsics through the warp."""
    gen = torch.Generator().manual_seed(4)
    source = F.avg_pool2d(torch.rand(1, 3, H + 2, W + 2, generator=gen), 3, 1)  # smooth: useful gradients
    depth = torch.full((1, 1, H, W), 4.0, requires_grad=True)
    motion = torch.tensor([[0.01, -0.02, 0.0, 0.1, 0.0, 0.05]], requires_grad=True)
    k_norm = torch.tensor([[0.9, 1.2, 0.5, 0.45]], requires_grad=True)
    transform = pose_vec_to_matrix(motion[:, :3], motion[:, 3:])
    warped, valid = warp(source, depth, transform, intrinsics_matrix(k_norm, H, W))
    assert valid.float().mean() > 0.5
    photometric_error(warped, torch.rand(1, 3, H, W, generator=gen))[valid].mean().backward()
    for grad in (depth.grad, motion.grad, k_norm.grad):
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0
