"""Checkpoint files: written atomically, enough to resume exactly or to run the model alone.

Pure I/O of the file's dict; building a model from one is `DepthTraining.from_checkpoint`'s job.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.io.storage import atomic_path
from trainer.config import TrainConfig
from trainer.integrity import BadSampleCounts

FORMAT = 1


def save_checkpoint(
    path: str | Path,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    step: int,
    batches: int,
    cfg: TrainConfig,
    metrics: dict | None = None,
    bad_samples: BadSampleCounts | None = None,
) -> Path:
    """Everything a resumed run needs: weights, optimiser, scheduler, step, data position, RNG states and the bad
    samples met so far (so data.max_bad_samples counts across a resume)."""
    state = {
        "format": FORMAT,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "step": step,
        "batches": batches,  # rank-local batches consumed: the data position
        "config": cfg.model_dump(mode="json"),
        "rng": {
            "torch": torch.get_rng_state(),
            "numpy": np.random.get_state(),
            "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        },
        "metrics": metrics or {},
        "bad_samples": (bad_samples or BadSampleCounts()).to_state(),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The dict save_checkpoint wrote, tensors on map_location; anything else is a ValueError."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    state = torch.load(path, map_location=map_location, weights_only=False)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path} is not a depthcurate trainer checkpoint (format {FORMAT})")
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Put back the RNG states a checkpoint recorded (CUDA's only where CUDA is there to take them)."""
    rng = state["rng"]
    torch.set_rng_state(rng["torch"])
    np.random.set_state(rng["numpy"])
    random.setstate(rng["python"])
    if rng.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
