"""Checkpoint files: written atomically, enough to resume exactly or to run the model alone.

Two kinds share one format: a training checkpoint (what `fit` saves: everything a resumed run needs) and a
weights-only export of one (`python -m trainer export`: the model's weights and the config that rebuilds it,
without the optimiser's state, about a third of the size). Predict, evaluate and a SPIMO first stage take either.
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
TRAINING, WEIGHTS = "training", "weights"  # the two kinds of file; one without a kind is a training checkpoint


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
        "kind": TRAINING,
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
    return _save(state, path)


def export_weights(checkpoint: str | Path, out: str | Path) -> Path:
    """Write `checkpoint`'s model weights and config (plus its step and metrics, for the record) to `out`,
    atomically: what predict and evaluate need, without the optimiser, scheduler and RNG states."""
    state = load_weights(checkpoint)
    exported = {
        "format": FORMAT,
        "kind": WEIGHTS,
        "model": state["model"],
        "config": state["config"],
        "step": state["step"],
        "metrics": state.get("metrics", {}),
    }
    return _save(exported, out)


def _save(state: dict[str, Any], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The training checkpoint save_checkpoint wrote, tensors on map_location, to resume from; a weights-only
    export, or anything else, is a ValueError."""
    state = load_weights(path, map_location)
    if state.get("kind", TRAINING) != TRAINING:
        raise ValueError(f"{path} is a weights-only export: it runs the model but cannot resume training")
    return state


def load_weights(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A training checkpoint or its weights-only export (both have `model`, `config` and `step`), tensors on
    map_location; anything else is a ValueError."""
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
