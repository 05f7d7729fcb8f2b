"""Pinhole camera geometry for view synthesis: intrinsics, poses, back-projection, projection, warping.

Conventions (shared with pipeline/synthetic/renderer.py):
- Camera frame is OpenCV: x right, y down, z forward. Poses are 4x4 and act on column vectors.
- K maps a camera point to integer pixel indices: the centre of pixel (u, v) sits at (u, v), not at
  (u + 0.5, v + 0.5); normalised intrinsics are (fx/W, fy/H, cx/W, cy/H), so cx_pix = cx_norm * W.
- grid_sample is always called with align_corners=False, whose coordinate -1 is the left edge of the
  first pixel and +1 the right edge of the last one. The pixel centre u therefore maps to
  (u + 0.5) / W * 2 - 1, which makes a grid of pixel centres reproduce an image exactly.
- A transform "target_to_source" maps points in the target camera frame to the source camera frame;
  with camera-to-world poses it is inv(pose_source) @ pose_target.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

_MIN_Z = 1e-3  # points nearer than this (metres, or the depth unit) count as behind the camera
_OUTSIDE = -2.0  # a grid_sample coordinate well outside [-1, 1], for points that cannot be projected


def intrinsics_matrix(k_norm: Tensor, height: int, width: int) -> Tensor:
    """[B,4] normalised (fx/W, fy/H, cx/W, cy/H) -> [B,3,3] pixel K for an image of height x width."""
    fx, fy, cx, cy = k_norm.unbind(-1)
    zero, one = torch.zeros_like(fx), torch.ones_like(fx)
    rows = [
        torch.stack([fx * width, zero, cx * width], -1),
        torch.stack([zero, fy * height, cy * height], -1),
        torch.stack([zero, zero, one], -1),
    ]
    return torch.stack(rows, -2)


def rotation_from_axisangle(axisangle: Tensor) -> Tensor:
    """[B,3] axis * angle (radians) -> [B,3,3] rotation matrix by Rodrigues' formula."""
    theta2 = (axisangle * axisangle).sum(-1)
    small = theta2 < 1e-6
    # Safe denominators keep both torch.where branches finite, so gradients at zero stay finite too.
    theta2_safe = torch.where(small, torch.ones_like(theta2), theta2)
    theta = theta2_safe.sqrt()
    a = torch.where(small, 1.0 - theta2 / 6.0, torch.sin(theta) / theta)
    b = torch.where(small, 0.5 - theta2 / 24.0, (1.0 - torch.cos(theta)) / theta2_safe)
    x, y, z = axisangle.unbind(-1)
    zero = torch.zeros_like(x)
    skew = torch.stack(
        [
            torch.stack([zero, -z, y], -1),
            torch.stack([z, zero, -x], -1),
            torch.stack([-y, x, zero], -1),
        ],
        -2,
    )
    eye = torch.eye(3, dtype=axisangle.dtype, device=axisangle.device).expand_as(skew)
    return eye + a[:, None, None] * skew + b[:, None, None] * (skew @ skew)


def pose_vec_to_matrix(axisangle: Tensor, translation: Tensor, invert: bool = False) -> Tensor:
    """[B,3] axis-angle and [B,3] translation -> [B,4,4] [R|t]; invert=True returns its exact inverse."""
    rot = rotation_from_axisangle(axisangle)
    t = translation
    if invert:
        # inv([R|t]) = [R^T | -R^T t], as Monodepth2's transformation_from_parameters(invert=True).
        rot = rot.transpose(1, 2)
        t = -(rot @ t.unsqueeze(-1)).squeeze(-1)
    out = torch.zeros(rot.shape[0], 4, 4, dtype=rot.dtype, device=rot.device)
    out[:, :3, :3] = rot
    out[:, :3, 3] = t
    out[:, 3, 3] = 1.0
    return out


def pixel_grid(height: int, width: int, like: Tensor) -> Tensor:
    """[1,3,H*W] homogeneous pixel centres (u, v, 1), row-major, in like's dtype and device."""
    v, u = torch.meshgrid(
        torch.arange(height, dtype=like.dtype, device=like.device),
        torch.arange(width, dtype=like.dtype, device=like.device),
        indexing="ij",
    )
    return torch.stack([u.reshape(-1), v.reshape(-1), torch.ones_like(u).reshape(-1)], 0).unsqueeze(0)


def backproject(depth: Tensor, inv_k: Tensor) -> Tensor:
    """[B,1,H,W] z-depth and [B,3,3] inverse K -> [B,3,H*W] points in the camera frame."""
    b, _, h, w = depth.shape
    rays = inv_k @ pixel_grid(h, w, depth)  # [B,3,HW] with z = 1
    return rays * depth.reshape(b, 1, h * w)


def project_pixels(points: Tensor, k: Tensor, transform: Tensor) -> tuple[Tensor, Tensor]:
    """Transform [B,3,N] points and project with K: ([B,2,N] pixel coords, [B,N] camera-frame z)."""
    cam = transform[:, :3, :3] @ points + transform[:, :3, 3:]
    z = cam[:, 2]
    pix = (k @ cam)[:, :2] / z.clamp(min=_MIN_Z).unsqueeze(1)
    return pix, z


def pixels_to_grid(pix: Tensor, height: int, width: int) -> Tensor:
    """[B,2,H*W] pixel coords -> [B,H,W,2] grid_sample coords (align_corners=False)."""
    b = pix.shape[0]
    scale = torch.tensor([2.0 / width, 2.0 / height], dtype=pix.dtype, device=pix.device).view(1, 2, 1)
    grid = (pix + 0.5) * scale - 1.0
    return grid.view(b, 2, height, width).permute(0, 2, 3, 1)


def project(points: Tensor, k: Tensor, transform: Tensor, height: int, width: int) -> tuple[Tensor, Tensor]:
    """Project [B,3,H*W] points through transform and K: (grid [B,H,W,2] for grid_sample, in_front [B,1,H,W])."""
    pix, z = project_pixels(points, k, transform)
    return _grid_in_front(pix, z, height, width)


def _grid_in_front(pix: Tensor, z: Tensor, height: int, width: int) -> tuple[Tensor, Tensor]:
    ok = (z > _MIN_Z) & torch.isfinite(pix).all(1)
    grid = pixels_to_grid(pix, height, width)
    # Points behind the camera or with infinite depth sample nothing rather than NaN.
    grid = torch.where(ok.view(-1, height, width, 1), grid, torch.full_like(grid, _OUTSIDE))
    return grid, ok.view(-1, 1, height, width)


def warp(source: Tensor, depth: Tensor, transform_target_to_source: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
    """Resample source [B,C,H,W] into the target view given target depth: (warped, valid [B,1,H,W]).

    valid means the point lies in front of the source camera and its bilinear footprint uses only real
    source pixels (pixel coords within [0, W-1] x [0, H-1]); elsewhere the zero padding leaks in.
    """
    _, _, h, w = depth.shape
    points = backproject(depth, torch.linalg.inv(k))
    pix, z = project_pixels(points, k, transform_target_to_source)
    grid, in_front = _grid_in_front(pix, z, h, w)
    warped = F.grid_sample(source, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    u, v = pix[:, 0], pix[:, 1]
    # The tolerance absorbs round-off of K @ inv(K), so border pixels of an identity warp stay valid.
    tol = 1e-3
    inside = (u >= -tol) & (u <= w - 1 + tol) & (v >= -tol) & (v <= h - 1 + tol)
    return warped, in_front & inside.view(-1, 1, h, w)
