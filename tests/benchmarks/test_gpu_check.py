"""benchmarks/gpu_check.py in its CPU tiny mode, as CI runs it: every part runs, the GPU ones say why not."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow  # about 30 s on 2 cores: a dataset to render and curate, and a torchrun child
def test_gpu_check_tiny_on_the_cpu(tmp_path):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    out = tmp_path / "gpu_check.json"
    command = [sys.executable, "-m", "benchmarks.gpu_check", "--tiny", "--workdir", str(tmp_path / "work")]
    done = subprocess.run([*command, "--out", str(out)], env=env, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert json.loads(done.stdout) == result  # printed and written alike

    assert result["device"] == "cpu" and result["gpu"] is None and result["sizes"] == "tiny"
    assert result["errors"] == []
    assert {"slowtv_size", "bf16_on_cuda", "peak_gpu_memory", "nccl"} <= set(result["skipped"])
    assert all("no CUDA" in why for why in result["skipped"].values())
    assert result["dataset"]["frames"] > 0

    fit = result["fit"]
    assert fit["steps"] == 2 and len(fit["losses"]) == 2 and fit["losses_finite"]
    assert all(math.isfinite(x) and x > 0 for x in fit["losses"])
    assert fit["config"] == {
        "size": "64x96",
        "batch_size": 2,
        "encoder": "test_convnext",
        "pose_encoder": "test_resnet",
        "precision": "bf16",
        "num_workers": 1,
    }
    assert fit["median_step_s"] > 0 and fit["peak_gpu_memory_gb"] is None
    assert fit["step_samples_per_s"] == pytest.approx(2 / fit["median_step_s"], rel=0.01)
    assert 0 <= fit["disparity_cv_last"] < 10

    loader = result["loader"]
    assert loader["samples_per_s"] > 0 and loader["batches"] == 3
    assert loader["keeps_up"] == (loader["samples_per_s"] >= fit["step_samples_per_s"])

    assert result["raft"]["finite"] and result["raft"]["pairs"] == 2 and result["raft"]["device"] == "cpu"
    assert result["clip"]["finite"] and result["clip"]["frames"] == 8 and result["clip"]["dim"] == 64

    torchrun = result["torchrun"]
    assert torchrun["backend"] == "gloo" and torchrun["world_size"] == 1 and torchrun["returncode"] == 0
    assert torchrun["all_reduce_sum"] == 1.0 and torchrun["steps"] == 2
    assert result["meta"]["argv"][:1] == ["--tiny"]
