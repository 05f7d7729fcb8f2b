"""pipeline.errors: stable ffmpeg messages, credentials kept out of anything written or logged, a full disk."""

from __future__ import annotations

import errno

import pytest

from pipeline.errors import is_out_of_space, redact_secrets


@pytest.mark.parametrize(
    "text, expected",
    [
        ("http://alice:pw@127.0.0.1:8000/v.mp4", "http://***@127.0.0.1:8000/v.mp4"),
        ("https://ghp_TOKEN@example.com/v.mp4", "https://***@example.com/v.mp4"),
        ("alice:pw@127.0.0.1:8000", "***@127.0.0.1:8000"),  # yt-dlp's webpage_url_domain
        ("https://h/v.mp4?token=abc&v=1", "https://h/v.mp4?token=***&v=1"),
        (
            "https://b.s3.amazonaws.com/k?X-Amz-Credential=AK&X-Amz-Signature=f00",
            "https://b.s3.amazonaws.com/k?X-Amz-Credential=***&X-Amz-Signature=***",
        ),
        ("ERROR: Unsupported URL: http://u:p@h/p.html", "ERROR: Unsupported URL: http://***@h/p.html"),
    ],
)
def test_credentials_in_urls_are_redacted(text, expected):
    assert redact_secrets(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "https://www.youtube.com/watch?v=oSmUI3m2kLk",
        "http://127.0.0.1:8000/walk.mp4",
        "write to bob@example.com",
        "moov atom not found | /data/videos/demo/truncated.mp4: Invalid data found",
    ],
)
def test_text_without_credentials_is_unchanged(text):
    assert redact_secrets(text) == text


def _wrapped_by_yt_dlp(cause: OSError) -> Exception:
    """A DownloadError as yt-dlp raises it from an except block: its text need not name the cause."""
    import sys

    from yt_dlp.utils import DownloadError

    try:
        raise cause
    except OSError:
        return DownloadError("ERROR: Cannot write video metadata to JSON file /d/v.info.json", sys.exc_info())


def _caused(cause: BaseException) -> Exception:
    try:
        raise RuntimeError("writing a table") from cause
    except RuntimeError as exc:
        return exc


@pytest.mark.parametrize(
    "exc, full",
    [
        (OSError(errno.ENOSPC, "No space left on device"), True),
        (OSError(errno.EDQUOT, "Disk quota exceeded"), True),
        (OSError(errno.EFBIG, "File too large"), True),
        # pyarrow: the errno only in its text
        (OSError("[Errno 28] Error writing bytes to file. Detail: [errno 28] No space left on device"), True),
        (_wrapped_by_yt_dlp(OSError(errno.ENOSPC, "No space left on device")), True),
        (_caused(OSError(errno.ENOSPC, "No space left on device")), True),
        (OSError(errno.EACCES, "Permission denied"), False),
        (_wrapped_by_yt_dlp(OSError(errno.ECONNRESET, "Connection reset by peer")), False),
        (RuntimeError("No space left on device"), False),  # only an OSError is a full disk, whatever a text says
        (None, False),
    ],
)
def test_out_of_space_is_told_apart_also_when_wrapped(exc, full):
    assert is_out_of_space(exc) is full
