"""pipeline.errors: stable ffmpeg messages and credentials kept out of anything written or logged."""

from __future__ import annotations

import pytest

from pipeline.errors import redact_secrets


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
