"""Pluggable dense optical flow: OpenCV DIS on the CPU by default, torchvision RAFT where a GPU is."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import cv2
import numpy as np

from pipeline.config import OpticalFlowConfig

if TYPE_CHECKING:
    import torch

_DIS_PRESETS = {
    "ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
    "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
    "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
}
_RAFT_MIN_SIZE = 128  # RAFT's correlation pyramid needs feature maps of 16 at 1/8 resolution
_RAFT_MULTIPLE = 8


class FlowBackend(Protocol):
    """BGR uint8 HxWx3 images in; HxWx2 float32 flows (u, v) from first[i] to second[i] out."""

    def __call__(self, first: Sequence[np.ndarray], second: Sequence[np.ndarray]) -> list[np.ndarray]: ...


class DISFlow:
    """OpenCV DIS optical flow on grey images, the embedded CPU default.

    Measured on synthetic canyon stereo pairs at 940x400 (pipeline/synthetic/renderer.py, 3 seeds x 3 frames per
    case, 2 threads), error of u against -disparity on non-sky pixels visible in both views, as
    "mean EPE / % > 1 px / % > 3 px"; disparity ranges 1-9 px (baseline 0.065 m), 2-26 px (0.2 m),
    6-65 px (0.5 m), and -18..6 px (0.2 m, views shifted 20 px, right view 6% brighter, both JPEG q85):

    | preset       | ms   | 1-9 px          | 2-26 px         | 6-65 px          | -18..6 px + JPEG |
    |--------------|------|-----------------|-----------------|------------------|------------------|
    | ultrafast    | 2.6  | 0.14 / 0.1 / 0  | 0.31 / 4.7 / 0  | 0.72 / 21.5 / 3.1 | 0.37 / 7.0 / 0.1 |
    | fast         | 4.7  | 0.10 / 0.0 / 0  | 0.22 / 2.9 / 0  | 0.47 / 10.3 / 1.9 | 0.28 / 4.0 / 0.0 |
    | medium       | 24   | 0.05 / 0.0 / 0  | 0.09 / 0.2 / 0  | 0.18 / 2.0 / 0.1  | 0.12 / 0.5 / 0.0 |
    | fast, fs 1   | 19   | 0.05 / 0.0 / 0  | 0.10 / 0.2 / 0  | 0.20 / 2.2 / 0.1  | 0.13 / 0.5 / 0.0 |
    | medium, fs 0 | ~140 | 0.03 / 0.0 / 0  | 0.05 / 0.1 / 0  | 0.11 / 0.9 / 0.0  | 0.09 / 0.1 / 0.0 |

    "fs" is finest_scale (medium's own is 1, fast's 2; 0 = full resolution). "medium" is the default:
    ultrafast and fast put 3-20% of pixels over 1 px once disparities pass ~25 px, error the 2 px
    left-right check turns into rejected pixels, while finest_scale 0 costs 4-7x for a few tenths of a %.
    `overrides` set DIS parameters by snake_case name, e.g. finest_scale=0, patch_size=8.
    """

    def __init__(self, preset: str = "medium", **overrides: Any) -> None:
        if preset not in _DIS_PRESETS:
            raise ValueError(f"unknown DIS preset {preset!r}; expected one of {', '.join(_DIS_PRESETS)}")
        self.preset = preset
        self.overrides = dict(overrides)
        self._make()  # fail on unknown overrides now, not at the first frame

    def _make(self) -> cv2.DISOpticalFlow:
        dis = cv2.DISOpticalFlow.create(_DIS_PRESETS[self.preset])
        for name, value in self.overrides.items():
            setter = getattr(dis, "set" + "".join(part.capitalize() for part in name.split("_")), None)
            if setter is None:
                raise ValueError(f"unknown DIS parameter {name!r} (e.g. finest_scale, patch_size, patch_stride)")
            setter(value)
        return dis

    def __call__(self, first: Sequence[np.ndarray], second: Sequence[np.ndarray]) -> list[np.ndarray]:
        _check_pairs(first, second)
        # A fresh instance per call: DIS keeps per-call buffers, so one shared object is not thread-safe.
        dis = self._make()
        # stereo_flows passes every view twice (L->R and R->L): convert each array to grey once.
        grey = {id(image): _gray(image) for image in (*first, *second)}
        # The stubs want a flow array to refine; None (allocate a fresh one) is what the binding accepts too.
        return [dis.calc(grey[id(a)], grey[id(b)], None) for a, b in zip(first, second)]  # type: ignore[call-overload]


class RAFTFlow:
    """torchvision RAFT from a local state dict (never downloaded); batched, fp16 autocast on CUDA."""

    def __init__(
        self,
        checkpoint: str | Path,
        *,
        small: bool = False,
        iterations: int = 12,
        device: str = "auto",
        batch_size: int = 8,
    ) -> None:
        import torch

        from pipeline.torch_compat import ensure_torchvision, resolve_device

        ensure_torchvision()
        from torchvision.models.optical_flow import raft_large, raft_small

        if iterations < 1 or batch_size < 1:
            raise ValueError(f"iterations and batch_size must be >= 1, got {iterations} and {batch_size}")
        self.iterations = iterations
        self.batch_size = batch_size
        self.device = torch.device(resolve_device(device))
        model = (raft_small if small else raft_large)(weights=None, progress=False)
        state = _load_state_dict(Path(checkpoint))
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            kind = "raft_small" if small else "raft_large"
            raise ValueError(f"{checkpoint} is not a {kind} state dict (is small={small} right?): {exc}") from exc
        self.model = model.eval().to(self.device)

    def __call__(self, first: Sequence[np.ndarray], second: Sequence[np.ndarray]) -> list[np.ndarray]:
        _check_pairs(first, second)
        flows: dict[int, np.ndarray] = {}
        by_shape: dict[tuple[int, int], list[int]] = defaultdict(list)
        for i, image in enumerate(first):
            by_shape[image.shape[:2]].append(i)  # only same-sized pairs can share a batch
        for indices in by_shape.values():
            for start in range(0, len(indices), self.batch_size):
                chunk = indices[start : start + self.batch_size]
                for i, flow in zip(chunk, self._infer([first[i] for i in chunk], [second[i] for i in chunk])):
                    flows[i] = flow
        return [flows[i] for i in range(len(first))]

    def _infer(self, first: list[np.ndarray], second: list[np.ndarray]) -> list[np.ndarray]:
        import torch
        import torch.nn.functional as F

        height, width = first[0].shape[:2]
        pad_h, pad_w = _pad_amount(height), _pad_amount(width)
        pad = (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2)
        batch = [F.pad(self._tensor(images), pad, mode="replicate") for images in (first, second)]
        use_fp16 = self.device.type == "cuda"
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=torch.float16, enabled=use_fp16):
            flow = self.model(*batch, num_flow_updates=self.iterations)[-1]
        flow = flow[:, :, pad[2] : pad[2] + height, pad[0] : pad[0] + width].float()
        return list(flow.permute(0, 2, 3, 1).cpu().numpy())

    def _tensor(self, images: list[np.ndarray]) -> torch.Tensor:
        """BGR uint8 NHWC list -> RGB float NCHW in [-1, 1], the normalisation RAFT was trained with."""
        import torch

        array = np.stack([_bgr(image)[..., ::-1] for image in images])
        batch = torch.from_numpy(np.ascontiguousarray(array)).to(self.device).permute(0, 3, 1, 2)
        return batch.float() / 127.5 - 1.0


def make_flow_backend(cfg: OpticalFlowConfig) -> FlowBackend:
    """The backend cfg names: DIS with its preset, or RAFT from cfg.raft_checkpoint."""
    if cfg.backend == "dis":
        overrides = {"finest_scale": cfg.dis_finest_scale, "patch_size": cfg.dis_patch_size}
        return DISFlow(cfg.dis_preset, **{name: value for name, value in overrides.items() if value is not None})
    if cfg.backend == "raft":
        if not cfg.raft_checkpoint:
            raise ValueError(
                "flow backend 'raft' needs flow.raft_checkpoint: a local RAFT state-dict file "
                "(weights are never downloaded at run time)"
            )
        return RAFTFlow(
            cfg.raft_checkpoint,
            small=cfg.raft_small,
            iterations=cfg.raft_iterations,
            device=cfg.device,
            batch_size=cfg.batch_size,
        )
    raise ValueError(f"unknown flow backend {cfg.backend!r}")


def stereo_flows(
    backend: FlowBackend, lefts: Sequence[np.ndarray], rights: Sequence[np.ndarray]
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(left->right, right->left) flows of each pair, from one backend call so RAFT batches both."""
    if len(lefts) != len(rights):
        raise ValueError(f"{len(lefts)} left views but {len(rights)} right views")
    flows = backend([*lefts, *rights], [*rights, *lefts])
    n = len(lefts)
    return flows[:n], flows[n:]


