"""Depth maps for images or videos from a trained checkpoint (or its weights-only export): 16-bit PNG plus a
colour preview."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import torch

from pipeline.io.storage import write_bytes_atomic
from pipeline.media.codecs import encode_jpeg
from pipeline.media.decode import FrameReader
from pipeline.media.probe import probe_video
from trainer.losses import disp_to_depth
from trainer.objective import DepthTraining

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


def predict_paths(
    checkpoint: str | Path, inputs: list[str | Path], out_dir: str | Path, device: str = "cpu", fps: float | None = None
) -> list[Path]:
    """Write <stem>[_<frame>]_depth.png (uint16 depth, millimetres of the model's relative scale) and
    <stem>[_<frame>]_depth.jpg (colour-mapped disparity) for every image, and video frames at `fps`."""
    model, cfg = DepthTraining.from_checkpoint(checkpoint, device)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, rgb in _frames(inputs, fps):
        disparity = predict_disparity(model, rgb, cfg.data.height, cfg.data.width, device)
        _, depth = disp_to_depth(torch.from_numpy(disparity), cfg.model.min_depth, cfg.model.max_depth)
        depth_mm = np.clip(depth.numpy() * 1000.0, 0, 65535).astype(np.uint16)
        png = cv2.imencode(".png", depth_mm)[1].tobytes()
        write_bytes_atomic(out_dir / f"{name}_depth.png", png)
        write_bytes_atomic(out_dir / f"{name}_depth.jpg", colourise(disparity))
        written.append(out_dir / f"{name}_depth.png")
    return written


def predict_disparity(
    model: DepthTraining, rgb: np.ndarray, height: int, width: int, device: str | torch.device
) -> np.ndarray:
    """Sigmoid disparity at the input's resolution; the network sees the training size (multiples of 32)."""
    src_h, src_w = rgb.shape[:2]
    # Keep the aspect of the input: about height*width pixels, sides snapped to multiples of 32.
    scale = np.sqrt(height * width / (src_h * src_w))
    net_h, net_w = max(32, round(src_h * scale / 32) * 32), max(32, round(src_w * scale / 32) * 32)
    small = cv2.resize(rgb, (net_w, net_h), interpolation=cv2.INTER_AREA)
    tensor = torch.from_numpy(small.transpose(2, 0, 1).copy())[None].float().div(255).to(device)
    with torch.no_grad():
        disparity = model.predict_disparity(tensor)[0, 0].float().cpu().numpy()
    return cv2.resize(disparity, (src_w, src_h), interpolation=cv2.INTER_LINEAR)


def colourise(disparity: np.ndarray) -> bytes:
    low, high = np.percentile(disparity, [1, 99])
    scaled = np.clip((disparity - low) / max(high - low, 1e-6), 0, 1)
    colour = cv2.applyColorMap((scaled * 255).astype(np.uint8), cv2.COLORMAP_INFERNO)
    return encode_jpeg(colour, quality=90)


def _frames(inputs: list[str | Path], fps: float | None) -> Iterator[tuple[str, np.ndarray]]:
    for path in map(Path, inputs):
        if not path.is_file():
            raise FileNotFoundError(f"input {path} does not exist")
        if path.suffix.lower() in IMAGE_SUFFIXES:
            bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if bgr is None:
                raise ValueError(f"cannot decode image {path}")
            yield path.stem, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            continue
        info = probe_video(path)  # the pipeline's decoder: ffmpeg, bounded memory, rotation applied
        reader = FrameReader(path, fps=fps or info.fps, start_s=0.0, end_s=info.duration_s, size=info.display_size)
        for frame in reader:
            yield f"{path.stem}_{frame.index:06d}", cv2.cvtColor(frame.image, cv2.COLOR_BGR2RGB)
