"""Fetch one catalog entry with yt-dlp's Python API into videos/<dataset>/<video_id>.<ext>.

Local sources (an absolute path or a file:// URL) never go through yt-dlp: they are hard-linked into the
videos directory (a symlink when the data root is on another filesystem), only from under
`download.local_roots`.
"""

from __future__ import annotations

import contextlib
import copy
import errno
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse
from urllib.request import url2pathname

import yt_dlp
from yt_dlp.utils import DownloadError, parse_bytes

from pipeline.config import DownloadConfig
from pipeline.errors import DISK_FULL, VideoError, mentions_out_of_space, out_of_space_cause, redact_secrets
from pipeline.io.storage import remove_stale_temps, write_bytes_atomic
from pipeline.sources.catalog import CatalogEntry

ProgressFn = Callable[[float, str], None]

# Substrings of yt-dlp errors worth another attempt; everything else is final (404, private, removed...).
# A refused connection is a server that is down, and YouTube's bot check asks for cookies or a slower pace:
# both may pass, so a later run tries again.
_TRANSIENT = (
    "timed out",
    "timeout",
    "temporary failure",
    "http error 5",
    "connection reset",
    "remote end closed",
    "incompleteread",
    "connection refused",
    "try again later",
)

_COOKIES = "set download.cookies_file to a cookies.txt exported from a browser signed in to YouTube"
_SLOW_DOWN = "slow down: download.parallel: 1, download.sleep_requests_s and download.host_interval_s of a few seconds"
_UPGRADE = "upgrade yt-dlp (pip install -U 'yt-dlp[default]'; `depthcurate doctor` shows its age)"

# (reason, substrings of yt-dlp's error, lower case, transient, what to do): the first match names the failure.
# The texts are YouTube's playability reasons as yt-dlp's YouTube extractor reports them (plus its own hints).
_NAMED: tuple[tuple[str, tuple[str, ...], bool, str], ...] = (
    (
        "youtube_bot_check",
        ("not a bot", "captcha challenge"),
        True,
        f"YouTube's bot check: {_COOKIES}; {_SLOW_DOWN}; {_UPGRADE}",
    ),
    (
        "http_429",
        ("http error 429", "too many requests", "rate-limited by youtube", "this content isn't available, try again"),
        True,
        f"rate limited (HTTP 429): {_SLOW_DOWN}; a later run retries it",
    ),
    (
        "http_403",
        ("http error 403", "403: forbidden"),
        True,
        f"refused (HTTP 403): on YouTube usually an outdated yt-dlp or a missing JS runtime or PO token: {_UPGRADE}, "
        "run `depthcurate doctor`; a later run retries it",
    ),
    (
        "members_only",
        ("members-only", "channel's members", "join this channel", "premium members"),
        False,
        f"members only: {_COOKIES} (of an account with the membership)",
    ),
    ("private_video", ("private video", "video is private"), False, "private: only its owner can share it"),
    (
        "age_restricted",
        ("confirm your age", "age-restricted", "age restricted", "inappropriate for some users"),
        False,
        f"age-restricted: {_COOKIES} (an adult, age-verified account)",
    ),
    (
        "geo_blocked",
        ("not available from your location", "available in your country", "geo restriction", "geo-restricted"),
        False,
        "blocked in this country: set download.proxy to a proxy in a country where it plays",
    ),
    (
        "not_yet_available",
        ("live event will begin", "premieres in", "premiere will begin", "scheduled to start"),
        True,
        "a premiere or live stream that has not started: a later run retries it",
    ),
    (
        "video_removed",
        (
            "removed by the uploader",
            "has been terminated",
            "removed for violating",
            "no longer available",
            "video has been removed",
            "copyright claim",
        ),
        False,
        "removed from the site: drop it from the catalog",
    ),
    ("video_unavailable", ("video unavailable", "video is unavailable"), False, ""),
)
_FORMAT_HINT = (
    "no format matched download.format: on YouTube often a missing JS runtime or EJS scripts "
    f"(`depthcurate doctor`) or an outdated yt-dlp: {_UPGRADE}"
)


@dataclass(frozen=True)
class DownloadResult:
    path: Path
    info_path: Path | None
    cached: bool  # already downloaded by an earlier run; nothing fetched


