"""The one exception type for bad input: a named reason plus a readable message."""

from __future__ import annotations

import re


class VideoError(Exception):
    """A video that cannot be used; `reason` is the status recorded in stats/videos.parquet."""

    def __init__(self, reason: str, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.transient = transient  # worth retrying (timeouts, 5xx, throttling)

    def __str__(self) -> str:
        return f"{self.reason}: {self.message}"


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
