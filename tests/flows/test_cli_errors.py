"""`depthcurate`'s mistakes: one line on stderr and exit code 2, before Prefect or the driver is imported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from flows.cli import main
from pipeline.config import CurateConfig
from pipeline.schema import SCHEMA_VERSION
from pipeline.sources.catalog import CatalogError

HEADER = "video_id,url,dataset,category\n"


@pytest.fixture
def inputs(tmp_path) -> Path:
    (tmp_path / "good.csv").write_text(HEADER + "a,http://127.0.0.1:9/a.mp4,demo,natural\n")
    (tmp_path / "typo.csv").write_text("video_id,url,datset,category\na,http://127.0.0.1:9/a.mp4,demo,natural\n")
    (tmp_path / "key.yaml").write_text("sample: {fsp: 2}\n")
    (tmp_path / "section.yaml").write_text("sampling: {fps: 2}\n")
    (tmp_path / "syntax.yaml").write_text("sample:\n  fps: 5\n bad: [\n")
    (tmp_path / "a_file").write_text("")
    return tmp_path


# (arguments relative to `inputs`, what the one line must say)
CASES = [
    (["--catalog", "typo.csv"], "unknown column(s) in header: 'datset' (did you mean 'dataset'?)"),
    (["--catalog", "good.csv", "--config", "key.yaml"], "key.yaml: sample.fsp: unknown key; did you mean 'fps'?"),
    (["--catalog", "good.csv", "--config", "section.yaml"], "sampling: unknown key; did you mean 'sample'?"),
    (["--catalog", "good.csv", "--config", "syntax.yaml"], "syntax.yaml:3:2: invalid YAML"),
    (["--catalog", "good.csv", "--config", "missing.yaml"], "cannot read config"),
    (["--catalog", "missing.csv"], "catalog"),
]


def _curate_argv(inputs: Path, args: list[str], root: str = "root") -> list[str]:
    resolved = [str(inputs / a) if a.endswith((".csv", ".yaml")) else a for a in args]
    return ["curate", *resolved, "--data-root", str(inputs / root)]


@pytest.mark.parametrize("args, message", CASES)
def test_a_mistake_is_one_line_and_exit_2(inputs, capsys, args, message):
    assert main(_curate_argv(inputs, args)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("depthcurate: ") and message in err, err
    assert not (inputs / "root").exists()  # nothing ran


def test_a_data_root_that_is_a_file_is_refused(inputs, capsys):
    assert main(_curate_argv(inputs, ["--catalog", "good.csv"], root="a_file")) == 2
    assert capsys.readouterr().err == f"depthcurate: data root {inputs / 'a_file'} is a file, not a directory\n"


def test_a_limit_must_be_a_positive_count(inputs, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([*_curate_argv(inputs, ["--catalog", "good.csv"]), "--limit", "0"])
    assert exit_.value.code == 2 and "--limit: '0' is not a positive integer" in capsys.readouterr().err


def test_each_config_problem_is_one_line(inputs, capsys):
    (inputs / "two.yaml").write_text("sample: {fsp: 2}\nrun: {workrs: 1}\n")
    assert main(_curate_argv(inputs, ["--catalog", "good.csv", "--config", "two.yaml"])) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2 and all(line.startswith(f"depthcurate: {inputs / 'two.yaml'}: ") for line in lines)
    assert "did you mean 'fps'?" in lines[0] and "did you mean 'workers'?" in lines[1]


@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_shows_the_traceback(inputs, where):
    argv = _curate_argv(inputs, ["--catalog", "typo.csv"])
    with pytest.raises(CatalogError, match="did you mean 'dataset'"):
        main(["--debug", *argv] if where == "before" else [*argv, "--debug"])


def test_dedup_without_a_clip_model_is_one_line(tmp_path, capsys):
    description = {"schema_version": SCHEMA_VERSION, "config": CurateConfig().recorded()}
    (tmp_path / "dataset.json").write_text(json.dumps(description))
    assert main(["dedup", "--data-root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "clip.checkpoint" in err and "--config" in err, err


def test_the_checks_run_before_prefect_or_the_driver_is_imported(inputs):
    """In a fresh interpreter: every mistake above is reported while Prefect, torch and the driver are unloaded."""
    argvs = [_curate_argv(inputs, args) for args, _ in CASES]
    code = (
        "import sys; from flows.cli import main\n"
        f"codes = [main(argv) for argv in {argvs!r}]\n"
        "heavy = [m for m in ('prefect', 'torch', 'pipeline.driver', 'pipeline.video.ingest') if m in sys.modules]\n"
        "print(codes, heavy)"
    )
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == f"{[2] * len(CASES)} []"
