"""Tests for the torchvision import shim."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from pipeline.torch_compat import _nms, ensure_torchvision

BOXES = torch.tensor(
    [
        [0.0, 0.0, 10.0, 10.0],
        [1.0, 1.0, 11.0, 11.0],  # IoU with box 0 = 81/119 = 0.68
        [20.0, 20.0, 30.0, 30.0],
        [0.0, 0.0, 10.0, 5.0],  # IoU with box 0 = 0.5 exactly: kept at threshold 0.5 (suppression is IoU > t)
    ]
)
SCORES = torch.tensor([0.9, 0.95, 0.5, 0.8])


def test_torchvision_imports_and_nms_is_right():
    ensure_torchvision()
    import torchvision

    keep = torchvision.ops.nms(BOXES, SCORES, 0.5)
    assert keep.dtype == torch.long
    # Box 1 (highest score) suppresses box 0 (IoU 0.68); box 3's IoU with box 1 is 0.35; box 2 is apart.
    assert keep.tolist() == [1, 3, 2]
    assert torchvision.ops.nms(BOXES, SCORES, 0.7).tolist() == [1, 0, 3, 2]
    assert torchvision.ops.nms(BOXES[:0], SCORES[:0], 0.5).numel() == 0
    # batched_nms goes through the same op: boxes of different classes never suppress each other.
    assert sorted(torchvision.ops.batched_nms(BOXES, SCORES, torch.tensor([0, 1, 0, 0]), 0.5).tolist()) == [0, 1, 2, 3]


def test_ensure_torchvision_is_idempotent():
    first = ensure_torchvision()
    second = ensure_torchvision()
    assert first == second
    import torchvision

    assert torchvision.ops.nms(BOXES, SCORES, 0.5).tolist() == [1, 3, 2]


def test_raft_small_builds():
    ensure_torchvision()
    from torchvision.models.optical_flow import raft_small

    model = raft_small(weights=None).eval()  # RAFT needs inputs of at least 128x128
    with torch.no_grad():
        flows = model(torch.rand(1, 3, 128, 128) * 2 - 1, torch.rand(1, 3, 128, 128) * 2 - 1, num_flow_updates=1)
    assert flows[-1].shape == (1, 2, 128, 128)


def test_fallback_nms_matches_a_reference():
    # The fallback kernel is tested directly too, so the test means something where the native ops load.
    gen = torch.Generator().manual_seed(0)
    xy = torch.rand(200, 2, generator=gen) * 100
    boxes = torch.cat([xy, xy + 5 + torch.rand(200, 2, generator=gen) * 30], dim=1)
    scores = torch.rand(200, generator=gen)
    keep = _nms(boxes, scores, 0.3)
    assert keep.tolist() == _reference_nms(boxes, scores, 0.3)
    assert _nms(boxes, scores, 1.0).numel() == 200  # IoU is never > 1
    with pytest.raises(RuntimeError, match="4 columns"):
        _nms(boxes[:, :3], scores, 0.3)


def test_fresh_interpreter_imports_torchvision():
    # ensure_torchvision must work as the first thing a process does, and a plain import after it too.
    code = (
        "from pipeline.torch_compat import ensure_torchvision; native = ensure_torchvision(); "
        "import torch, torchvision; from torchvision.models.optical_flow import raft_small; "
        "print(native, torchvision.ops.nms("
        "torch.tensor([[0., 0, 1, 1], [0, 0, 1, 1]]), torch.tensor([1., 2]), 0.5).tolist())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split()[-1] == "[1]"


def _reference_nms(boxes: torch.Tensor, scores: torch.Tensor, threshold: float) -> list[int]:
    def iou(a, b):
        w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        inter = w * h
        return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)

    keep: list[int] = []
    for i in sorted(range(len(scores)), key=lambda j: -float(scores[j])):
        if all(iou(boxes[i].tolist(), boxes[k].tolist()) <= threshold for k in keep):
            keep.append(i)
    return keep
