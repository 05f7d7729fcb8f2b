"""The flows' shared tasks: which download failures Prefect retries."""

from __future__ import annotations

import pytest
from prefect.states import Failed

from flows.tasks import _retry_transient
from pipeline.errors import VideoError


@pytest.mark.parametrize(
    "error, retried",
    [
        (VideoError("download_failed", "HTTP Error 503", transient=True), True),
        (VideoError("download_failed", "HTTP Error 404", transient=False), False),
        (VideoError("not_a_video", "Unsupported URL"), False),
        # Transient, but not cleared in seconds: the next run retries it (as pipeline.driver does).
        (VideoError("disk_full", "[Errno 28] No space left on device", transient=True), False),
    ],
)
def test_only_transient_download_failures_are_retried(error, retried):
    assert _retry_transient(None, None, Failed(data=error)) is retried
