"""`python -m trainer`: clear errors before any training starts, and evaluate's table."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from trainer.cli import main, overrides_from
from trainer.config import ConfigError

REPO = Path(__file__).resolve().parent.parent


def test_overrides_parse_yaml_values():
    assert overrides_from(["optim.lr=1e-3", "data.mix={a: 1}", "run.tensorboard=false"]) == {
        "optim": {"lr": 1e-3}, "data": {"mix": {"a": 1}}, "run": {"tensorboard": False}}
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
