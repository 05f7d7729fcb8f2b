"""Curate catalog entries into a data root without Prefect.

`curate_video` is everything one video goes through: skip it when its record says it is finished (and its files
still match), download, ingest, record a failure, then the side tables computed from its shards (intrinsics, CLIP
embeddings). A full disk anywhere in that is a `disk_full` failure (transient), never a crash; when not even its
record can be written, one log line names the video. The Prefect flow's `curate-<video_id>` task calls it too,
handing in its own `VideoSteps` so that the download and the side tables run as Prefect tasks with retries.
`curate_entries` runs it over a local thread pool and publishes (a full disk there raises DiskFull, one line):
what tests, benchmarks and notebooks use. After each video it hands a `CurateProgress` to a `ProgressObserver`: by
default a live bar on a terminal, else one log line per video (the flow logs the same line).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import logging
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.config import CurateConfig
from pipeline.corpus.publish import publish
from pipeline.errors import DISK_FULL, DiskFull, VideoError, is_out_of_space, redact_secrets
from pipeline.io.data_root import DataRoot
from pipeline.io.lease import Lease, LeaseLost, LeaseTiming, acquire_lease, lease_owner
from pipeline.io.storage import free_space
from pipeline.sources.catalog import CatalogEntry, CatalogProblem, read_catalog
from pipeline.sources.download import DownloadResult, download_video
from pipeline.video.ingest import ingest_video
from pipeline.video.record import VideoRecord, damaged_outputs, is_finished, load_record, write_failure

Logger = logging.Logger | logging.LoggerAdapter
ProgressFn = Callable[[float, str], None]
DownloadStep = Callable[[CatalogEntry, DataRoot, CurateConfig], DownloadResult]
SideTableStep = Callable[[VideoRecord, DataRoot, CurateConfig], str]
SlotFn = Callable[[CurateConfig], AbstractContextManager[None]]

LOG = logging.getLogger("depthcurate")
BUSY = "busy"  # a VideoOutcome's status when another run held the video


@dataclass(frozen=True)
class VideoOutcome:
    """What curating one catalog entry came to: the row of a run's summary."""

    dataset: str
    video_id: str
    status: str  # "ok" or the failure reason
    error: str | None
    frames_decoded: int
    frames_kept: int  # as ingest kept them; publish's corpus-level drops come on top
    skipped: bool  # finished by an earlier run; nothing was redone

    @classmethod
    def busy(cls, entry: CatalogEntry) -> VideoOutcome:
        """Left to another live run that holds the video's lease: nothing of it was touched here."""
        return cls(entry.dataset, entry.video_id, BUSY, None, 0, 0, skipped=True)

    @classmethod
    def unrecorded(cls, entry: CatalogEntry, error: str) -> VideoOutcome:
        """Out of space even for the video's record (or its lease): disk_full, and the next run tries it again."""
        return cls(entry.dataset, entry.video_id, DISK_FULL, error, 0, 0, skipped=False)

    @classmethod
    def of(cls, record: VideoRecord, skipped: bool) -> VideoOutcome:
        return cls(
            record.dataset,
            record.video_id,
            record.status,
            record.error,
            record.frames_decoded,
            record.frames_kept,
            skipped,
        )


@dataclass(frozen=True)
class CurateResult:
    videos: list[VideoOutcome]  # catalog order
    description: dict[str, Any]  # dataset.json as publish wrote it


@dataclass(frozen=True)
class CurateProgress:
    """Where a run stands after one more video finished: what a `ProgressObserver` is told."""

    done: int  # videos finished, failed ones and catalog errors included
    failed: int  # as the run's summary counts them: failures and catalog errors
    total: int  # catalog entries plus catalog errors: the summary's video count
    frames_decoded: int
    frames_kept: int  # as ingest kept them; publish's corpus-level drops come on top
    eta_s: float | None  # None until a video of this run has finished

    def line(self) -> str:
        """The plain progress line: `[3/15 videos, 1 failed] 340 frames decoded, 120 kept so far, ETA 0:00:42`."""
        return f"[{self.done}/{self.total} videos, {self.failed} failed] {self.details()}"

    def details(self) -> str:
        eta = "?" if self.eta_s is None else str(datetime.timedelta(seconds=round(self.eta_s)))
        return f"{self.frames_decoded} frames decoded, {self.frames_kept} kept so far, ETA {eta}"


