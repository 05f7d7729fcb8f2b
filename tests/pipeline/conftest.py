"""Fixtures of the pipeline tests: a full disk, injected where a stage writes."""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest


def enospc(path: str | Path) -> OSError:
    """The error a write on a full disk raises."""
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


class _FillsUp:
    """A file that takes `room` bytes, then fails as a full disk does (the bytes that fitted stay written)."""

    def __init__(self, stream: Any, name: str, room: int) -> None:
        self._stream = stream
        self._name = name
        self._room = room

    def write(self, data: bytes) -> int:
        if len(data) > self._room:
            self._stream.write(data[: self._room])
            self._room = 0
            raise enospc(self._name)
        self._room -= len(data)
        return int(self._stream.write(data))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def _named(path: str | Path, video_id: str) -> bool:
    return Path(path).name.split(".")[0] == video_id  # catalog ids hold no dot: v.mp4.part, v.info.json, v.jpg


STAGES = ("video", "info_json", "preview", "record", "publish")


@pytest.fixture
def full_disk(monkeypatch) -> Callable[[str, str], None]:
    """full_disk(stage, name): from now on, one write of this test fails with ENOSPC, as on a full disk.

    Stages: "video" (yt-dlp writing the video's .part file, after 4 KiB), "info_json" (yt-dlp writing its
    .info.json), "preview" (the contact sheet), "record" (the video's record, ok or failure), each for the video
    `name`; "publish" (publish writing the stats table stats/<name>.parquet).
    """
    import pipeline.io.data_root as data_root
    import pipeline.video.previews as previews

    def inject(stage: str, name: str) -> None:
        if stage == "video":
            common = sys.modules["yt_dlp.downloader.common"]
            real_open = common.sanitize_open

            def sanitize_open(filename: str, open_mode: str) -> tuple[Any, str]:
                stream, opened = real_open(filename, open_mode)
                return (_FillsUp(stream, opened, room=4096) if _named(opened, name) else stream), opened

            monkeypatch.setattr(common, "sanitize_open", sanitize_open)
        elif stage == "info_json":
            youtube_dl = sys.modules["yt_dlp.YoutubeDL"]
            real_json = youtube_dl.write_json_file

            def write_json_file(obj: Any, fn: str) -> None:
                if _named(fn, name):
                    raise enospc(fn)
                real_json(obj, fn)

            monkeypatch.setattr(youtube_dl, "write_json_file", write_json_file)
        elif stage == "preview":
            real_preview = previews.write_bytes_atomic

            def write_preview(path: str | Path, data: bytes, **kwargs: Any) -> bool:
                if _named(path, name):
                    raise enospc(path)
                return real_preview(path, data, **kwargs)

            monkeypatch.setattr(previews, "write_bytes_atomic", write_preview)
        elif stage in ("record", "publish"):
            real_write = data_root.write_bytes_atomic
            # stats/videos/<dataset>/<name>.json, or stats/<name>.parquet
            where = Path("stats", "videos") if stage == "record" else Path("stats")

            def write_bytes(path: str | Path, data: bytes, **kwargs: Any) -> bool:
                parent = Path(path).parent.parent if stage == "record" else Path(path).parent
                if parent.parts[-len(where.parts) :] == where.parts and _named(path, name):
                    raise enospc(path)
                return real_write(path, data, **kwargs)

            monkeypatch.setattr(data_root, "write_bytes_atomic", write_bytes)
        else:
            raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")

    return inject
