"""The `curate` Prefect flow: one task per video, bounded concurrency, then a corpus-level publish.

With `intrinsics.enabled`, each video task also estimates the video's camera intrinsics with COLMAP (a nested
`intrinsics-<video_id>` task, so `run.workers` bounds it too). With `clip.enabled`, each video task also embeds
the video's shard rows (a nested `embed-<video_id>` task) and publish runs the corpus-level CLIP pass (tags,
junk, SemDeDup) over the embeddings.
"""

from __future__ import annotations

import collections
import contextlib
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import (
    create_link_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner
from prefect.tasks import exponential_backoff

from flows.runners import Submit, download_slot, task_submitter, torch_devices
from flows.train import start_training
from pipeline.config import CurateConfig, load_config, with_overrides
from pipeline.corpus.publish import publish
from pipeline.corpus.report import audit_tables
from pipeline.errors import VideoError, redact_secrets
from pipeline.io.data_root import DataRoot
from pipeline.sources.catalog import CatalogEntry, read_catalog
from pipeline.sources.download import DownloadResult, download_video
from pipeline.synthetic.demo import CONFIG_PATH as DEMO_CONFIG
from pipeline.synthetic.demo import build_demo_sources, serve_directory, write_demo_catalog
from pipeline.video.ingest import damaged_outputs, ingest_video, is_finished, load_record, write_failure

DEMO_CATALOG = "demo"
MAX_WORKERS = 16  # hard ceiling of the thread pool; config `run.workers` sets the real bound


def _retry_transient(task, task_run, state) -> bool:
    """Retry a download only when the failure may go away (timeouts, 5xx, throttling)."""
    try:
        state.result()
    except VideoError as exc:
        return exc.transient
    except Exception:  # noqa: BLE001 - unexpected errors deserve one more try
        return True
    return False


@task(name="download", cache_policy=NO_CACHE, task_run_name="download-{entry.video_id}")
def download_task(entry: CatalogEntry, root: DataRoot, cfg: CurateConfig) -> DownloadResult:
    logger = get_run_logger()
    reporter = _ThrottledProgress(lambda pct, msg: logger.info("%s download %3d%% %s", entry.video_id, pct, msg))
    with download_slot(cfg):
        result = download_video(entry, root.videos_dir(entry.dataset), cfg.download, progress=reporter)
    logger.info("%s: %s %s", entry.video_id, "already downloaded" if result.cached else "downloaded", result.path.name)
    return result


@task(name="curate-video", cache_policy=NO_CACHE, task_run_name="curate-{entry.video_id}", cache_result_in_memory=False)
def curate_video(entry: CatalogEntry, root: DataRoot, cfg: CurateConfig) -> dict[str, Any]:
    """Download and ingest one video; returns its record. Never raises for bad input."""
    logger = get_run_logger()
    record = load_record(root, entry)
    if is_finished(record, cfg):
        damaged = damaged_outputs(root, record, cfg) if record["status"] == "ok" else []
        if not damaged:
            logger.info("%s: finished earlier (%s), skipped", entry.video_id, record["status"])
            _corpus_side_tables(record, root, cfg)  # switched on (or changed) since: from the shards
            return _brief(record, skipped=True)
        logger.warning("%s: finished earlier, but %s: rebuilding it", entry.video_id, "; ".join(damaged))
    downloader = download_task.with_options(
        retries=cfg.download.attempts - 1,
        retry_delay_seconds=exponential_backoff(backoff_factor=cfg.download.backoff_s) if cfg.download.backoff_s else 0,
        retry_condition_fn=_retry_transient,
    )
    try:
        downloaded = downloader(entry, root, cfg)
        reporter = _ThrottledProgress(lambda pct, msg: logger.info("%s decode %3d%% %s", entry.video_id, pct, msg))
        record = ingest_video(entry, downloaded.path, root, cfg, progress=reporter)
    except VideoError as exc:
        record = write_failure(entry, root, cfg, exc)
    except Exception as exc:  # noqa: BLE001 - a bug on one video must not sink the run
        logger.error("%s: unexpected error\n%s", entry.video_id, redact_secrets(traceback.format_exc()))
        record = write_failure(entry, root, cfg, VideoError("internal_error", f"{type(exc).__name__}: {exc}"))
    preview = root.preview(entry.dataset, entry.video_id)
    if record["status"] == "ok" and root.exists(preview):
        create_link_artifact(
            link=root.uri(preview),
            link_text=f"{entry.video_id} contact sheet",
            description=f"frames, disparity and sky masks of {entry.dataset}/{entry.video_id}",
        )
    level = logger.info if record["status"] == "ok" else logger.warning
    level(
        "%s: %s%s",
        entry.video_id,
        record["status"],
        f" ({record['error']})"
        if record["error"]
        else f", kept {record['frames_kept']}/{record['frames_decoded']} frames",
    )
    _corpus_side_tables(record, root, cfg)
    return _brief(record, skipped=False)


def _corpus_side_tables(record: dict[str, Any], root: DataRoot, cfg: CurateConfig) -> None:
    """The per-video files computed from a finished video's shards: camera intrinsics, CLIP embeddings."""
    if record["status"] != "ok":
        return
    if cfg.intrinsics.enabled:
        intrinsics_task(record, root, cfg)
    if cfg.clip.enabled:
        embed_task(record, root, cfg)


@task(
    name="intrinsics",
    cache_policy=NO_CACHE,
    task_run_name="intrinsics-{record[video_id]}",
    cache_result_in_memory=False,
)
def intrinsics_task(record: dict[str, Any], root: DataRoot, cfg: CurateConfig) -> str:
    """COLMAP intrinsics of a finished video unless current; returns its status (ok or a named reason)."""
    from pipeline.corpus.intrinsics import estimate_video

    logger = get_run_logger()
    try:
        camera, computed = estimate_video(root, record, cfg.intrinsics)
    except Exception:  # noqa: BLE001 - an unreadable shard must not sink the run; the video keeps null intrinsics
        logger.error("%s: intrinsics failed\n%s", record["video_id"], traceback.format_exc())
        return "error"
    if not computed:
        logger.info("%s: intrinsics current (%s), skipped", record["video_id"], camera["status"])
    elif camera["status"] == "ok":
        logger.info(
            "%s: intrinsics fx=%.4f fy=%.4f cx=%.4f cy=%.4f k1=%.4f (%d/%d frames registered)",
            record["video_id"],
            camera["fx"],
            camera["fy"],
            camera["cx"],
            camera["cy"],
            camera["k1"],
            camera["registered"],
            camera["frames"],
        )
    else:
        logger.warning(
            "%s: %s (%s); the trainer learns its intrinsics", record["video_id"], camera["status"], camera["error"]
        )
    return camera["status"]


@task(name="embed", cache_policy=NO_CACHE, task_run_name="embed-{record[video_id]}", cache_result_in_memory=False)
def embed_task(record: dict[str, Any], root: DataRoot, cfg: CurateConfig) -> str:
    """CLIP-embed a finished video's shard rows unless current; a failure is logged, and publish reports the gap."""
    from pipeline.clip.embeddings import embed_video
    from pipeline.clip.model import get_model  # torch only when CLIP curation is on

    logger = get_run_logger()
    try:
        written = embed_video(root, record, get_model(cfg.clip))
    except Exception:  # noqa: BLE001 - one unreadable shard must not sink the run; dataset.json lists the video
        logger.error("%s: embedding failed\n%s", record["video_id"], traceback.format_exc())
        return "failed"
    logger.info("%s: %s", record["video_id"], "embedded" if written else "embeddings current, skipped")
    return "embedded" if written else "current"


@task(name="publish", cache_policy=NO_CACHE)
def publish_task(root: DataRoot, cfg: CurateConfig, problems: list[dict[str, Any]]) -> dict[str, Any]:
    description = publish(root, cfg, problems)
    clip = description.get("clip")
    if clip and clip["missing_embeddings"]:
        get_run_logger().warning(
            "no embeddings for %s: their frames were neither scored nor deduplicated",
            ", ".join(clip["missing_embeddings"]),
        )
    return description


def check_clip_model(cfg: CurateConfig) -> None:
    """Load the CLIP model now when curation needs it: a bad checkpoint fails the run before any download."""
    if cfg.clip.enabled:
        from pipeline.clip.model import get_model

        model = get_model(cfg.clip)
        get_run_logger().info("CLIP curation with %s (%s) on %s", model.name, model.model_hash, model.device)


@flow(name="curate", task_runner=ThreadPoolTaskRunner(max_workers=MAX_WORKERS), log_prints=True)
def curate(
    catalog: str = DEMO_CATALOG,
    data_root: str = "data/demo",
    limit: int | None = None,
    config: str | None = None,
    train: dict[str, Any] | None = None,
    ray_address: str | None = None,
) -> dict[str, Any]:
    """Curate every video of `catalog` (a CSV path, or "demo" for the embedded demo) into `data_root`.

    `train` set (a dict, {} for defaults; see flows.train.start_training): once the manifests are
    published, start the training deployment on them. `ray_address` set ("auto", "host:port", "ray://..."):
    the video tasks run on that Ray cluster, whatever `run.executor` says.
    """
    logger = get_run_logger()
    cfg = with_ray_address(load_config(config or (DEMO_CONFIG if catalog == DEMO_CATALOG else None)), ray_address)
    root = DataRoot(data_root)
    with _catalog_file(catalog, root) as catalog_path:
        entries, problems = read_catalog(catalog_path)
        for problem in problems:
            logger.warning("catalog %s", problem.message)
        entries = entries[:limit] if limit is not None else entries
        logger.info(
            "curating %d videos from %s into %s (workers=%d)", len(entries), catalog_path, root.name, cfg.run.workers
        )
        check_clip_model(cfg)
        with task_submitter(cfg) as submit:
            briefs = _run_bounded(submit, entries, root, cfg)
    description = publish_task(root, cfg, [_problem_row(p, catalog_path) for p in problems])
    _summary_artifact(briefs, description)
    audit_artifacts(root)
    result = {"data_root": root.name, "counts": description["counts"], "videos": briefs}
    if train is not None:
        datasets = sorted(d for d, n in description["counts"]["samples"].items() if n)
        result["training"] = start_training(root, datasets, train)
    return result


def with_ray_address(cfg: CurateConfig, ray_address: str | None) -> CurateConfig:
    """`cfg`, switched to the Ray cluster at `ray_address` when one is given (a flow parameter)."""
    if ray_address is None:
        return cfg
    return with_overrides(cfg, {"run": {"executor": "ray", "ray": {"address": ray_address}}})


def _run_bounded(
    submit: Submit, entries: list[CatalogEntry], root: DataRoot, cfg: CurateConfig
) -> list[dict[str, Any]]:
    """Keep at most `run.workers` videos in flight; results come back in catalog order."""
    progress_id = create_progress_artifact(progress=0.0, key="curate-progress", description="videos finished")
    return bounded_map(
        lambda entry: submit(
            curate_video, {"entry": entry, "root": root, "cfg": cfg}, torch_devices(cfg, entry.layout)
        ),
        entries,
        cfg.run.workers,
        lambda done: update_progress_artifact(progress_id, progress=100.0 * done / max(1, len(entries))),
    )


def bounded_map(
    submit: Callable[[Any], Any], items: list[Any], workers: int, on_result: Callable[[int], None] | None = None
) -> list[Any]:
    """Submit a task per item with at most `workers` in flight (a sliding window); results in item order."""
    pending: collections.deque = collections.deque()
    results: list[Any] = []

    def collect_oldest() -> None:
        results.append(pending.popleft().result())
        if on_result is not None:
            on_result(len(results))

    for item in items:
        if len(pending) >= workers:
            collect_oldest()
        pending.append(submit(item))
    while pending:
        collect_oldest()
    return results


@contextlib.contextmanager
def _catalog_file(catalog: str, root: DataRoot) -> Iterator[Path]:
    """The catalog path; for the demo, render its videos and serve them on loopback while the run lasts."""
    if catalog != DEMO_CATALOG:
        yield Path(catalog)
        return
    sources = root.root / "demo_sources"
    build_demo_sources(sources)
    with serve_directory(sources) as base_url:
        yield write_demo_catalog(sources / "catalog.csv", base_url)


def _problem_row(problem, catalog_path: Path) -> dict[str, Any]:
    row = asdict(problem)
    row["message"] = f"{catalog_path.name}: {problem.message}"
    return row


def _brief(record: dict[str, Any], skipped: bool) -> dict[str, Any]:
    keys = ("dataset", "video_id", "status", "error", "frames_decoded", "frames_kept")
    return {**{k: record.get(k) for k in keys}, "skipped": skipped}


def _summary_artifact(briefs: list[dict[str, Any]], description: dict[str, Any]) -> None:
    create_table_artifact(
        key="curate-summary", table=briefs, description=f"per-video summary; dataset counts: {description['counts']}"
    )


def audit_artifacts(root: DataRoot) -> None:
    """Frames dropped by each rule, per video and per catalog category, as two table artifacts."""
    videos, categories = audit_tables(root)
    create_table_artifact(
        key="curation-audit-videos",
        table=videos,
        description="frames dropped per rule and video (stats/videos.parquet)",
    )
    create_table_artifact(
        key="curation-audit-categories",
        table=categories,
        description="frames dropped per rule and catalog category (stats/categories.parquet)",
    )


class _ThrottledProgress:
    """Turn fine-grained progress callbacks into at most one log line every `interval_s` seconds."""

    def __init__(self, emit, interval_s: float = 10.0) -> None:
        self.emit = emit
        self.interval_s = interval_s
        self.last_time = time.monotonic()

    def __call__(self, fraction: float, message: str) -> None:
        if time.monotonic() - self.last_time >= self.interval_s:
            self.last_time = time.monotonic()
            self.emit(int(fraction * 100), message)
