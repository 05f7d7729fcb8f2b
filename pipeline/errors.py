"""The one exception type for bad input (a named reason plus a readable message), and telling a full disk."""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Iterator


class VideoError(Exception):
    """A video that cannot be used; `reason` is the status recorded in stats/videos.parquet."""

    def __init__(self, reason: str, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.transient = transient  # worth retrying (timeouts, 5xx, throttling)

    def __str__(self) -> str:
        return f"{self.reason}: {self.message}"


DISK_FULL = "disk_full"  # the reason of a video whose work ran out of space: transient, the next run retries it

# A full disk, a quota, a file-size limit (RLIMIT_FSIZE): the same to a writer, and none of them the video's fault.
OUT_OF_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
_OUT_OF_SPACE_TEXTS = tuple(os.strerror(code).lower() for code in OUT_OF_SPACE_ERRNOS)


class DiskFull(RuntimeError):
    """The data root ran out of space where no video's record can carry it (publish): the run cannot finish.

    Its message is one line for the user: where, how much space is left, and that nothing published was lost.
    """


def mentions_out_of_space(text: str) -> bool:
    """Whether an error's text is a full disk's (pyarrow and yt-dlp carry the errno only in their texts)."""
    lower = text.lower()
    return any(phrase in lower for phrase in _OUT_OF_SPACE_TEXTS)


def out_of_space_cause(exc: BaseException | None) -> OSError | None:
    """The out-of-space OSError `exc` is or wraps (its cause or context, or yt-dlp's `exc_info`), else None."""
    for error in _chain(exc):
        if isinstance(error, OSError) and (error.errno in OUT_OF_SPACE_ERRNOS or mentions_out_of_space(str(error))):
            return error
    return None


def is_out_of_space(exc: BaseException | None) -> bool:
    """A full disk, a quota or a file-size limit, raised directly or wrapped (yt-dlp's DownloadError wraps the
    OSError it met; pyarrow's OSErrors may carry the errno only in their text): the one test every stage uses."""
    return out_of_space_cause(exc) is not None


def _chain(exc: BaseException | None) -> Iterator[BaseException]:
    seen: set[int] = set()
    pending = [exc]
    while pending:
        error = pending.pop(0)
        if error is None or id(error) in seen:
            continue
        seen.add(id(error))
        yield error
        wrapped = getattr(error, "exc_info", None)  # yt_dlp.utils.DownloadError: sys.exc_info() where it was raised
        if isinstance(wrapped, tuple) and len(wrapped) == 3 and isinstance(wrapped[1], BaseException):
            pending.append(wrapped[1])
        pending += [error.__cause__, error.__context__]


def ffmpeg_message(stderr: bytes | str | None, lines: int = 3) -> str:
    """The last lines of ffmpeg/ffprobe stderr, without object addresses, so messages are stable across runs."""
    text = stderr.decode(errors="replace") if isinstance(stderr, bytes) else (stderr or "")
    kept = re.sub(r" @ 0x[0-9a-f]+", "", text).strip().splitlines()
    return " | ".join(kept[-lines:])


# user:password@ (or a bare token@) after a scheme, user:password@host without one (yt-dlp's
# webpage_url_domain), and the values of query parameters whose names say they are secret.
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s@'\"]+@|(?<![\w/@])[^\s/@:'\"]+:[^\s/@'\"]+@(?=[\w.\[-])")
_SECRET_QUERY = re.compile(
    r"(?i)([?&;][\w.-]*(?:token|key|sig|signature|password|passwd|pass|secret|credential|"
    r"auth)[\w.-]*=)[^&#\s'\"]*"
)


def redact_secrets(text: str) -> str:
    """`text` with credentials in URLs (user:password@, token query parameters) replaced by ***."""
    text = _USERINFO.sub(lambda m: f"{m.group(1) or ''}***@", text)
    return _SECRET_QUERY.sub(r"\1***", text)