ProgressObserver = Callable[[CurateProgress], None]


class ProgressTally:
    """Adds up a run's finished videos and tells `observer`; the pool's threads report through it one at a time.

    Catalog errors are failures finished before the run starts, so the counts end where the summary's do."""

    def __init__(self, videos: int, catalog_errors: int, observer: ProgressObserver) -> None:
        self.observer = observer
        self.started = time.monotonic()
        self.catalog_errors = catalog_errors
        self.progress = CurateProgress(catalog_errors, catalog_errors, videos + catalog_errors, 0, 0, None)
        self.lock = threading.Lock()

    def add(self, outcome: VideoOutcome) -> CurateProgress:
        with self.lock:
            last = self.progress
            done = last.done + 1
            # ETA from the mean time per video this run finished so far (workers in parallel included).
            per_video = (time.monotonic() - self.started) / (done - self.catalog_errors)
            self.progress = CurateProgress(
                done=done,
                failed=last.failed + (outcome.status not in ("ok", BUSY)),
                total=last.total,
                frames_decoded=last.frames_decoded + outcome.frames_decoded,
                frames_kept=last.frames_kept + outcome.frames_kept,
                eta_s=per_video * (last.total - done),
            )
            self.observer(self.progress)  # under the lock: lines and the bar stay in order
            return self.progress


@contextlib.contextmanager
def console_progress(videos: int, catalog_errors: int, log: Logger = LOG) -> Iterator[ProgressObserver]:
    """A live bar on stderr when it is a terminal (log lines print above it); otherwise one log line per video."""
    if not sys.stderr.isatty():
        yield lambda progress: log.info("%s", progress.line())
        return
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    bar_format = "{desc} {bar} {n_fmt}/{total_fmt} videos [{elapsed}]{postfix}"  # tqdm puts ", " before a postfix
    with (
        logging_redirect_tqdm(),
        tqdm(total=videos + catalog_errors, initial=catalog_errors, desc="curate", bar_format=bar_format) as bar,
    ):

        def show(progress: CurateProgress) -> None:
            bar.set_postfix_str(f"{progress.failed} failed, {progress.details()}", refresh=False)
            bar.update(progress.done - bar.n)

        yield show


class ThrottledProgress:
    """Turn fine-grained progress callbacks into at most one call of `emit` every `interval_s` seconds."""

    def __init__(self, emit: Callable[[int, str], None], interval_s: float = 10.0) -> None:
        self.emit = emit
        self.interval_s = interval_s
        self.last_time = time.monotonic()

    def __call__(self, fraction: float, message: str) -> None:
        if time.monotonic() - self.last_time >= self.interval_s:
            self.last_time = time.monotonic()
            self.emit(int(fraction * 100), message)


_slots_lock = threading.Lock()
_slots: dict[int, threading.Semaphore] = {}


@contextlib.contextmanager
def local_download_slot(cfg: CurateConfig) -> Iterator[None]:
    """Hold one of this process's `download.parallel` download slots while the block runs."""
    with _slots_lock:
        slots = _slots.setdefault(cfg.download.parallel, threading.Semaphore(cfg.download.parallel))
    with slots:
        yield


def download_logged(
    entry: CatalogEntry,
    root: DataRoot,
    cfg: CurateConfig,
    log: Logger = LOG,
    slot: Callable[[CurateConfig], AbstractContextManager[None]] = local_download_slot,
) -> DownloadResult:
    """One download attempt in a download slot (`slot`: this process's, or a cluster-wide one), logged."""
    reporter = ThrottledProgress(lambda pct, msg: log.info("%s download %3d%% %s", entry.video_id, pct, msg))
    with slot(cfg):
        result = download_video(entry, root.videos_dir(entry.dataset), cfg.download, progress=reporter)
    log.info("%s: %s %s", entry.video_id, "already downloaded" if result.cached else "downloaded", result.path.name)
    return result