class DownloadArchive:
    """Done-markers keyed on catalog ids (yt-dlp's own archive keys direct links by file name, which collide)."""

    _lock = threading.Lock()

    def __init__(self, path: Path) -> None:
        self.path = path

    def lookup(self, video_id: str) -> Path | None:
        """The downloaded file of `video_id` when it is recorded and still on disk."""
        if not self.path.is_file():
            return None
        for line in self.path.read_text().splitlines():
            parts = line.split("\t")
            # A plain file name only: an edited archive must not point outside the videos directory.
            if len(parts) == 2 and parts[0] == video_id and parts[1] == Path(parts[1]).name:
                candidate = self.path.parent / parts[1]
                if candidate.is_file():
                    return candidate
        return None

    def add(self, video_id: str, filename: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = f"{video_id}\t{filename}\n".encode()
        # One O_APPEND write per line: atomic between threads and processes on a local disk.
        with self._lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)


def download_video(
    entry: CatalogEntry, videos_dir: str | Path, cfg: DownloadConfig, progress: ProgressFn | None = None
) -> DownloadResult:
    """One download attempt; raises VideoError (transient=True when a retry may succeed).

    A full disk anywhere (the video, its .part files, the .info.json, the archive, a local link) is `disk_full`,
    transient, and what the attempt left of this video in `videos_dir` is removed, so it frees the space it took.
    """
    videos_dir = Path(videos_dir)
    try:
        return _download(entry, videos_dir, cfg, progress)
    except VideoError as exc:
        if exc.reason == DISK_FULL:
            remove_partial_download(videos_dir, entry.video_id)
        raise
    except OSError as exc:
        if out_of_space_cause(exc) is None:
            raise
        remove_partial_download(videos_dir, entry.video_id)
        raise _disk_full(f"downloading {entry.dataset}/{entry.video_id} into {videos_dir}", exc) from exc


def _download(
    entry: CatalogEntry, videos_dir: Path, cfg: DownloadConfig, progress: ProgressFn | None
) -> DownloadResult:
    source = local_source(entry.url)
    if source is not None:
        return link_local(entry, source, videos_dir, cfg)
    archive = DownloadArchive(videos_dir / "archive.tsv")
    if (done := archive.lookup(entry.video_id)) is not None:
        return DownloadResult(done, _info_path(done), cached=True)
    if cfg.cookies_file and not Path(cfg.cookies_file).expanduser().is_file():
        # yt-dlp would skip a missing file silently (or fail after downloading, on saving cookies back).
        # Transient: the record stays retryable, so a rerun with the path fixed fetches the video.
        raise VideoError("download_failed", f"cookies file {cfg.cookies_file} does not exist", transient=True)
    videos_dir.mkdir(parents=True, exist_ok=True)
    _host_pace(entry.url, cfg.host_interval_s)
    errors: list[str] = []
    refused: list[VideoError] = []
    with yt_dlp.YoutubeDL(_options(entry, videos_dir, cfg, errors, progress, refused)) as ydl:
        try:
            info = ydl.extract_info(entry.url, download=True)
        except DownloadError as exc:
            # yt-dlp's text may lack the cause ("Cannot write video metadata to JSON file ..."); its exc_info has it.
            if (cause := out_of_space_cause(exc)) is not None:
                raise _disk_full(str(exc) or "; ".join(errors), cause) from exc
            raise _classify(str(exc) or "; ".join(errors)) from exc
        except Exception as exc:  # yt-dlp raises a wide range of types on odd input
            if (cause := out_of_space_cause(exc)) is not None:
                raise _disk_full(f"{type(exc).__name__}: {exc}", cause) from exc
            raise _classify(f"{type(exc).__name__}: {exc}") from exc
    if refused:
        raise refused[0]
    if info is None or "entries" in info:
        raise VideoError("download_failed", f"{entry.url} is not a single video (playlist or nothing)")
    path = _downloaded_path(info, ydl)
    if path is None or not path.is_file():
        raise VideoError("download_failed", f"yt-dlp reported success but no file for {entry.url}")
    info_path = _info_path(path)
    if info_path is not None:
        remove_stale_temps(info_path.parent, info_path.name)  # from a run killed while redacting it
        _redact_info_json(info_path)
    archive.add(entry.video_id, path.name)
    return DownloadResult(path, info_path, cached=False)


# ------------------------------------------------------------------ local sources


def local_source(url: str) -> Path | None:
    """The path of a local source (an absolute path or a file:// URL), None for anything else."""
    if url.startswith("/"):
        return Path(url)
    parsed = urlparse(url)
    if parsed.scheme.lower() != "file":
        return None
    if parsed.netloc not in ("", "localhost"):
        raise VideoError("local_path_refused", f"{url}: a file:// URL naming a host is not a local file")
    return Path(url2pathname(parsed.path))


