"""`python -m trainer`: clear errors before any training starts, and evaluate's table."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from trainer.cli import main, overrides_from
from trainer.config import ConfigError

REPO = Path(__file__).resolve().parents[2]


def test_overrides_parse_yaml_values():
    assert overrides_from(["optim.lr=1e-3", "data.mix={a: 1}", "run.tensorboard=false"]) == {
        "optim": {"lr": 1e-3},
        "data": {"mix": {"a": 1}},
        "run": {"tensorboard": False},
    }
    with pytest.raises(ConfigError):
        overrides_from(["optim.lr"])


def test_fit_errors_are_one_clear_line(train_root, tmp_path, capsys):
    mono = str(train_root / "manifest" / "mono.parquet")
    assert main(["fit", "--manifest", mono, "--set", "optim.learning_rate=1", "--out-dir", str(tmp_path)]) == 2
    assert "learning_rate" in capsys.readouterr().err
    assert main(["fit", "--manifest", str(tmp_path / "nope.parquet"), "--out-dir", str(tmp_path)]) == 2
    assert "does not exist" in capsys.readouterr().err
    empty = tmp_path / "root" / "manifest" / "empty.parquet"
    empty.parent.mkdir(parents=True)
    table = pq.read_table(mono)
    pq.write_table(table.slice(0, 0), empty)
    assert main(["fit", "--manifest", str(empty), "--out-dir", str(tmp_path)]) == 2
    assert "no samples left" in capsys.readouterr().err


def test_module_entry_point_runs():
    result = subprocess.run([sys.executable, "-m", "trainer", "--help"], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0 and "fit" in result.stdout and "predict" in result.stdout


@pytest.mark.slow
def test_the_readme_demo_path_trains_and_evaluates(demo_run, tmp_path):
    """What `make demo` does after curating: a short training, then the metrics table on rendered depth."""
    manifest = str(demo_run / "manifest" / "demo.parquet")
    out_dir = tmp_path / "run"
    tiny = [
        "data.height=64",
        "data.width=96",
        "data.batch_size=2",
        "data.num_workers=0",
        "optim.max_steps=2",
        "model.encoder=test_convnext",
        "model.pose_encoder=test_resnet",
    ]
    command = [
        sys.executable,
        "-m",
        "trainer",
        "fit",
        "--manifest",
        manifest,
        "--config",
        str(REPO / "trainer" / "configs" / "demo.yaml"),
        "--out-dir",
        str(out_dir),
        "--resume",
        *sum((["--set", s] for s in tiny), []),
    ]
    subprocess.run(command, check=True, capture_output=True, cwd=REPO)
    # demo.yaml's eval.ground_truth (relative to the data root) reaches both fit's evaluation and evaluate's.
    summary = json.loads((out_dir / "metrics.json").read_text())
    assert summary["evaluated_against"]["demo/video"] == "rendered_depth"
    assert summary["ground_truth"] == str((demo_run / "demo_sources" / "ground_truth").resolve())
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "trainer",
            "evaluate",
            "--checkpoint",
            str(out_dir / "checkpoints" / "last.pt"),
            "--manifest",
            manifest,
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=True,
    )
    header, *rows = result.stdout.strip().splitlines()
    assert header.split()[:3] == ["source", "abs_rel", "sq_rel"]
    # One row per source with held-out frames: the mono videos against rendered depth (the stereo ones have
    # held-out frames too since the split gap scales with a video's length).
    (row,) = [r for r in rows if r.startswith("demo/video")]
    assert 0 < float(row.split()[1]) < 10