def download_with_retries(entry: CatalogEntry, root: DataRoot, cfg: CurateConfig) -> DownloadResult:
    """`download.attempts` attempts while the failure is transient, with exponential backoff (as the flow's task)."""
    for attempt in range(cfg.download.attempts):
        try:
            return download_logged(entry, root, cfg)
        except VideoError as exc:
            # A full disk is not freed in seconds: the next run tries again (its record says retryable).
            if not exc.transient or exc.reason == DISK_FULL or attempt + 1 == cfg.download.attempts:
                raise
            LOG.warning("%s: %s; retrying", entry.video_id, exc.message)
            time.sleep(cfg.download.backoff_s * 2**attempt)
    raise AssertionError("download.attempts is at least 1")


def estimate_intrinsics(record: VideoRecord, root: DataRoot, cfg: CurateConfig, log: Logger = LOG) -> str:
    """COLMAP intrinsics of a finished video unless current; returns its status (ok or a named reason)."""
    from pipeline.corpus.intrinsics import estimate_video  # pycolmap only when the stage is on

    try:
        camera, computed = estimate_video(root, record, cfg.intrinsics)
    except Exception as exc:  # noqa: BLE001 - an unreadable shard must not sink the run; the video keeps null intrinsics
        if is_out_of_space(exc):
            log.error(
                "%s: intrinsics not written: %s; the next run estimates them", record.video_id, _no_space(root, exc)
            )
        else:
            log.error("%s: intrinsics failed\n%s", record.video_id, traceback.format_exc())
        return "error"
    if not computed:
        log.info("%s: intrinsics current (%s), skipped", record.video_id, camera["status"])
    elif camera["status"] == "ok":
        log.info(
            "%s: intrinsics fx=%.4f fy=%.4f cx=%.4f cy=%.4f k1=%.4f (%d/%d frames registered)",
            record.video_id,
            camera["fx"],
            camera["fy"],
            camera["cx"],
            camera["cy"],
            camera["k1"],
            camera["registered"],
            camera["frames"],
        )
    else:
        log.warning(
            "%s: %s (%s); the trainer learns its intrinsics", record.video_id, camera["status"], camera["error"]
        )
    return str(camera["status"])


def embed_clip(record: VideoRecord, root: DataRoot, cfg: CurateConfig, log: Logger = LOG) -> str:
    """CLIP-embed a finished video's shard rows unless current; a failure is logged, and publish reports the gap."""
    from pipeline.clip.embeddings import embed_video  # torch only when CLIP curation is on
    from pipeline.clip.model import get_model

    try:
        written = embed_video(root, record, get_model(cfg.clip))
    except Exception as exc:  # noqa: BLE001 - one unreadable shard must not sink the run; dataset.json lists the video
        if is_out_of_space(exc):
            log.error(
                "%s: embeddings not written: %s; the next run computes them", record.video_id, _no_space(root, exc)
            )
        else:
            log.error("%s: embedding failed\n%s", record.video_id, traceback.format_exc())
        return "failed"
    log.info("%s: %s", record.video_id, "embedded" if written else "embeddings current, skipped")
    return "embedded" if written else "current"


@dataclass(frozen=True)
class VideoSteps:
    """The steps of one video that an orchestrator may run its own way (the flow: as Prefect tasks)."""

    download: DownloadStep = download_with_retries
    intrinsics: SideTableStep = estimate_intrinsics
    embed: SideTableStep = embed_clip


LOCAL_STEPS = VideoSteps()