def allowed_local_path(path: Path, cfg: DownloadConfig) -> Path:
    """`path` with symlinks and `..` resolved, when that lies under one of `cfg.local_roots`; else refused."""
    resolved = Path(os.path.realpath(path))
    roots = [Path(os.path.realpath(Path(root).expanduser())) for root in cfg.local_roots]
    if not any(resolved == root or resolved.is_relative_to(root) for root in roots):
        where = ", ".join(map(str, roots)) if roots else "none configured"
        raise VideoError(
            "local_path_refused",
            f"{path} (resolved: {resolved}) is not under download.local_roots ({where}): add its directory there "
            "to use local files",
        )
    return resolved


def link_local(entry: CatalogEntry, source: Path, videos_dir: Path, cfg: DownloadConfig) -> DownloadResult:
    """Make videos_dir/<video_id><suffix> the file `source` without copying it: a hard link on the same
    filesystem, else a symlink (read in place). Nothing is created unless `source` is allowed."""
    resolved = allowed_local_path(source, cfg)
    if not resolved.exists():
        raise VideoError("download_failed", f"local file {source} does not exist")
    if not resolved.is_file():
        raise VideoError("not_a_video", f"{source} is not a regular file")
    target = videos_dir / f"{entry.video_id}{resolved.suffix}"
    archive = DownloadArchive(videos_dir / "archive.tsv")
    if target.is_file() and os.path.samefile(target, resolved) and archive.lookup(entry.video_id) == target:
        return DownloadResult(target, None, cached=True)
    videos_dir.mkdir(parents=True, exist_ok=True)
    temp = videos_dir / f".{entry.video_id}.link-{os.getpid()}-{threading.get_ident()}"
    temp.unlink(missing_ok=True)
    try:
        os.link(resolved, temp)
    except OSError as exc:
        if out_of_space_cause(exc) is not None:
            raise  # disk_full (download_video)
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EACCES):
            raise VideoError("download_failed", f"cannot link {source}: {exc}") from exc
        os.symlink(resolved, temp)  # another filesystem (or no hard links there): read it in place
    os.replace(temp, target)
    archive.add(entry.video_id, target.name)
    return DownloadResult(target, None, cached=False)


# ------------------------------------------------------------------ yt-dlp options


def js_runtimes(cfg: DownloadConfig) -> dict[str, dict[str, str]]:
    """yt-dlp's `js_runtimes`: the configured runtime with an explicit path where one is known."""
    if cfg.js_runtime is None:
        return {}
    path = cfg.js_runtime_path
    if path is None and cfg.js_runtime == "deno":
        path = bundled_deno()
    return {cfg.js_runtime: {"path": str(Path(path).expanduser())} if path else {}}


def bundled_deno() -> str | None:
    """The Deno binary of the `deno` package in this environment (found from Python, not from PATH)."""
    try:
        import deno  # type: ignore[import-not-found, unused-ignore]

        return str(deno.find_deno_bin())
    except (ImportError, FileNotFoundError):
        return None


_host_lock = threading.Lock()
_host_next: dict[str, float] = {}


def host_key(url: str) -> str:
    """The host a pace applies to: www./m. dropped, YouTube's short and embed hosts counted as youtube.com."""
    host = (urlparse(url).hostname or "").lower()
    for prefix in ("www.", "m.", "music."):
        host = host.removeprefix(prefix)
    return "youtube.com" if host in ("youtu.be", "youtube-nocookie.com") else host


def _host_pace(url: str, interval_s: float) -> None:
    """Wait until `interval_s` has passed since the last download start from the same host (this process)."""
    if interval_s <= 0:
        return
    key = host_key(url)
    with _host_lock:
        now = time.monotonic()
        start = max(now, _host_next.get(key, now))
        _host_next[key] = start + interval_s  # reserve the slot, then sleep outside the lock
    if start > now:
        time.sleep(start - now)


def _options(
    entry: CatalogEntry,
    videos_dir: Path,
    cfg: DownloadConfig,
    errors: list[str],
    progress: ProgressFn | None,
    refused: list[VideoError] | None = None,
) -> dict[str, Any]:
    opts: dict[str, Any] = {
        "format": cfg.format,
        "paths": {"home": str(videos_dir)},
        # File names come from catalog ids, never titles.
        "outtmpl": {"default": f"{entry.video_id}.%(ext)s", "infojson": f"{entry.video_id}"},
        "writeinfojson": True,
        "noplaylist": True,
        "quiet": True,
        "noprogress": True,
        "no_warnings": True,
        "retries": 2,
        "socket_timeout": cfg.socket_timeout_s,
        # Local files never reach yt-dlp (see link_local); a redirect to file:// must not read the disk either.
        "enable_file_urls": False,
        "js_runtimes": js_runtimes(cfg),
        "match_filter": _refuse_live(refused if refused is not None else []),
        "logger": _ErrorLog(errors),
        "progress_hooks": [_progress_hook(progress)] if progress else [],
    }
    if cfg.rate_limit:
        opts["ratelimit"] = parse_bytes(cfg.rate_limit)
    if cfg.cookies_file:
        opts["cookiefile"] = cfg.cookies_file
    if cfg.extractor_args:
        opts["extractor_args"] = copy.deepcopy(cfg.extractor_args)
    if cfg.proxy:
        opts["proxy"] = cfg.proxy
    if cfg.sleep_requests_s:
        opts["sleep_interval_requests"] = cfg.sleep_requests_s
    return opts


