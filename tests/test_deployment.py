"""The deployments of prefect.yaml against a real Prefect server on loopback, run by a real process worker."""
from __future__ import annotations

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


def test_deploy_and_run_the_demo_deployment(server, tmp_path):
    env = server
    _prefect(env, "work-pool", "create", "depthcurate", "--type", "process")
    _prefect(env, "--no-prompt", "deploy", "--all")
    listed = _prefect(env, "deployment", "ls").stdout
    assert all(f"curate/{name}" in listed for name in ("demo", "slowtv", "movies3d"))

    data_root = tmp_path / "data"
    worker = subprocess.Popen([PREFECT, "worker", "start", "--pool", "depthcurate", "--run-once"], env=env,
                              cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        # --watch exits non-zero unless the flow run completes
        _prefect(env, "deployment", "run", "curate/demo", "--param", f"data_root={data_root}",
                 "--param", "limit=4", "--watch", timeout=420)
        worker.wait(timeout=60)
    finally:
        if worker.poll() is None:
            worker.send_signal(signal.SIGINT)
            worker.wait(timeout=30)
    description = json.loads((data_root / "dataset.json").read_text())
    assert description["counts"]["videos"] == {"ok": 4}  # limit=4: the four good videos of the demo
    assert pq.read_table(data_root / "manifest" / "demo.parquet").num_rows == description["counts"]["samples"]["demo"]
