"""The Prefect tasks the flows share: one video, its download and side tables, publish, and the audit artifacts.

Each wraps a plain function of pipeline/ (pipeline/driver.py for the per-video work): the tasks add retries, task
runs the UI shows, and artifacts; what they compute is the Prefect-free driver's, byte for byte.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from prefect import get_run_logger, task
from prefect.artifacts import create_link_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import State
from prefect.states import Failed
from prefect.tasks import exponential_backoff

from flows.outcomes import is_retryable
from flows.runners import download_slot
from pipeline.config import CurateConfig
from pipeline.corpus.html_report import write_report
from pipeline.corpus.report import audit_tables
from pipeline.driver import (
    VideoOutcome,
    VideoSteps,
    curate_video,
    download_logged,
    embed_clip,
    estimate_intrinsics,
    publish_corpus,
)
from pipeline.errors import DISK_FULL, VideoError
from pipeline.io.data_root import DataRoot
from pipeline.sources.catalog import CatalogEntry, CatalogProblem
from pipeline.sources.download import DownloadResult
from pipeline.video.record import VideoRecord, load_record

MAX_WORKERS = 16  # hard ceiling of the flows' thread pools; config `run.workers` sets the real bound
_T = TypeVar("_T")


def _retry_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Retry a download only when the failure may go away soon (timeouts, 5xx, throttling); a full disk is left to
    the next run, as in pipeline.driver.download_with_retries."""
    try:
        state.result()
    except VideoError as exc:
        return exc.transient and exc.reason != DISK_FULL
    except Exception:  # noqa: BLE001 - unexpected errors deserve one more try
        return True
    return False


@task(name="download", cache_policy=NO_CACHE, task_run_name="download-{entry.video_id}")
def download_task(entry: CatalogEntry, root: DataRoot, cfg: CurateConfig) -> DownloadResult:
    return download_logged(entry, root, cfg, log=get_run_logger(), slot=download_slot)


@task(
    name="intrinsics", cache_policy=NO_CACHE, task_run_name="intrinsics-{record.video_id}", cache_result_in_memory=False
)
def intrinsics_task(record: VideoRecord, root: DataRoot, cfg: CurateConfig) -> str:
    return estimate_intrinsics(record, root, cfg, log=get_run_logger())


@task(name="embed", cache_policy=NO_CACHE, task_run_name="embed-{record.video_id}", cache_result_in_memory=False)
def embed_task(record: VideoRecord, root: DataRoot, cfg: CurateConfig) -> str:
    return embed_clip(record, root, cfg, log=get_run_logger())


def _retried_download(entry: CatalogEntry, root: DataRoot, cfg: CurateConfig) -> DownloadResult:
    backoff = exponential_backoff(backoff_factor=cfg.download.backoff_s) if cfg.download.backoff_s else 0
    downloader = download_task.with_options(
        retries=cfg.download.attempts - 1, retry_delay_seconds=backoff, retry_condition_fn=_retry_transient
    )
    return downloader(entry, root, cfg)


PREFECT_STEPS = VideoSteps(download=_retried_download, intrinsics=intrinsics_task, embed=embed_task)


@task(name="curate-video", cache_policy=NO_CACHE, task_run_name="curate-{entry.video_id}", cache_result_in_memory=False)
def curate_video_task(entry: CatalogEntry, root: DataRoot, cfg: CurateConfig) -> VideoOutcome | State[VideoOutcome]:
    """Download and ingest one video (pipeline.driver.curate_video, with Prefect's retries); never raises.

    A video that failed (now, or for good in an earlier run) ends its task run in a Failed state that carries
    its outcome as data, so the UI shows it red while the flow still collects it (`settled_result`) and goes on
    with the other videos and publish.
    """
    outcome = curate_video(entry, root, cfg, steps=PREFECT_STEPS, log=get_run_logger())
    if outcome.status != "ok":
        return failed_video_state(outcome, root)
    preview = root.preview(entry.dataset, entry.video_id)
    if not outcome.skipped and root.exists(preview):
        create_link_artifact(
            link=root.uri(preview),
            link_text=f"{entry.video_id} contact sheet",
            description=f"frames, disparity and sky masks of {entry.dataset}/{entry.video_id}",
        )
    return outcome


def failed_video_state(outcome: VideoOutcome, root: DataRoot) -> State[VideoOutcome]:
    """The Failed state of a failed video's task run: its status, error and whether it may go away."""
    record = load_record(root, outcome.dataset, outcome.video_id)
    retryable = is_retryable(outcome.status, record.retryable if record is not None else None)
    message = f"{outcome.dataset}/{outcome.video_id}: {outcome.status}: {outcome.error}"
    message += " (retryable)" if retryable else " (permanent)"
    if outcome.skipped:
        message += "; recorded by an earlier run"
    return Failed(message=message, data=outcome)


@task(name="publish", cache_policy=NO_CACHE)
def publish_task(root: DataRoot, cfg: CurateConfig, problems: Sequence[CatalogProblem]) -> dict[str, Any]:
    """pipeline.driver.publish_corpus: a full disk raises DiskFull (one line, logged), which fails the flow run."""
    description = publish_corpus(root, cfg, problems, log=get_run_logger())
    clip = description.get("clip")
    if clip and clip["missing_embeddings"]:
        get_run_logger().warning(
            "no embeddings for %s: their frames were neither scored nor deduplicated",
            ", ".join(clip["missing_embeddings"]),
        )
    return description


def bounded_map(
    submit: Callable[[_T], Any], items: Sequence[_T], workers: int, on_result: Callable[[Any], None] | None = None
) -> list[Any]:
    """Submit a task per item with at most `workers` in flight (a sliding window); results in item order, each also
    handed to `on_result` as it is collected."""
    pending: collections.deque[Any] = collections.deque()
    results: list[Any] = []

    def collect_oldest() -> None:
        results.append(settled_result(pending.popleft()))
        if on_result is not None:
            on_result(results[-1])

    for item in items:
        if len(pending) >= workers:
            collect_oldest()
        pending.append(submit(item))
    while pending:
        collect_oldest()
    return results


def settled_result(future: Any) -> Any:
    """A task future's result, also when the task ended in a Failed state it returned itself with its data (a
    failed video); a task that raised, crashed or was cancelled raises here as with `future.result()`."""
    value = future.result(raise_on_failure=False)
    if isinstance(value, BaseException):
        raise value
    return value


def audit_artifacts(root: DataRoot) -> None:
    """Frames dropped by each rule, per video and per catalog category, as two table artifacts; and the data root's
    report.html (pipeline.corpus.html_report), rewritten when it changed, as a link artifact."""
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
    try:
        link = write_report(root)
    except (OSError, ValueError) as exc:  # a view of what is published: the run's outcome does not hang on it
        get_run_logger().warning("report.html not written: %s", exc)
        return
    create_link_artifact(
        key="dataset-report",
        link=link,
        link_text="dataset report (report.html)",
        description="drop funnel, tables per video and category, histograms, captioned contact sheets",
    )
