"""The `train` flow: torchrun as a subprocess, checkpoint and metrics as artifacts, clear failures."""

from __future__ import annotations

import pytest

from flows.train import TrainingFailed, start_training, torchrun_command, train
from pipeline.io.data_root import DataRoot

TINY = [
    "data.height=64",
    "data.width=96",
    "data.batch_size=2",
    "data.num_workers=0",
    "model.encoder=test_convnext",
    "model.pose_encoder=test_resnet",
    "optim.max_steps=2",
    "optim.warmup_steps=1",
    "run.eval_batches=1",
    "run.tensorboard=false",
]


def test_torchrun_command_passes_everything():
    command = torchrun_command(["a.parquet", "b.parquet"], "c.yaml", "out", 2, ["optim.lr=1"], resume=True)
    assert command[1:4] == ["-m", "torch.distributed.run", "--standalone"]
    assert "--nproc-per-node=2" in command and command[-1] == "--resume"
    assert command.count("--manifest") == 2 and command[-3:-1] == ["--set", "optim.lr=1"]


def test_train_flow_runs_torchrun_and_records_artifacts(prefect_harness, train_root, tmp_path):

    manifests = [str(train_root / "manifest" / "mono.parquet"), str(train_root / "manifest" / "stereo.parquet")]
    result = train(manifests=manifests, config=None, out_dir=str(tmp_path / "run"), overrides=TINY)
    assert result["step"] == 2 and result["checkpoint"].endswith("checkpoints/last.pt")
    assert "stereo/stereo" in result["metrics"]
    again = train(manifests=manifests, config=None, out_dir=str(tmp_path / "run"), overrides=TINY)
    assert again["step"] == 2  # resumed at the end: nothing more to do


def test_train_flow_failure_carries_the_reason(prefect_harness, tmp_path):
    with pytest.raises(TrainingFailed, match="does not exist"):
        train(
            manifests=[str(tmp_path / "manifest" / "x.parquet")],
            config=None,
            out_dir=str(tmp_path / "r"),
            overrides=TINY,
        )


def test_start_training_rejects_unknown_keys(tmp_path):
    with pytest.raises(ValueError, match="unknown keys"):
        start_training(DataRoot(tmp_path), ["demo"], {"epochs": 3})
