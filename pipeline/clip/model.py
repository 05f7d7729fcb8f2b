"""open_clip image and text embeddings: one model per process, batched, on the GPU when there is one.

torch and open_clip are imported inside the functions that need them, so a pipeline with `clip.enabled`
off never imports torch.
"""

from __future__ import annotations

import hashlib
import io
import json
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config import ClipConfig
from pipeline.io.storage import sha256_file

_models: dict[str, ClipModel] = {}
_models_lock = threading.Lock()
_registered: set[str] = set()  # architecture files already given to open_clip


class ClipModel:
    """An open_clip model and its preprocessing, from a local checkpoint (or a pretrained tag)."""

    def __init__(self, cfg: ClipConfig) -> None:
        import torch

        from pipeline.torch_compat import ensure_torchvision, resolve_device

        ensure_torchvision()  # open_clip imports torchvision and timm, which fail on a CPU torch without it
        import open_clip

        if not (cfg.checkpoint or cfg.pretrained):
            raise ValueError("clip needs clip.checkpoint (a local weights file) or clip.pretrained (a tag)")
        architecture = _register_architecture(cfg.architecture, cfg.model) if cfg.architecture else None
        if cfg.checkpoint and not Path(cfg.checkpoint).is_file():
            raise FileNotFoundError(
                f"clip.checkpoint {cfg.checkpoint} not found (weights are never downloaded "
                "at run time: give a local file)"
            )
        self.name = cfg.model
        self.pretrained = cfg.pretrained
        self.device = torch.device(resolve_device(cfg.device))
        self.batch_size = cfg.batch_size
        self.decode_workers = cfg.decode_workers
        model, _, preprocess = open_clip.create_model_and_transforms(
            cfg.model, pretrained=cfg.checkpoint or cfg.pretrained, device=self.device
        )
        self.model = model.eval()
        self.preprocess = preprocess
        self.tokenizer = open_clip.get_tokenizer(cfg.model)
        size = model.visual.image_size
        self.image_size = max(size) if isinstance(size, (tuple, list)) else int(size)
        self.logit_scale = float(model.logit_scale.detach().exp().cpu())
        self.amp_dtype = None
        if self.device.type == "cuda" and cfg.amp != "off":
            self.amp_dtype = torch.bfloat16 if cfg.amp == "bf16" else torch.float16
        self.checkpoint_sha256 = sha256_file(cfg.checkpoint) if cfg.checkpoint else None
        # What decides the embeddings: architecture, weights. Device and autocast only perturb the last bits.
        self.model_hash = hashlib.sha256(
            json.dumps(
                {
                    "model": cfg.model,
                    "architecture": architecture,
                    "checkpoint_sha256": self.checkpoint_sha256,
                    "pretrained": cfg.pretrained,
                },
                sort_keys=True,
            ).encode()
        ).hexdigest()[:16]
        self.dim = int(self.embed_texts(["a photo"]).shape[1])

    def describe(self) -> dict[str, Any]:
        """What dataset.json records about the model."""
        return {
            "model": self.name,
            "pretrained": self.pretrained,
            "checkpoint_sha256": self.checkpoint_sha256,
            "model_hash": self.model_hash,
            "embedding_dim": self.dim,
        }

    def embed_jpegs(self, jpegs: Sequence[bytes]) -> np.ndarray:
        """L2-normalised float16 embeddings (N x dim) of JPEG-encoded images, in batches of `batch_size`."""
        out = np.empty((len(jpegs), self.dim), np.float16)
        with ThreadPoolExecutor(self.decode_workers) as pool:  # PIL decodes and resizes without the GIL
            for start in range(0, len(jpegs), self.batch_size):
                chunk = jpegs[start : start + self.batch_size]
                tensors = list(pool.map(self._prepare, chunk))
                out[start : start + len(chunk)] = self._encode_images(tensors)
        return out

    def _prepare(self, jpeg: bytes):
        from PIL import Image

        image = Image.open(io.BytesIO(jpeg))
        # Let libjpeg decode at a reduced scale while both sides stay at least the model's input size.
        image.draft("RGB", (self.image_size, self.image_size))
        return self.preprocess(image.convert("RGB"))

    def _encode_images(self, tensors: list) -> np.ndarray:
        import torch

        batch = torch.stack(tensors).to(self.device)
        with (
            torch.inference_mode(),
            torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None),
        ):
            features = self.model.encode_image(batch)
        return _normalise(features)

    def embed_texts(self, prompts: Sequence[str]) -> np.ndarray:
        """L2-normalised float32 embeddings (N x dim) of text prompts."""
        import torch

        tokens = self.tokenizer(list(prompts)).to(self.device)
        with (
            torch.inference_mode(),
            torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None),
        ):
            features = self.model.encode_text(tokens)
        return _normalise(features).astype(np.float32)


def get_model(cfg: ClipConfig) -> ClipModel:
    """The process-wide model for these settings, built on first use (every worker thread shares it)."""
    key = json.dumps(
        {
            k: getattr(cfg, k)
            for k in (
                "model",
                "checkpoint",
                "pretrained",
                "architecture",
                "device",
                "amp",
                "batch_size",
                "decode_workers",
            )
        },
        sort_keys=True,
    )
    if cfg.checkpoint:  # a replaced checkpoint file is a different model
        stat = Path(cfg.checkpoint).stat() if Path(cfg.checkpoint).is_file() else None
        key += f"|{stat.st_size}:{stat.st_mtime_ns}" if stat else ""
    with _models_lock:
        if key not in _models:
            _models[key] = ClipModel(cfg)
        return _models[key]


def _normalise(features) -> np.ndarray:
    """float16 rows of unit length: normalised in float32, then rounded (half the bytes, ~1e-3 relative error)."""
    array = features.float().cpu().numpy()
    array /= np.maximum(np.linalg.norm(array, axis=1, keepdims=True), 1e-12)
    return array.astype(np.float16)


def _register_architecture(path: str, model: str) -> dict[str, Any]:
    """Give open_clip a model-config JSON; its file stem is the architecture's name and must be `model`."""
    import open_clip

    file = Path(path)
    if file.stem != model:
        raise ValueError(f"clip.architecture {path} defines '{file.stem}' but clip.model is '{model}'")
    try:
        architecture = json.loads(file.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"clip.architecture {path}: not a readable open_clip model config ({exc})") from exc
    if str(file.resolve()) not in _registered:
        open_clip.add_model_config(file)
        _registered.add(str(file.resolve()))
    return architecture


# A ~3.4M-parameter architecture (most of it the token embedding) for tests and benchmarks: no weights to fetch.
TINY_ARCHITECTURE: dict[str, Any] = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


def save_random_checkpoint(
    model: str, path: str | Path, *, architecture: str | Path | None = None, seed: int = 0
) -> Path:
    """Write the state dict of a randomly initialised open_clip `model` to `path` (tests and benchmarks)."""
    import torch

    from pipeline.torch_compat import ensure_torchvision

    ensure_torchvision()
    import open_clip

    if architecture is not None:
        _register_architecture(str(architecture), model)
    torch.manual_seed(seed)
    net = open_clip.create_model(model, pretrained=None)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), path)
    return path
