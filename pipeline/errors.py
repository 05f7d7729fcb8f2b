"""The one exception type for bad input: a named reason plus a readable message."""
from __future__ import annotations


class VideoError(Exception):
    """A video that cannot be used; `reason` is the status recorded in stats/videos.parquet."""

    def __init__(self, reason: str, message: str, *, transient: bool = False):
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.transient = transient  # worth retrying (timeouts, 5xx, throttling)

    def __str__(self) -> str:
        return f"{self.reason}: {self.message}"
