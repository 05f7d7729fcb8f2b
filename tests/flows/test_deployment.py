"""The deployments of prefect.yaml against a real Prefect server on loopback, run by a real process worker."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from flows.local_services import PREFECT, deploy_all, prefect_server, stop
from flows.local_services import prefect_cli as _prefect
from flows.local_services import run_deployment as _run_deployment

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A Prefect server (SQLite) on loopback; yields the clients' environment."""
    with prefect_server(tmp_path_factory.mktemp("prefect_home")) as running:
        yield running.env


@pytest.fixture(scope="module")
def demo_deployed(server, tmp_path_factory) -> Path:
    """Every deployment of prefect.yaml registered, and one run of curate/demo; returns its data root."""
    env = server
    deploy_all(env)
    work = tmp_path_factory.mktemp("deployed")
    _run_deployment(env, work, "curate/demo", f"data_root={work / 'data'}", "limit=4")
    return work / "data"


def test_deploy_and_run_the_demo_deployment(server, demo_deployed):
    listed = _prefect(server, "deployment", "ls").stdout
    assert all(f"curate/{name}" in listed for name in ("demo", "slowtv", "movies3d")) and "dedup/default" in listed
    assert "train/default" in listed
    description = json.loads((demo_deployed / "dataset.json").read_text())
    assert description["counts"]["videos"] == {"ok": 4}  # limit=4: the four good videos of the demo
    assert (
        pq.read_table(demo_deployed / "manifest" / "demo.parquet").num_rows == description["counts"]["samples"]["demo"]
    )


def test_dedup_deployment_reruns_the_corpus_pass_from_the_shards(server, demo_deployed, clip_settings, tmp_path):
    config = tmp_path / "clip.yaml"
    config.write_text(json.dumps({"clip": clip_settings}))  # JSON is YAML
    shards = {p: p.read_bytes() for p in sorted((demo_deployed / "shards").rglob("*.parquet"))}
    _run_deployment(
        server, tmp_path, "dedup/default", f"data_root={demo_deployed}", f"config={config}", "epsilon=0.005"
    )
    description = json.loads((demo_deployed / "dataset.json").read_text())
    assert description["clip"]["semdedup"]["epsilon"] == 0.005 and len(description["clip"]["embeddings"]) == 4
    manifest = pq.read_table(demo_deployed / "manifest" / "demo.parquet")
    assert manifest.num_rows == description["counts"]["samples"]["demo"] > 0
    assert manifest.column("clip_tag").null_count == 0
    assert {p: p.read_bytes() for p in sorted((demo_deployed / "shards").rglob("*.parquet"))} == shards


def test_curate_hands_off_to_the_train_deployment(server, demo_deployed, tmp_path):
    data_root, out_dir = tmp_path / "data", tmp_path / "run"
    tiny = [
        "data.height=64",
        "data.width=96",
        "data.batch_size=2",
        "data.num_workers=0",
        "optim.max_steps=2",
        "model.encoder=test_convnext",
        "model.pose_encoder=test_resnet",
        "run.tensorboard=false",
    ]
    train = json.dumps({"out_dir": str(out_dir), "overrides": tiny})
    _run_deployment(server, tmp_path, "curate/demo", f"data_root={data_root}", "limit=2", f"train={train}")
    assert not out_dir.exists()  # the curate run only scheduled training; a worker has to pick it up
    worker = subprocess.Popen(
        [PREFECT, "worker", "start", "--pool", "depthcurate", "--run-once"],
        env=server,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output = worker.communicate(timeout=420)[0]
    metrics = json.loads((out_dir / "metrics.json").read_text())
    assert metrics["step"] == 2, output[-3000:]
    assert (out_dir / "checkpoints" / "last.pt").is_file()
    wide = {**server, "COLUMNS": "400"}  # rich truncates table cells to the terminal width
    artifacts = _prefect(wide, "artifact", "ls").stdout
    assert "curate-training" in artifacts and "train-checkpoint" in artifacts and "train-metrics" in artifacts


def test_a_deployment_runs_on_the_ray_cluster_its_worker_joined(server, demo_deployed, ray_cluster, tmp_path):
    # RAY_ADDRESS is what `ray start --address=...` leaves a cluster node with; "auto" finds the cluster by it.
    env = {**server, "RAY_ADDRESS": ray_cluster, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    run_id = _run_deployment(
        env, tmp_path, "curate/demo", f"data_root={tmp_path / 'data'}", "limit=2", "ray_address=auto"
    )
    description = json.loads((tmp_path / "data" / "dataset.json").read_text())
    assert description["counts"]["videos"] == {"ok": 2}
    logs = _prefect(server, "flow-run", "logs", run_id).stdout
    assert "tasks run on the Ray cluster at auto (2 CPUs, 0 GPUs)" in logs


def test_two_workers_on_one_pool_with_overlapping_runs_end_as_one_clean_run(server, demo_deployed, tmp_path):
    """Two flow runs of curate/demo on one data root, each taken by its own process worker at the same time:
    the leases leave each video to one of them, and the data root ends byte for byte as one clean run's."""
    from flows.local_services import create_flow_run
    from pipeline.synthetic.demo import demo_digest

    data = tmp_path / "data"
    run_ids = [create_flow_run(server, "curate/demo", f"data_root={data}") for _ in range(2)]
    workers: list[tuple[subprocess.Popen, Any]] = []
    try:
        for n in range(2):
            # --run-once --limit 1: a worker takes one run and exits when it is done. The second starts once the
            # first has claimed its run (two polling at once can race for one run and leave the other unclaimed);
            # the demo takes far longer than that wait, so the two runs overlap.
            log = open(tmp_path / f"worker{n}.log", "wb")  # noqa: SIM115 - closed below, after the worker exits
            worker = subprocess.Popen(
                [PREFECT, "worker", "start", "--pool", "depthcurate", "--run-once", "--limit", "1"],
                env=server,
                cwd=tmp_path,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            workers.append((worker, log))
            if n == 0:
                _wait_until_claimed(server, run_ids)
        for run_id in run_ids:
            watched = subprocess.run(
                [PREFECT, "flow-run", "watch", run_id], env=server, capture_output=True, text=True, timeout=420
            )
            assert watched.returncode == 0, watched.stdout[-2000:]
    finally:
        for worker, log in workers:
            try:
                worker.wait(timeout=60)
            finally:
                stop(worker)
                log.close()
    logs = [(tmp_path / f"worker{n}.log").read_text(errors="replace") for n in range(2)]
    assert all(run_id in "".join(logs) for run_id in run_ids)
    assert sum(any(run_id in text for run_id in run_ids) for text in logs) == 2, "one worker took both runs"
    recorded = json.loads((Path(__file__).parents[1] / "pipeline" / "synthetic" / "demo_digest.json").read_text())
    assert demo_digest(data) == recorded
    assert not list(data.rglob(".*.tmp-*")) and not list((data / "state" / "leases").rglob("*.lease"))


def _wait_until_claimed(env: dict[str, str], run_ids: list[str], timeout_s: float = 180) -> None:
    """Until a worker has taken one of `run_ids` (its state is no longer SCHEDULED)."""
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        runs = [json.loads(_prefect(env, "flow-run", "inspect", run_id, "-o", "json").stdout) for run_id in run_ids]
        if any(run["state_type"] != "SCHEDULED" for run in runs):
            return
        time.sleep(1.0)
    raise AssertionError(f"no worker took any of {run_ids} within {timeout_s:.0f} s")
