"""The deployments of prefect.yaml against a real Prefect server on loopback, run by a real process worker."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pyarrow.parquet as pq
import pytest

REPO = Path(__file__).resolve().parent.parent
PREFECT = str(Path(sys.executable).with_name("prefect"))
pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    port = _free_port()
    home = tmp_path_factory.mktemp("prefect_home")
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PWD": str(REPO)}
    log = open(home / "server.log", "wb")
    proc = subprocess.Popen([PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port), "--no-ui"],
                            env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    try:
        _wait_healthy(port, proc, home / "server.log")
        yield env
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _wait_healthy(port: int, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"prefect server exited early:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError("prefect server did not become healthy within 120 s")


def _prefect(env: dict, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    result = subprocess.run([PREFECT, *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"prefect {' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def deployed(server):
    _prefect(server, "work-pool", "create", "depthcurate", "--type", "process")
    _prefect(server, "--no-prompt", "deploy", "--all")
    return server


@contextlib.contextmanager
def _worker(env: dict, cwd: Path):
    """A process worker that takes one flow run and exits; stopped with SIGINT (it ignores SIGTERM)."""
    worker = subprocess.Popen([PREFECT, "worker", "start", "--pool", "depthcurate", "--run-once"], env=env,
                              cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        yield worker
    finally:
        if worker.poll() is None:
            worker.send_signal(signal.SIGINT)
            worker.wait(timeout=30)


def test_deploy_and_run_the_demo_deployment(deployed, tmp_path):
    env = deployed
    listed = _prefect(env, "deployment", "ls").stdout
    assert all(f"curate/{name}" in listed for name in ("demo", "slowtv", "movies3d")) and "train/default" in listed

    data_root = tmp_path / "data"
    with _worker(env, tmp_path) as worker:
        # --watch exits non-zero unless the flow run completes
        _prefect(env, "deployment", "run", "curate/demo", "--param", f"data_root={data_root}",
                 "--param", "limit=4", "--watch", timeout=420)
        worker.wait(timeout=60)
    description = json.loads((data_root / "dataset.json").read_text())
    assert description["counts"]["videos"] == {"ok": 4}  # limit=4: the four good videos of the demo
    assert pq.read_table(data_root / "manifest" / "demo.parquet").num_rows == description["counts"]["samples"]["demo"]


def test_curate_hands_off_to_the_train_deployment(deployed, tmp_path):
    env = deployed
    data_root, out_dir = tmp_path / "data", tmp_path / "run"
    tiny = ["data.height=64", "data.width=96", "data.batch_size=2", "data.num_workers=0", "optim.max_steps=2",
            "model.encoder=test_convnext", "model.pose_encoder=test_resnet", "run.tensorboard=false"]
    params = {"data_root": str(data_root), "limit": 2, "train": {"out_dir": str(out_dir), "overrides": tiny}}
    with _worker(env, tmp_path) as worker:
        _prefect(env, "deployment", "run", "curate/demo", "--params", json.dumps(params), "--watch", timeout=420)
        worker.wait(timeout=60)
    assert not out_dir.exists()  # the curate run only scheduled training; a worker has to pick it up
    with _worker(env, tmp_path) as worker:
        worker.wait(timeout=420)
        output = worker.stdout.read()
    metrics = json.loads((out_dir / "metrics.json").read_text())
    assert metrics["step"] == 2, output[-3000:]
    assert (out_dir / "checkpoints" / "last.pt").is_file()
    wide = {**env, "COLUMNS": "400"}  # rich truncates table cells to the terminal width
    artifacts = _prefect(wide, "artifact", "ls").stdout
    assert "curate-training" in artifacts and "train-checkpoint" in artifacts and "train-metrics" in artifacts
