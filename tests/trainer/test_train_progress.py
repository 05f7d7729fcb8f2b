"""fit's progress on stderr: step, loss, samples/s and ETA every `run.log_every` steps; stdout is left alone."""

from __future__ import annotations

import json
import re

from trainer.config import load_train_config
from trainer.train import fit

LINE = re.compile(r"^step (\d+)/(\d+)  loss (\d+\.\d{4})  (\d+\.\d) samples/s  ETA (\d+:\d\d:\d\d)$")


def test_fit_prints_progress_to_stderr_every_log_every_steps(train_root, tmp_path, capsys):
    cfg = load_train_config(
        overrides={
            "data": {"height": 64, "width": 96, "batch_size": 2, "num_workers": 1, "shuffle_buffer": 16},
            "model": {"encoder": "test_convnext", "pose_encoder": "test_resnet"},
            "optim": {"warmup_steps": 2, "max_steps": 5, "lr": 1e-3},
            "run": {"out_dir": str(tmp_path / "run"), "log_every": 2, "eval_batches": 1, "tensorboard": False},
        }
    )
    manifests = [str(train_root / "manifest" / f"{name}.parquet") for name in ("mono", "stereo")]
    fit(manifests, cfg)
    captured = capsys.readouterr()
    assert captured.out == ""
    found = [LINE.match(line) for line in captured.err.splitlines()]
    lines = [m.groups() for m in found if m]
    # The first step (something to see at once), every log_every-th, and the last: as log.jsonl's rows.
    assert [(int(step), int(total)) for step, total, *_ in lines] == [(1, 5), (2, 5), (4, 5), (5, 5)]
    logged = [json.loads(row) for row in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    losses = [f"{row['loss']:.4f}" for row in logged if "loss" in row]
    assert [loss for _, _, loss, _, _ in lines] == losses
    assert lines[-1][-1] == "0:00:00"  # nothing left after the last step
