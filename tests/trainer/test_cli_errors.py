"""`python -m trainer`'s mistakes: one line on stderr and exit code 2, found before torch is imported."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from trainer.cli import _parser, main


@pytest.fixture
def files(tmp_path) -> Path:
    (tmp_path / "notes.parquet").write_text("not parquet")
    (tmp_path / "not_a_checkpoint.pt").write_bytes(b"\x80\x04 a pickle, not a torch archive")
    with zipfile.ZipFile(tmp_path / "archive.pt", "w") as archive:  # passes the cheap check; never loaded here
        archive.writestr("archive/data.pkl", b"")
    (tmp_path / "key.yaml").write_text("optim: {max_step: 3}\n")
    (tmp_path / "syntax.yaml").write_text("optim:\n  lr: [1\n")
    return tmp_path


# (arguments, with {d} the files' directory; what the one line says)
CASES = [
    ("fit --manifest {d}/missing.parquet", "manifest {d}/missing.parquet does not exist"),
    ("fit --manifest {d}/notes.parquet", "manifest {d}/notes.parquet is not a Parquet file"),
    (
        "fit --manifest {d}/notes.parquet --config {d}/key.yaml",
        "optim.max_step: unknown key; did you mean 'max_steps'?",
    ),
    ("fit --manifest {d}/notes.parquet --config {d}/syntax.yaml", "syntax.yaml:3:1: invalid YAML"),
    (
        "fit --manifest {d}/notes.parquet --set data.bach_size=2",
        "data.bach_size: unknown key; did you mean 'batch_size'?",
    ),
    ("fit --manifest {d}/notes.parquet --set optim.lr", "--set expects KEY=VALUE"),
    ("evaluate --checkpoint {d}/missing.pt --manifest {d}/notes.parquet", "checkpoint {d}/missing.pt does not exist"),
    ("evaluate --checkpoint {d}/not_a_checkpoint.pt --manifest x", "is not a torch checkpoint file"),
    ("evaluate --checkpoint {d}/archive.pt --manifest {d}/missing.parquet", "missing.parquet does not exist"),
    ("evaluate --checkpoint {d}/archive.pt --manifest {d}/notes.parquet", "is not a Parquet file"),
    ("predict --checkpoint {d}/missing.pt --out {d}/o {d}/notes.parquet", "checkpoint {d}/missing.pt does not exist"),
    ("predict --checkpoint {d}/archive.pt --out {d}/o {d}/photo.jpg", "input {d}/photo.jpg does not exist"),
    ("predict --checkpoint {d}/archive.pt --out {d}/o --fps 0 {d}/notes.parquet", "--fps must be positive"),
    ("export --checkpoint {d}/missing.pt --out {d}/model.pt", "checkpoint {d}/missing.pt does not exist"),
]


def _argv(case: str, directory: Path) -> list[str]:
    return case.format(d=directory).split()


@pytest.mark.parametrize("case, message", CASES)
def test_a_mistake_is_one_line_and_exit_2(files, capsys, case, message):
    assert main(_argv(case, files)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("trainer: ") and message.format(d=files) in err, err
    assert not (files / "o").exists() and not (files / "model.pt").exists()


@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_shows_the_traceback(files, where):
    argv = _argv(CASES[0][0], files)
    with pytest.raises(FileNotFoundError, match="missing.parquet does not exist"):
        main(["--debug", *argv] if where == "before" else [*argv, "--debug"])


def test_every_command_and_argument_has_help(capsys):
    commands = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert set(commands.choices) == {"fit", "evaluate", "predict", "export"}
    for name, command in commands.choices.items():
        assert command.description, name
        assert all(action.help for action in command._actions), name
    with pytest.raises(SystemExit):
        main(["--version"])
    assert "depthcurate" in capsys.readouterr().out


def test_the_checks_run_before_torch_is_imported(files):
    """In a fresh interpreter: every mistake above is reported, and torch was never imported."""
    argvs = [_argv(case, files) for case, _ in CASES]
    code = (
        "import sys; from trainer.cli import main\n"
        f"codes = [main(argv) for argv in {argvs!r}]\n"
        "print(codes, [m for m in ('torch', 'timm', 'cv2') if m in sys.modules])"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=os.environ)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == f"{[2] * len(CASES)} []"
