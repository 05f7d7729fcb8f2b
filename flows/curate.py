"""The `curate` Prefect flow: one task per video, bounded concurrency, then a corpus-level publish.

With `intrinsics.enabled`, each video task also estimates the video's camera intrinsics with COLMAP (a nested
`intrinsics-<video_id>` task, so `run.workers` bounds it too). With `clip.enabled`, each video task also embeds
the video's shard rows (a nested `embed-<video_id>` task) and publish runs the corpus-level CLIP pass (tags,
junk, SemDeDup) over the embeddings. The per-video work is pipeline.driver.curate_video, as in a Prefect-free run.

A failed video's task run ends Failed (the UI shows which) while the others and publish go on; the flow run ends
Completed with a message counting the failures ("12 ok, 3 failed (1 retryable)"), and its `curate-summary`
artifact is the published stats/videos.parquet, catalog errors included (flows.outcomes).
"""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path
from typing import Any, cast
from uuid import UUID

from prefect import flow, get_run_logger
from prefect.artifacts import create_progress_artifact, create_table_artifact, update_progress_artifact
from prefect.states import Completed
from prefect.task_runners import ThreadPoolTaskRunner

from flows.outcomes import RunOutcome, run_outcome
from flows.runners import Submit, task_submitter, torch_devices
from flows.tasks import MAX_WORKERS, audit_artifacts, bounded_map, curate_video_task, publish_task
from flows.train import start_training
from pipeline.config import CurateConfig, load_config, with_overrides
from pipeline.driver import CurateProgress, ProgressTally, VideoOutcome, check_clip_model, load_catalog
from pipeline.io.data_root import DataRoot
from pipeline.sources.catalog import CatalogEntry
from pipeline.synthetic.demo import CONFIG_PATH as DEMO_CONFIG
from pipeline.synthetic.demo import demo_catalog


# Prefect types the runner generically, so a concrete ThreadPoolTaskRunner does not match its annotation.
@flow(name="curate", task_runner=ThreadPoolTaskRunner(max_workers=MAX_WORKERS), log_prints=True)  # type: ignore[arg-type]
def curate(
    catalog: str | None = None,
    data_root: str = "data/demo",
    limit: int | None = None,
    config: str | None = None,
    train: dict[str, Any] | None = None,
    ray_address: str | None = None,
    demo: bool = False,
) -> dict[str, Any]:
    """Curate every video of the catalog CSV `catalog` into `data_root`.

    `demo` true (and no `catalog`): render the embedded demo's videos, serve them on loopback while the run lasts
    and curate them, with configs/demo.yaml unless `config` names another. `train` set (a dict, {} for defaults;
    see flows.train.start_training): once the manifests are published, start the training deployment on them.
    `ray_address` set ("auto", "host:port", "ray://..."): the video tasks run on that Ray cluster, whatever
    `run.executor` says.

    The run ends Completed, failed videos or not (their task runs end Failed), with a message that counts them;
    calling the flow returns the result dict (data_root, counts, videos, outcome).
    """
    if (catalog is None) == (not demo):
        raise ValueError("give either a catalog CSV or demo=True")
    logger = get_run_logger()
    cfg = with_ray_address(load_config(config or (DEMO_CONFIG if demo else None)), ray_address)
    root = DataRoot(data_root)
    with demo_catalog(root, logger) if demo else contextlib.nullcontext(Path(str(catalog))) as catalog_path:
        entries, problems = load_catalog(catalog_path, limit)
        for problem in problems:
            logger.warning("catalog %s", problem.message)
        logger.info(
            "curating %d videos from %s into %s (workers=%d)", len(entries), catalog_path, root.name, cfg.run.workers
        )
        check_clip_model(cfg, logger)
        tally = ProgressTally(len(entries), len(problems), lambda progress: logger.info("%s", progress.line()))
        with task_submitter(cfg) as submit:
            outcomes = _run_bounded(submit, entries, root, cfg, tally)
    description = publish_task(root, cfg, problems)
    published = run_outcome(root)
    _summary_artifact(published, outcomes, description)
    audit_artifacts(root)
    briefs = [dataclasses.asdict(outcome) for outcome in outcomes]
    result: dict[str, Any] = {
        "data_root": root.name,
        "counts": description["counts"],
        "videos": briefs,
        "outcome": published.message,
    }
    if train is not None:
        datasets = sorted(d for d, n in description["counts"]["samples"].items() if n)
        result["training"] = start_training(root, datasets, train)
    if published.failures:
        logger.warning("%s: the failed videos' task runs say why", published.message)
    # Prefect makes a State the function returns the run's final state, and gives a caller its data (the dict).
    return cast("dict[str, Any]", Completed(message=published.message, data=result))


def with_ray_address(cfg: CurateConfig, ray_address: str | None) -> CurateConfig:
    """`cfg`, switched to the Ray cluster at `ray_address` when one is given (a flow parameter)."""
    if ray_address is None:
        return cfg
    return with_overrides(cfg, {"run": {"executor": "ray", "ray": {"address": ray_address}}})


def _run_bounded(
    submit: Submit, entries: list[CatalogEntry], root: DataRoot, cfg: CurateConfig, tally: ProgressTally
) -> list[VideoOutcome]:
    """Keep at most `run.workers` videos in flight; results come back in catalog order, each counted in `tally`."""
    # Called from a sync flow, Prefect's dual sync/async API returns the id itself, not a coroutine.
    progress_id = cast(
        UUID, create_progress_artifact(progress=0.0, key="curate-progress", description="videos finished")
    )
    return bounded_map(
        lambda entry: submit(
            curate_video_task, {"entry": entry, "root": root, "cfg": cfg}, torch_devices(cfg, entry.layout)
        ),
        entries,
        cfg.run.workers,
        lambda outcome: _progress(progress_id, tally.add(outcome)),
    )


def _summary_artifact(published: RunOutcome, outcomes: list[VideoOutcome], description: dict[str, Any]) -> None:
    """One row per row of the published stats/videos.parquet (catalog errors too), after publish; `skipped` says
    which videos an earlier run had finished."""
    skipped = {(o.dataset, o.video_id): o.skipped for o in outcomes}
    create_table_artifact(
        key="curate-summary",
        table=published.table(skipped),
        description=published.markdown(description["counts"]),
    )


def _progress(artifact_id: UUID, progress: CurateProgress) -> None:
    update_progress_artifact(artifact_id, progress=100.0 * progress.done / max(1, progress.total))