def _load_state_dict(path: Path) -> dict[str, Any]:
    """A state dict from path, unwrapping {'state_dict': ...} / {'model': ...} and DataParallel 'module.' keys."""
    import torch

    if not path.is_file():
        raise FileNotFoundError(
            f"RAFT checkpoint {path} does not exist (a local state-dict file is required; weights are never downloaded)"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and weights-only errors all mean "not a usable checkpoint"
        raise ValueError(f"cannot read RAFT checkpoint {path}: {exc}") from exc
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ValueError(f"RAFT checkpoint {path} holds a {type(state).__name__}, not a state dict")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def _pad_amount(size: int) -> int:
    target = max(_RAFT_MIN_SIZE, -(-size // _RAFT_MULTIPLE) * _RAFT_MULTIPLE)
    return target - size


def _check_pairs(first: Sequence[np.ndarray], second: Sequence[np.ndarray]) -> None:
    if len(first) != len(second):
        raise ValueError(f"{len(first)} first images but {len(second)} second images")
    for i, (a, b) in enumerate(zip(first, second)):
        if a.shape[:2] != b.shape[:2]:
            raise ValueError(f"pair {i}: image sizes differ, {a.shape[:2]} and {b.shape[:2]}")


def _gray(image: np.ndarray) -> np.ndarray:
    return image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)


def _bgr(image: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR) if image.ndim == 2 else image