def _refuse_live(refused: list[VideoError]) -> Callable[..., str | None]:
    """yt-dlp match filter: a live stream would record until it ends, an upcoming one has nothing yet."""

    def check(info: dict[str, Any], *, incomplete: bool = False) -> str | None:
        status = info.get("live_status") or ("is_live" if info.get("is_live") else None)
        if status == "is_live":
            refused.append(
                VideoError(
                    "live_stream",
                    f"{info.get('id')} is live now: a later run fetches the recording once the stream has ended",
                    transient=True,
                )
            )
        elif status in ("is_upcoming", "post_live"):
            refused.append(
                VideoError(
                    "not_yet_available",
                    f"{info.get('id')} is {status.replace('_', ' ')}: not downloadable yet; a later run retries it",
                    transient=True,
                )
            )
        else:
            return None
        return refused[-1].message

    return check


def _downloaded_path(info: dict[str, Any], ydl: yt_dlp.YoutubeDL) -> Path | None:
    for item in info.get("requested_downloads") or []:
        if item.get("filepath"):
            return Path(item["filepath"])
    name = ydl.prepare_filename(info)
    return Path(name) if name else None


def _info_path(video: Path) -> Path | None:
    info = video.with_name(video.stem + ".info.json")
    return info if info.is_file() else None


def _redact_info_json(path: Path) -> None:
    """yt-dlp copies the URL, credentials and tokens included, into the .info.json: keep them out of the data."""
    text = path.read_text(encoding="utf-8")
    clean = redact_secrets(text)
    if clean != text:
        write_bytes_atomic(path, clean.encode("utf-8"))


def _classify(message: str) -> VideoError:
    text = redact_secrets(message.replace("ERROR: ", "").strip())
    lower = text.lower().replace("\u2019", "'")
    if mentions_out_of_space(lower):  # first: the paths in such a text may hold any of the words below
        return VideoError(DISK_FULL, text, transient=True)  # same reason as a full disk while writing shards
    if "unsupported url" in lower:
        return VideoError("not_a_video", text)
    for reason, keys, transient, advice in _NAMED:
        if any(key in lower for key in keys):
            return VideoError(reason, f"{text} ({advice})" if advice else text, transient=transient)
    if "requested format is not available" in lower:
        return VideoError("download_failed", f"{text} ({_FORMAT_HINT})")
    return VideoError("download_failed", text, transient=any(key in lower for key in _TRANSIENT))


def _disk_full(what: str, cause: OSError) -> VideoError:
    """`disk_full`, transient: the next run (not this one: space is not freed in seconds) tries the video again."""
    text = redact_secrets(what.replace("ERROR: ", "").strip())
    detail = redact_secrets(str(cause))
    return VideoError(DISK_FULL, text if detail in text else f"{text}: {detail}", transient=True)


def remove_partial_download(videos_dir: Path, video_id: str) -> None:
    """Delete what an attempt that ran out of space left of `video_id`: yt-dlp's .part and .ytdl files, a torn
    .info.json, a half-made link. Nothing else is this video's: it is not in the archive (or its file is gone),
    and ids hold no dot, so `<video_id>.*` names only its files."""
    for pattern in (f"{video_id}.*", f".{video_id}.*"):
        for path in videos_dir.glob(pattern):
            with contextlib.suppress(OSError):
                path.unlink()


class _ErrorLog:
    """yt-dlp logger that keeps error lines for the failure record and stays quiet otherwise."""

    def __init__(self, sink: list[str]) -> None:
        self.sink = sink

    def debug(self, msg: str) -> None:
        pass

    def info(self, msg: str) -> None:
        pass

    def warning(self, msg: str) -> None:
        pass

    def error(self, msg: str) -> None:
        self.sink.append(msg)


def _progress_hook(progress: ProgressFn) -> Callable[[dict[str, Any]], None]:
    def hook(status: dict[str, Any]) -> None:
        total = status.get("total_bytes") or status.get("total_bytes_estimate")
        done = status.get("downloaded_bytes") or 0
        if status.get("status") == "finished":
            progress(1.0, f"downloaded {done / 1e6:.1f} MB")
        elif total:
            progress(done / total, f"{done / 1e6:.1f}/{total / 1e6:.1f} MB")

    return hook
