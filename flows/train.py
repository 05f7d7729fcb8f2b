"""The `train` Prefect flow (torchrun as a subprocess), and the hand-off that starts it after curation."""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_link_artifact, create_table_artifact
from prefect.client.schemas.objects import FlowRun
from prefect.deployments import run_deployment
from prefect.settings import PREFECT_UI_URL

from pipeline.io.data_root import DataRoot
from trainer.manifest import data_root_of

DEFAULT_DEPLOYMENT = "train/default"
REPO = Path(__file__).resolve().parent.parent


class TrainingFailed(RuntimeError):
    pass


def torchrun_command(
    manifests: list[str], config: str | None, out_dir: str, nproc_per_node: int, overrides: list[str], resume: bool
) -> list[str]:
    """`python -m torch.distributed.run ... -m trainer fit ...` for this interpreter."""
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc_per_node}",
        "-m",
        "trainer",
        "fit",
        "--out-dir",
        out_dir,
    ]
    for manifest in manifests:
        command += ["--manifest", manifest]
    if config:
        command += ["--config", config]
    for override in overrides:
        command += ["--set", override]
    return command + (["--resume"] if resume else [])


@flow(name="train", log_prints=True)
def train(
    manifests: list[str],
    config: str | None = "trainer/configs/demo.yaml",
    out_dir: str | None = None,
    nproc_per_node: int = 1,
    overrides: list[str] | None = None,
    resume: bool = True,
) -> dict[str, Any]:
    """Train on `manifests` with torchrun; a retried or rerun flow resumes from the last checkpoint."""
    logger = get_run_logger()
    # Beside the data on disk; in the working directory of an object-store root.
    out_dir = out_dir or str(DataRoot(data_root_of(manifests[0])).root / "runs" / "default")
    command = torchrun_command(manifests, config, out_dir, nproc_per_node, overrides or [], resume)
    logger.info("running %s", " ".join(command))
    env = {
        **os.environ,
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc_per_node))),
    }
    tail: collections.deque[str] = collections.deque(maxlen=40)
    with subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as proc:
        assert proc.stdout is not None  # stdout=PIPE
        for line in proc.stdout:
            tail.append(line.rstrip())
            if '"step"' in line or "trainer:" in line or "Error" in line:
                logger.info(line.rstrip())
    if proc.returncode:
        raise TrainingFailed(f"torchrun exited with {proc.returncode}:\n" + "\n".join(tail))
    result = json.loads((Path(out_dir) / "metrics.json").read_text())
    checkpoint = str(Path(out_dir).resolve() / "checkpoints" / "last.pt")
    create_link_artifact(
        key="train-checkpoint",
        link=Path(checkpoint).as_uri(),
        link_text="last checkpoint",
        description=f"step {result['step']}",
    )
    rows = [
        {"source": source, **{k: round(v, 4) for k, v in values.items()}}
        for source, values in result["metrics"].items()
        if isinstance(values, dict)
    ]
    create_table_artifact(
        key="train-metrics",
        table=rows or [{"source": "-", "note": "nothing to evaluate"}],
        description=f"evaluation after {result['step']} steps",
    )
    return {"checkpoint": checkpoint, "step": result["step"], "metrics": result["metrics"]}


def start_training(root: DataRoot, datasets: list[str], spec: dict[str, Any]) -> dict[str, Any]:
    """Start the training deployment on the freshly published manifests; link the run from this one.

    `spec` keys: deployment (default "train/default"), config, out_dir, nproc_per_node, overrides, and
    wait (seconds to wait for the training run; 0, the default, returns once it is scheduled).
    """
    unknown = set(spec) - {"deployment", "config", "out_dir", "nproc_per_node", "overrides", "wait"}
    if unknown:
        raise ValueError(f"unknown keys in the train parameter: {sorted(unknown)}")
    manifests = [root.address(root.manifest(d)) for d in datasets if root.has_table(root.manifest(d))]
    if not manifests:
        raise ValueError(f"nothing to train on: no manifest under {root.address(root.root / 'manifest')}")
    parameters: dict[str, Any] = {"manifests": manifests}
    for key in ("config", "out_dir", "nproc_per_node", "overrides"):
        if key in spec:
            parameters[key] = spec[key]
    name = spec.get("deployment", DEFAULT_DEPLOYMENT)
    run = run_deployment(name, parameters=parameters, timeout=spec.get("wait", 0))
    assert isinstance(run, FlowRun)  # called from a sync flow: Prefect runs the coroutine for us
    url = f"{PREFECT_UI_URL.value() or ''}/runs/flow-run/{run.id}"
    create_link_artifact(
        key="curate-training",
        link=url,
        link_text=f"training run {run.name}",
        description=f"{name} on {', '.join(datasets)}",
    )
    get_run_logger().info("started %s: flow run %s (%s)", name, run.name, run.id)
    return {
        "deployment": name,
        "flow_run_id": str(run.id),
        "flow_run_name": run.name,
        "state": run.state.type.value if run.state else None,
        "manifests": manifests,
    }
