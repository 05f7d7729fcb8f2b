"""Fetch one catalog entry with yt-dlp's Python API into videos/<dataset>/<video_id>.<ext>."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yt_dlp
from yt_dlp.utils import DownloadError, parse_bytes

from pipeline.config import DownloadConfig
from pipeline.errors import VideoError, redact_secrets
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
    "http error 429",
    "connection reset",
    "remote end closed",
    "incompleteread",
    "too many requests",
    "connection refused",
    "not a bot",
    "try again later",
)
# What YouTube (through yt-dlp) says about a video nobody may download: private, removed, gone with its
# account, blocked for this country, age-gated, members only.
_UNAVAILABLE = (
    "private video",
    "video is private",
    "video unavailable",
    "removed by the uploader",
    "no longer available",
    "account associated with this video has been terminated",
    "has been removed for violating",
    "not available from your location",
    "not made this video available in your country",
    "confirm your age",
    "members-only",
    "available to this channel's members",
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
    """One download attempt; raises VideoError (transient=True when a retry may succeed)."""
    videos_dir = Path(videos_dir)
    archive = DownloadArchive(videos_dir / "archive.tsv")
    if (done := archive.lookup(entry.video_id)) is not None:
        return DownloadResult(done, _info_path(done), cached=True)
    if cfg.cookies_file and not Path(cfg.cookies_file).expanduser().is_file():
        # yt-dlp would skip a missing file silently (or fail after downloading, on saving cookies back).
        # Transient: the record stays retryable, so a rerun with the path fixed fetches the video.
        raise VideoError("download_failed", f"cookies file {cfg.cookies_file} does not exist", transient=True)
    videos_dir.mkdir(parents=True, exist_ok=True)
    errors: list[str] = []
    with yt_dlp.YoutubeDL(_options(entry, videos_dir, cfg, errors, progress)) as ydl:
        try:
            info = ydl.extract_info(entry.url, download=True)
        except DownloadError as exc:
            raise _classify(str(exc) or "; ".join(errors)) from exc
        except Exception as exc:  # yt-dlp raises a wide range of types on odd input
            raise _classify(f"{type(exc).__name__}: {exc}") from exc
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


def _options(
    entry: CatalogEntry, videos_dir: Path, cfg: DownloadConfig, errors: list[str], progress: ProgressFn | None
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
        "enable_file_urls": entry.url.startswith("file:"),
        "logger": _ErrorLog(errors),
        "progress_hooks": [_progress_hook(progress)] if progress else [],
    }
    if cfg.rate_limit:
        opts["ratelimit"] = parse_bytes(cfg.rate_limit)
    if cfg.cookies_file:
        opts["cookiefile"] = cfg.cookies_file
    return opts


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
    lower = text.lower()
    if "unsupported url" in lower:
        return VideoError("not_a_video", text)
    if any(key in lower for key in _UNAVAILABLE):
        return VideoError("video_unavailable", text)
    if "no space left on device" in lower or "file too large" in lower:
        return VideoError("disk_full", text, transient=True)  # same reason as a full disk while writing shards
    return VideoError("download_failed", text, transient=any(key in lower for key in _TRANSIENT))


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
