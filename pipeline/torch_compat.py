"""Make torchvision importable when its compiled ops cannot load (a CUDA wheel on a CPU-only torch).

torchvision's `_C` extension holds its custom operators (nms, roi_align, ...). When it cannot load, for
example a `+cu130` torchvision next to a `+cpu` torch (it links libc10_cuda.so), `import torchvision`
dies in `_meta_registrations`, which registers fake kernels for `torchvision::nms` and
`torchvision::qnms` unconditionally while every other registration there checks `_has_ops()` first.
Defining those two schemas is the minimum that lets the import finish; `nms` also gets a plain PyTorch
kernel so `torchvision.ops.nms` (and `batched_nms`) work. Every other compiled op (roi_align,
deform_conv2d, ...) still raises torchvision's own "Couldn't load custom C++ ops" error.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import threading
from pathlib import Path

import numpy as np
import torch

_lock = threading.Lock()
_native: bool | None = None  # None until ensure_torchvision has run
# Registrations live as long as their Library object: keep it for the life of the process.
_fallback_lib: torch.library.Library | None = None


def ensure_torchvision() -> bool:
    """Import torchvision, first defining a fallback nms when its compiled ops cannot load; True = native ops."""
    global _native
    with _lock:
        if _native is None:
            native = _has_op("nms") or _load_compiled_ops()
            if not native and not _has_op("nms"):
                _define_fallback_ops()
            import torchvision.ops.boxes

            if not native:
                # boxes.nms refuses to run without the compiled library even though nms now exists;
                # the only other caller in that module (box_iou_rotated) then fails on the missing op.
                torchvision.ops.boxes._assert_has_ops = _ops_present
            _native = native
        return _native


def _has_op(name: str) -> bool:
    return hasattr(torch.ops.torchvision, name)


def _load_compiled_ops() -> bool:
    """Load torchvision's _C library the way torchvision does, without importing torchvision."""
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return False  # not installed: the import that follows raises the usual ModuleNotFoundError
    for directory in spec.submodule_search_locations:
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            path = Path(directory) / f"_C{suffix}"
            if path.is_file():
                try:
                    torch.ops.load_library(str(path))
                except (OSError, RuntimeError):
                    return False
                return _has_op("nms")
    return False


def _define_fallback_ops() -> None:
    global _fallback_lib
    lib = torch.library.Library("torchvision", "FRAGMENT")
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    # qnms needs only its schema so torchvision's fake registration succeeds; calling it has no kernel.
    lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    # CompositeExplicitAutograd covers CPU and CUDA tensors; torchvision itself registers the Meta/fake kernel.
    lib.impl("nms", _nms, "CompositeExplicitAutograd")
    _fallback_lib = lib


def _ops_present() -> None:
    """Stand-in for torchvision's _assert_has_ops once the fallback nms is defined."""


def _nms(dets: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy NMS with torchvision's semantics: drop boxes whose IoU with a kept, higher-scoring box > threshold."""
    if dets.dim() != 2 or dets.size(1) != 4:
        raise RuntimeError(f"boxes should be a 2d tensor with 4 columns, got shape {tuple(dets.shape)}")
    if scores.dim() != 1 or scores.size(0) != dets.size(0):
        raise RuntimeError(f"scores should be 1d with {dets.size(0)} elements, got shape {tuple(scores.shape)}")
    if dets.numel() == 0:
        return torch.empty(0, dtype=torch.long, device=dets.device)
    order = torch.argsort(scores, descending=True, stable=True)
    boxes = dets[order].float()
    x1, y1, x2, y2 = boxes.unbind(1)
    area = (x2 - x1) * (y2 - y1)  # no +1: torchvision's kernels use continuous coordinates
    ix1 = torch.maximum(x1[:, None], x1[None, :])
    iy1 = torch.maximum(y1[:, None], y1[None, :])
    ix2 = torch.minimum(x2[:, None], x2[None, :])
    iy2 = torch.minimum(y2[:, None], y2[None, :])
    inter = (ix2 - ix1).clamp(min=0) * (iy2 - iy1).clamp(min=0)
    overlaps = (inter / (area[:, None] + area[None, :] - inter) > iou_threshold).cpu().numpy()
    # The greedy pass is inherently sequential; one O(N) row update per kept box, on the host.
    suppressed = np.zeros(len(overlaps), dtype=bool)
    keep = []
    for i in range(len(suppressed)):
        if not suppressed[i]:
            keep.append(i)
            suppressed |= overlaps[i]
    return order[torch.tensor(keep, dtype=torch.long, device=order.device)]


def resolve_device(device: str) -> str:
    """ "auto" -> "cuda" when a GPU is visible, else "cpu"; anything else as given."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device