def curate_video(
    entry: CatalogEntry, root: DataRoot, cfg: CurateConfig, *, steps: VideoSteps = LOCAL_STEPS, log: Logger = LOG
) -> VideoOutcome:
    """Download and ingest one video unless it is finished; never raises for bad input (or for a bug).

    The video is leased first: when another live run works on it, it is left to that run (or waited for, up to
    run.busy_wait_s) and this run writes nothing of it; the next run picks it up if that one fails.
    """
    timing = LeaseTiming(cfg.run.lease_heartbeat_s, cfg.run.lease_stale_s)
    lease_path = root.video_lease(entry.dataset, entry.video_id)
    with contextlib.ExitStack() as held:
        try:
            lease = held.enter_context(acquire_lease(lease_path, timing, wait_s=cfg.run.busy_wait_s))
        except OSError as exc:
            if not is_out_of_space(exc):
                raise
            log.error(
                "%s: not started, no record: %s; the next run tries it again", entry.video_id, _no_space(root, exc)
            )
            return VideoOutcome.unrecorded(entry, _disk_full(entry, exc).message)
        if lease is None:
            log.warning("%s: another run is working on it (%s), left to it", entry.video_id, lease_owner(lease_path))
            return VideoOutcome.busy(entry)
        try:
            return _curate_leased(entry, root, cfg, steps, log, lease)
        except LeaseLost:
            log.warning("%s: lease lost to another run while frozen; left to it, nothing written", entry.video_id)
            return VideoOutcome.busy(entry)


def _curate_leased(
    entry: CatalogEntry, root: DataRoot, cfg: CurateConfig, steps: VideoSteps, log: Logger, lease: Lease
) -> VideoOutcome:
    record = load_record(root, entry.dataset, entry.video_id)
    if record is not None and is_finished(record, cfg):
        damaged = damaged_outputs(root, record, cfg) if record.ok else []
        if not damaged:
            log.info("%s: finished earlier (%s), skipped", entry.video_id, record.status)
            side_tables(record, root, cfg, steps)  # switched on (or changed) since: from the shards
            return VideoOutcome.of(record, skipped=True)
        log.warning("%s: finished earlier, but %s: rebuilding it", entry.video_id, "; ".join(damaged))
    try:
        downloaded = steps.download(entry, root, cfg)
        reporter = ThrottledProgress(lambda pct, msg: log.info("%s decode %3d%% %s", entry.video_id, pct, msg))
        record = ingest_video(entry, downloaded.path, root, cfg, progress=reporter, fence=lease.held)
    except LeaseLost:
        raise
    except Exception as exc:  # noqa: BLE001 - bad input, a full disk or a bug on one video must not sink the run
        error = _as_failure(entry, exc, log)
        lease.check()
        failed = _record_failure(entry, root, cfg, error, log)
        if failed is None:
            return VideoOutcome.unrecorded(entry, redact_secrets(f"{error}; its record did not fit either"))
        record = failed
    if record.ok:
        log.info("%s: ok, kept %d/%d frames", entry.video_id, record.frames_kept, record.frames_decoded)
    else:
        log.warning("%s: %s (%s)", entry.video_id, record.status, record.error)
    side_tables(record, root, cfg, steps)
    return VideoOutcome.of(record, skipped=False)


def _as_failure(entry: CatalogEntry, exc: Exception, log: Logger) -> VideoError:
    """The failure a video's work ended with: bad input as named, a full disk as disk_full, a bug as internal_error
    (logged with its traceback). The last two are transient: not the video's fault, the next run tries again."""
    if isinstance(exc, VideoError):
        return exc
    if is_out_of_space(exc):
        return _disk_full(entry, exc)
    log.error("%s: unexpected error\n%s", entry.video_id, redact_secrets("".join(traceback.format_exception(exc))))
    return VideoError("internal_error", f"{type(exc).__name__}: {exc}", transient=True)


def _disk_full(entry: CatalogEntry, exc: BaseException) -> VideoError:
    return VideoError(DISK_FULL, f"writing {entry.dataset}/{entry.video_id}: {exc}", transient=True)


def _record_failure(
    entry: CatalogEntry, root: DataRoot, cfg: CurateConfig, error: VideoError, log: Logger
) -> VideoRecord | None:
    """Write the failure record; None, after one line in the log, when not even that fits on the disk.

    Without a record (write_failure removes an older one then) the video is unfinished: the next run redoes it.
    """
    try:
        return write_failure(entry, root, cfg, error)
    except OSError as exc:
        if not is_out_of_space(exc):
            raise
        log.error(
            "%s: %s, not recorded: %s; the next run tries it again (%s)",
            entry.video_id,
            error.reason,
            _no_space(root, exc),
            redact_secrets(error.message),
        )
        return None


