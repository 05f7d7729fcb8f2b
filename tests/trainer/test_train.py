"""Training end to end on a tiny model: logs, checkpoints, exact resume after a kill, DDP on gloo."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from trainer.checkpoint import load_checkpoint
from trainer.cli import main
from trainer.config import load_train_config
from trainer.evaluate import METRIC_NAMES
from trainer.objective import DepthTraining
from trainer.train import fit, lr_factor

REPO = Path(__file__).resolve().parents[2]
TINY = {
    "data": {"height": 64, "width": 96, "batch_size": 2, "num_workers": 1, "shuffle_buffer": 16},
    "model": {"encoder": "test_convnext", "pose_encoder": "test_resnet"},
    "optim": {"warmup_steps": 2, "max_steps": 4, "lr": 1e-3},
    "run": {"log_every": 1, "checkpoint_every": 2, "eval_batches": 2, "tensorboard": False},
}


def manifests(root: Path) -> list[str]:
    return [str(root / "manifest" / "mono.parquet"), str(root / "manifest" / "stereo.parquet")]


def set_args(overrides: dict, prefix: str = "") -> list[str]:
    args = []
    for key, value in overrides.items():
        if isinstance(value, dict):
            args += set_args(value, f"{prefix}{key}.")
        else:
            args += ["--set", f"{prefix}{key}={json.dumps(value)}"]
    return args


def fit_command(root: Path, out_dir: Path, *extra: str, max_steps: int = 4) -> list[str]:
    return [
        sys.executable,
        "-m",
        "trainer",
        "fit",
        *sum((["--manifest", m] for m in manifests(root)), []),
        "--out-dir",
        str(out_dir),
        *set_args(TINY),
        "--set",
        f"optim.max_steps={max_steps}",
        *extra,
    ]


def log_rows(out_dir: Path) -> list[dict]:
    path = out_dir / "log.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def manifest_args(root: Path) -> list[str]:
    return sum((["--manifest", m] for m in manifests(root)), [])


def test_fit_logs_checkpoints_and_evaluates(train_root, tmp_path, capsys):
    overrides = {
        **TINY,
        "run": {**TINY["run"], "out_dir": str(tmp_path / "run"), "tensorboard": True, "eval_every": 2},
        "eval": {"ground_truth": "ground_truth"},
    }  # relative: from the manifests' data root
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "log.jsonl").write_text(
        '{"step": 7, "loss": 1.0}\n'
    )  # an earlier run's: a fresh fit starts over
    result = fit(manifests(train_root), load_train_config(overrides=overrides))
    rows = log_rows(tmp_path / "run")
    train_rows = [r for r in rows if "loss" in r]
    assert [r["step"] for r in train_rows] == [1, 2, 3, 4]
    assert all(r["loss"] == r["loss"] and r["loss"] > 0 for r in train_rows)
    assert {r["kind"] for r in train_rows} <= {"video", "stereo"}
    assert train_rows[0]["lr"] < train_rows[-1]["lr"]  # warmup
    assert result["step"] == 4 and "stereo/stereo" in result["metrics"]
    assert 0 <= result["metrics"]["stereo/stereo"]["a1"] <= 1
    state = load_checkpoint(result["checkpoint"])
    assert state["step"] == 4 and state["batches"] == 4
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))
    model, cfg = DepthTraining.from_checkpoint(result["checkpoint"])
    assert cfg.model.encoder == "test_convnext"
    assert model.predict_disparity(torch.rand(1, 3, 64, 96)).shape == (1, 1, 64, 96)

    # Held-out video frames are scored against the rendered depth, beside the stereo disparity, every
    # eval_every steps and at the end; metrics.json says which reference each source was scored on.
    summary = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert summary["step"] == 4 and summary["ground_truth"] == str(train_root / "ground_truth")
    assert summary["evaluated_against"] == {"mono/video": "rendered_depth", "stereo/stereo": "stereo_disparity"}
    depth = summary["metrics"]["mono/video"]
    assert set(depth) == set(METRIC_NAMES) and all(math.isfinite(v) for v in depth.values())
    assert depth["abs_rel"] > 0 and 0 <= depth["a1"] <= 1
    assert [r["step"] for r in rows if "eval/mono/video/abs_rel" in r] == [2, 4]
    # `trainer evaluate` is the same pass: on the same batches it finds the same numbers, and it takes the
    # ground truth from the checkpoint's config when --ground-truth is not given.
    capsys.readouterr()
    assert (
        main(
            [
                "evaluate",
                "--checkpoint",
                result["checkpoint"],
                *manifest_args(train_root),
                "--max-batches",
                str(TINY["run"]["eval_batches"]),
                "--device",
                "cpu",
                "--json",
            ]
        )
        == 0
    )
    printed = json.loads(capsys.readouterr().out)
    assert printed["mono/video"] == pytest.approx(depth, rel=1e-5)
    assert printed["stereo/stereo"] == pytest.approx(summary["metrics"]["stereo/stereo"], rel=1e-5)
    # Resumed with nothing left to train (what a second `make demo` does): the checkpoint is not rewritten.
    checkpoint = Path(result["checkpoint"])
    written = (checkpoint.stat().st_mtime_ns, checkpoint.read_bytes())
    again = fit(manifests(train_root), load_train_config(overrides=overrides), resume=True)
    assert again["step"] == 4 and again["metrics"]["mono/video"] == pytest.approx(depth, rel=1e-5)
    assert (checkpoint.stat().st_mtime_ns, checkpoint.read_bytes()) == written


@pytest.mark.parametrize("case", ["missing", "no_npz", "other_videos"])
def test_a_bad_ground_truth_directory_fails_before_training(train_root, tmp_path, capsys, case):
    truth = tmp_path / "truth"
    if case != "missing":
        truth.mkdir()
    if case == "other_videos":
        shutil.copy(train_root / "ground_truth" / "walk.npz", truth / "elsewhere.npz")
    out_dir = tmp_path / "run"
    code = main(
        [
            "fit",
            *manifest_args(train_root),
            "--out-dir",
            str(out_dir),
            *set_args(TINY),
            "--set",
            f"eval.ground_truth={truth}",
        ]
    )
    error = capsys.readouterr().err.strip()
    assert code == 2 and len(error.splitlines()) == 1 and str(truth) in error
    assert {
        "missing": "does not exist",
        "no_npz": "no <video_id>.npz files",
        "other_videos": "no <video_id>.npz for any of the videos",
    }[case] in error
    assert not (out_dir / "log.jsonl").exists() and not (out_dir / "checkpoints").exists()


def test_lr_warms_up_then_decays():
    cfg = load_train_config(overrides={"optim": {"warmup_steps": 4, "decay_steps": [10, 20], "decay_gamma": 0.5}})
    assert [lr_factor(s, cfg) for s in (0, 3, 9, 10, 25)] == [0.25, 1.0, 1.0, 0.5, 0.25]


@pytest.mark.slow
def test_resume_after_kill_matches_an_uninterrupted_run(train_root, tmp_path):
    steps = 10
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    reference = tmp_path / "reference"
    subprocess.run(
        fit_command(train_root, reference, "--set", "run.checkpoint_every=1", max_steps=steps),
        check=True,
        env=env,
        capture_output=True,
        cwd=REPO,
    )
    expected = {r["step"]: r["loss"] for r in log_rows(reference) if "loss" in r}

    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        fit_command(train_root, killed, "--set", "run.checkpoint_every=1", max_steps=steps),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=REPO,
    )
    deadline = time.monotonic() + 300
    while len([r for r in log_rows(killed) if "loss" in r]) < 3 and time.monotonic() < deadline:
        assert proc.poll() is None, "the run ended before it could be killed"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = [r["step"] for r in log_rows(killed) if "loss" in r]
    assert before and before[-1] < steps
    subprocess.run(
        fit_command(train_root, killed, "--resume", "--set", "run.checkpoint_every=1", max_steps=steps),
        check=True,
        env=env,
        capture_output=True,
        cwd=REPO,
    )
    rows = [r for r in log_rows(killed) if "loss" in r]
    assert [r["step"] for r in rows] == list(range(1, steps + 1))  # steps redone after the kill logged once
    for row in rows:  # same batches, same weights: the same losses as never having stopped
        assert row["loss"] == pytest.approx(expected[row["step"]], rel=1e-5, abs=1e-7)


@pytest.mark.slow
def test_two_process_ddp_on_gloo(train_root, tmp_path):
    out_dir = tmp_path / "ddp"
    command = fit_command(train_root, out_dir, max_steps=3)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", *command[1:]]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(torchrun, env=env, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = [r for r in log_rows(out_dir) if "loss" in r]
    assert [r["step"] for r in rows] == [1, 2, 3]  # rank 0 logs alone
    state = load_checkpoint(out_dir / "checkpoints" / "last.pt")
    assert state["step"] == 3 and state["batches"] == 3  # per rank
    assert json.loads(result.stdout[result.stdout.index("{") :])["step"] == 3


@pytest.mark.slow
def test_fit_with_the_literature_options_then_a_spimo_second_stage(train_root, tmp_path):
    """Config to data to objective: AQUANet, explainability, zoom and positional encoding, then SPIMO."""

    def overrides(out: str, steps: int, model: dict, loss: dict, augment: dict) -> dict:
        return {
            **TINY,
            "data": {**TINY["data"], "num_workers": 0, "augment": augment},
            "model": {**TINY["model"], **model},
            "loss": {"scales": 2, **loss},
            "optim": {**TINY["optim"], "max_steps": steps},
            "run": {**TINY["run"], "out_dir": str(tmp_path / out), "eval_batches": 1},
        }

    first = fit(
        manifests(train_root),
        load_train_config(
            overrides=overrides(
                "first",
                2,
                {"disparity_head": "aquanet", "positional_encoding": True},
                {"explainability": {"enabled": True}},
                {"resize_prob": 1.0},
            )
        ),
    )
    rows = [r for r in log_rows(tmp_path / "first") if "loss" in r]
    assert [r["step"] for r in rows] == [1, 2]
    video = [r for r in rows if r["kind"] == "video"]
    assert video and all(0 < r["explainability"] < 1 for r in video)
    assert all(r["loss"] == r["loss"] for r in rows)
    second = fit(
        manifests(train_root),
        load_train_config(
            overrides=overrides(
                "second",
                2,
                {"disparity_head": "aquanet"},
                {"spimo": {"enabled": True, "first_stage_checkpoint": first["checkpoint"], "boost_weight": 0.1}},
                {},
            )
        ),
    )
    rows = [r for r in log_rows(tmp_path / "second") if "loss" in r]
    assert [r["step"] for r in rows] == [1, 2]
    video = [r for r in rows if r["kind"] == "video"]
    assert video and all(0 <= r["moving_fraction"] <= 1 and r["spimo_boost"] >= 0 for r in video)
    model, cfg = DepthTraining.from_checkpoint(second["checkpoint"])
    assert cfg.loss.spimo.enabled and model.spimo_teacher is not None
