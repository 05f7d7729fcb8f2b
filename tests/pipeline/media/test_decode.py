"""Tests for pipeline.media.decode: output sizing and the streaming ffmpeg FrameReader."""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest

import pipeline.media.decode as decode
from pipeline.errors import VideoError
from pipeline.media.decode import DecodedFrame, FrameReader, output_size

SIZE = (160, 96)


def _ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *args], check=True)


@pytest.fixture(scope="module")
def made(video_dir, tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("decode")
    _ffmpeg("-i", str(video_dir / "walk.mp4"), "-c", "copy", "-metadata:s:v:0", "rotate=90", str(d / "rotated.mp4"))
    (d / "random.mp4").write_bytes(np.random.default_rng(1).bytes(50_000))
    (d / "page.html").write_text("<html><body>not a video</body></html>")
    # moov first, then cut in half: the first frames decode, then the demuxer hits the end of the data
    _ffmpeg("-i", str(video_dir / "walk.mp4"), "-c", "copy", "-movflags", "+faststart", str(d / "faststart.mp4"))
    data = (d / "faststart.mp4").read_bytes()
    (d / "half.mp4").write_bytes(data[: len(data) // 2])
    return d


@pytest.fixture
def spawned(monkeypatch) -> list[subprocess.Popen]:
    """Every process FrameReader starts, so tests can check it was reaped."""
    started: list[subprocess.Popen] = []

    class Recording(subprocess.Popen):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            started.append(self)

    monkeypatch.setattr(decode.subprocess, "Popen", Recording)
    return started


# ------------------------------------------------------------------ output_size


@pytest.mark.parametrize(
    "width, height, max_height, expected",
    [
        (1920, 1080, 720, (1280, 720)),
        (1920, 1080, 360, (640, 360)),
        (1080, 1920, 640, (360, 640)),  # portrait
        (1000, 1001, 500, (500, 500)),  # 499.5 rounded to the nearest even width
        (640, 480, 96, (128, 96)),
        (160, 96, 96, (160, 96)),  # already at the bound
        (160, 96, 720, (160, 96)),  # never upscaled
        (1920, 1080, None, (1920, 1080)),  # no bound
        (4000, 10, 5, (2000, 5)),
        (10, 4000, 16, (2, 16)),  # at least 2 wide
    ],
)
def test_output_size(width, height, max_height, expected):
    assert output_size(width, height, max_height) == expected


@pytest.mark.parametrize("width, height", [(1920, 1080), (1280, 720), (1000, 1001), (333, 999), (720, 1280)])
@pytest.mark.parametrize("max_height", [96, 101, 360, 480])
def test_output_size_is_even_aspect_keeping_and_never_up(width, height, max_height):
    w, h = output_size(width, height, max_height)
    assert h == min(height, max_height)
    assert h <= height and w <= width
    if height > max_height:
        assert w % 2 == 0
        assert abs(w / h - width / height) <= 2 / h  # within one even step of the source aspect


# ------------------------------------------------------------------ FrameReader


def test_frames_in_a_window(video_dir):
    reader = FrameReader(video_dir / "walk.mp4", fps=10, start_s=1.0, end_s=4.0, size=SIZE)
    frames = list(reader)
    assert len(frames) == 30 == reader.frames_read
    assert all(isinstance(f, DecodedFrame) for f in frames)
    assert [f.index for f in frames] == list(range(10, 40))
    for k, f in enumerate(frames):
        assert f.timestamp_s == pytest.approx(1.0 + k / 10)
        assert f.index == round(f.timestamp_s * 10)
        assert f.image.shape == (96, 160, 3)
        assert f.image.dtype == np.uint8
    assert reader.warning is None
    # consecutive frames of a moving camera differ; a stuck pipe would repeat one frame
    assert all(np.any(a.image != b.image) for a, b in zip(frames, frames[1:]))


def test_window_frames_match_a_full_decode(video_dir):
    """An index names the same picture whatever window it was decoded in."""
    full = {f.index: f.image for f in FrameReader(video_dir / "walk.mp4", fps=10, start_s=0.0, end_s=6.0, size=SIZE)}
    assert sorted(full) == list(range(60))
    window = list(FrameReader(video_dir / "walk.mp4", fps=10, start_s=2.3, end_s=3.3, size=SIZE))
    assert [f.index for f in window] == list(range(23, 33))
    for f in window:
        assert np.abs(f.image.astype(int) - full[f.index]).mean() < 1.0
        assert np.abs(f.image.astype(int) - full[f.index + 1]).mean() > 3.0  # and not its neighbour


def test_images_are_bgr(tmp_path):
    # A pure blue clip must come out with the blue channel first (OpenCV's BGR order).
    path = tmp_path / "blue.mp4"
    _ffmpeg("-f", "lavfi", "-i", "color=c=blue:s=64x48:r=10:d=1", "-c:v", "libx264", "-pix_fmt", "yuv420p", str(path))
    frames = list(FrameReader(path, fps=10, start_s=0.0, end_s=1.0, size=(64, 48)))
    b, g, r = frames[0].image.reshape(-1, 3).mean(axis=0)
    assert b > 200 and g < 40 and r < 40


def test_requested_size_is_honoured(video_dir):
    frames = list(FrameReader(video_dir / "walk.mkv", fps=5, start_s=0.0, end_s=2.0, size=(80, 48)))
    assert len(frames) == 10
    assert {f.image.shape for f in frames} == {(48, 80, 3)}


def test_rotated_video_decodes_upright_at_its_display_size(video_dir, made):
    plain = next(iter(FrameReader(video_dir / "walk.mp4", fps=10, start_s=1.0, end_s=2.0, size=SIZE)))
    rotated = next(iter(FrameReader(made / "rotated.mp4", fps=10, start_s=1.0, end_s=2.0, size=(96, 160))))
    assert rotated.image.shape == (160, 96, 3)
    # ffmpeg applied the display matrix (a quarter turn), it did not squash the stored frame
    turned = np.rot90(plain.image, k=1)
    assert np.abs(rotated.image.astype(int) - turned).mean() < 1.0


def test_early_close_kills_and_reaps_ffmpeg(video_dir, spawned):
    reader = FrameReader(video_dir / "walk.mp4", fps=10, start_s=0.0, end_s=6.0, size=SIZE)
    it = iter(reader)
    got = [next(it), next(it)]
    assert len(spawned) == 1
    proc = spawned[0]
    assert proc.poll() is None  # still running: 58 frames do not fit in a pipe buffer
    it.close()  # what a `break` out of a for loop does
    assert proc.returncode == -signal.SIGKILL  # stopped, not left to decode the rest
    assert not Path(f"/proc/{proc.pid}").exists()  # reaped: no zombie left behind
    assert proc.stdout.closed and proc.stderr.closed
    assert [f.index for f in got] == [0, 1]
    assert reader.frames_read == 2
    # the reader is reusable: a new iteration starts a new process and reads everything
    assert len(list(reader)) == 60
    assert len(spawned) == 2 and spawned[1].returncode == 0


def test_break_in_a_for_loop_reaps_ffmpeg(video_dir, spawned):
    for frame in FrameReader(video_dir / "walk.mp4", fps=10, start_s=0.0, end_s=6.0, size=SIZE):
        if frame.index == 1:
            break
    gc.collect()
    assert len(spawned) == 1 and spawned[0].returncode is not None
    assert not Path(f"/proc/{spawned[0].pid}").exists()


def test_no_resource_warnings(video_dir):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert len(list(FrameReader(video_dir / "walk.mp4", fps=10, start_s=0.0, end_s=1.0, size=SIZE))) == 10
        for _ in FrameReader(video_dir / "walk.mp4", fps=10, start_s=0.0, end_s=6.0, size=SIZE):
            break
        gc.collect()
    assert [w for w in caught if issubclass(w.category, ResourceWarning)] == []


def test_window_past_the_end_raises_no_frames(video_dir):
    reader = FrameReader(video_dir / "walk.mp4", fps=10, start_s=10.0, end_s=12.0, size=SIZE)
    with pytest.raises(VideoError) as caught:
        list(reader)
    assert caught.value.reason == "no_frames"
    assert "walk.mp4" in caught.value.message
    assert caught.value.transient is False


@pytest.mark.parametrize("name", ["random.mp4", "page.html"])
def test_undecodable_file_raises(made, name):
    with pytest.raises(VideoError) as caught:
        list(FrameReader(made / name, fps=10, start_s=0.0, end_s=2.0, size=SIZE))
    assert caught.value.reason in ("decode_failed", "no_frames")
    assert name in caught.value.message
    assert "0x" not in caught.value.message.replace(str(made), "")


def test_missing_file_raises_decode_failed(tmp_path):
    with pytest.raises(VideoError) as caught:
        list(FrameReader(tmp_path / "missing.mp4", fps=10, start_s=0.0, end_s=2.0, size=SIZE))
    assert caught.value.reason == "decode_failed"


def test_damaged_tail_keeps_frames_and_warns(made):
    reader = FrameReader(made / "half.mp4", fps=10, start_s=0.0, end_s=6.0, size=SIZE)
    frames = list(reader)
    assert 5 < len(frames) < 60
    assert [f.index for f in frames] == list(range(len(frames)))
    assert reader.warning is not None and f"after {len(frames)} frames" in reader.warning
    assert " @ 0x" not in reader.warning


def test_no_ffmpeg_left_running_after_a_failure(made, spawned):
    with pytest.raises(VideoError):
        list(FrameReader(made / "random.mp4", fps=10, start_s=0.0, end_s=2.0, size=SIZE))
    assert len(spawned) == 1 and spawned[0].returncode not in (None, 0)
    assert not os.path.exists(f"/proc/{spawned[0].pid}")