def _no_space(root: DataRoot, exc: BaseException) -> str:
    """For one log line: no space on <data root> (<n> free): <the error>."""
    return f"no space on {root.name} ({free_space(root.root)} free): {exc}"


def side_tables(record: VideoRecord, root: DataRoot, cfg: CurateConfig, steps: VideoSteps) -> None:
    """The per-video files computed from a finished video's shards: camera intrinsics, CLIP embeddings."""
    if not record.ok:
        return
    if cfg.intrinsics.enabled:
        steps.intrinsics(record, root, cfg)
    if cfg.clip.enabled:
        steps.embed(record, root, cfg)


def check_clip_model(cfg: CurateConfig, log: Logger = LOG) -> None:
    """Load the CLIP model now when curation needs it: a bad checkpoint fails the run before any download."""
    if cfg.clip.enabled:
        from pipeline.clip.model import get_model

        model = get_model(cfg.clip)
        log.info("CLIP curation with %s (%s) on %s", model.name, model.model_hash, model.device)


def load_catalog(path: str | Path, limit: int | None = None) -> tuple[list[CatalogEntry], list[CatalogProblem]]:
    """The first `limit` entries of a catalog CSV, and its problem rows (their messages name the file)."""
    path = Path(path)
    entries, problems = read_catalog(path)
    problems = [dataclasses.replace(p, message=f"{path.name}: {p.message}") for p in problems]
    return (entries[:limit] if limit is not None else entries), problems


def curate_entries(
    entries: Sequence[CatalogEntry],
    root: DataRoot,
    cfg: CurateConfig,
    *,
    catalog_problems: Sequence[CatalogProblem] = (),
    log: Logger = LOG,
    progress: ProgressObserver | None = None,
) -> CurateResult:
    """Curate `entries` with at most `run.workers` videos in flight in this process, then publish the corpus.

    `progress` is told after each video; None: `console_progress`."""
    check_clip_model(cfg, log)
    log.info("curating %d videos into %s (workers=%d)", len(entries), root.name, cfg.run.workers)
    with contextlib.ExitStack() as shown:
        observer = progress or shown.enter_context(console_progress(len(entries), len(catalog_problems), log))
        tally = ProgressTally(len(entries), len(catalog_problems), observer)

        def curate_one(entry: CatalogEntry) -> VideoOutcome:
            outcome = curate_video(entry, root, cfg, log=log)
            tally.add(outcome)
            return outcome

        with ThreadPoolExecutor(max_workers=max(1, cfg.run.workers), thread_name_prefix="curate") as pool:
            videos = list(pool.map(curate_one, entries))
    return CurateResult(videos, publish_corpus(root, cfg, catalog_problems, log))


def publish_corpus(
    root: DataRoot, cfg: CurateConfig, catalog_problems: Sequence[CatalogProblem] = (), log: Logger = LOG
) -> dict[str, Any]:
    """`publish`; a full disk raises DiskFull, with one line (also logged) naming the data root and its free space.

    Publish replaces each table atomically, so the tables published before stay readable; the finished videos are
    kept, so a rerun once there is space only publishes.
    """
    try:
        return publish(root, cfg, catalog_problems)
    except OSError as exc:
        if not is_out_of_space(exc):
            raise
        message = (
            f"publish ran out of space on {root.name} ({free_space(root.root)} free): {exc}; no published table is "
            "torn (each is replaced atomically); free some space and run again: finished videos are not redone"
        )
        log.error("%s", message)
        raise DiskFull(message) from None


def curate_catalog(
    catalog: str | Path,
    root: DataRoot,
    cfg: CurateConfig,
    *,
    limit: int | None = None,
    log: Logger = LOG,
    progress: ProgressObserver | None = None,
) -> CurateResult:
    """`curate_entries` over a catalog CSV; its problem rows end up in the videos table as catalog errors."""
    entries, problems = load_catalog(catalog, limit)
    for problem in problems:
        log.warning("catalog %s", problem.message)
    return curate_entries(entries, root, cfg, catalog_problems=problems, log=log, progress=progress)
