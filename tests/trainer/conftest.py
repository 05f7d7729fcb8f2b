"""Fixtures of the trainer's tests: a tiny checkpoint, saved the way training saves it."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A checkpoint of an untrained tiny model (test encoders, 64x96), with optimiser and scheduler state."""
    import torch

    from trainer.checkpoint import save_checkpoint
    from trainer.config import load_train_config
    from trainer.objective import DepthTraining

    cfg = load_train_config(
        overrides={
            "data": {"height": 64, "width": 96},
            "model": {"encoder": "test_convnext", "pose_encoder": "test_resnet"},
        }
    )
    model = DepthTraining(cfg.model, cfg.loss)
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    path = tmp_path_factory.mktemp("ckpt") / "last.pt"
    return save_checkpoint(path, model=model, optimizer=optimizer, scheduler=scheduler, step=0, batches=0, cfg=cfg)
