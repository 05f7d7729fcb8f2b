"""Tests for pipeline.media.decode: output sizing and the streaming PyAV FrameReader."""

from __future__ import annotations

import gc
import os
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest

from pipeline.errors import VideoError
from pipeline.media.decode import DecodedFrame, FrameReader, deinterlace_parity, output_size
from pipeline.media.probe import probe_video

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


def _open_paths() -> set[str]:
    """Files this process holds open, so tests can check the reader let go of its video."""
    fds = Path("/proc/self/fd")
    out = set()
    for fd in fds.iterdir():
        try:
            out.add(os.readlink(fd))
        except OSError:
            continue
    return out


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


def test_early_close_releases_the_video(video_dir):
    path = video_dir / "walk.mp4"
    reader = FrameReader(path, fps=10, start_s=0.0, end_s=6.0, size=SIZE)
    it = iter(reader)
    got = [next(it), next(it)]
    assert str(path) in _open_paths()  # decoding is under way
    it.close()  # what a `break` out of a for loop does
    assert str(path) not in _open_paths()
    assert [f.index for f in got] == [0, 1]
    assert reader.frames_read >= 2  # a few more may have been decoded ahead
    # the reader is reusable: a new iteration opens the file again and reads everything
    assert len(list(reader)) == 60


def test_break_in_a_for_loop_releases_the_video(video_dir):
    for frame in FrameReader(video_dir / "walk.mp4", fps=10, start_s=0.0, end_s=6.0, size=SIZE):
        if frame.index == 1:
            break
    gc.collect()
    assert str(video_dir / "walk.mp4") not in _open_paths()


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


def test_a_failure_releases_the_video(made):
    with pytest.raises(VideoError):
        list(FrameReader(made / "random.mp4", fps=10, start_s=0.0, end_s=2.0, size=SIZE))
    assert str(made / "random.mp4") not in _open_paths()


# ------------------------------------------------------------------ damaged media


def _decode(path: Path, **kw) -> tuple[FrameReader, dict[int, DecodedFrame]]:
    options = {"fps": 10, "start_s": 0.0, "end_s": 6.0, "size": (320, 180), **kw}
    reader = FrameReader(path, **options)
    return reader, {f.index: f for f in reader}


def _mean_abs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(int) - b.astype(int)).mean())


@pytest.mark.parametrize("name", ["overwritten", "flipped"])
def test_damaged_data_marks_frames_up_to_the_next_clean_keyframe(damaged_media, name):
    _, clean = _decode(damaged_media["clean"])
    reader, frames = _decode(damaged_media[name])
    damaged = sorted(i for i, f in frames.items() if f.damaged)
    assert damaged, "the damage was not seen"
    # The damage was real: some of the marked frames are smeared against the clean decode ...
    assert max(_mean_abs(frames[i].image, clean[i].image) for i in damaged) > 5.0
    # ... and every frame not marked is the clean picture: nothing smeared leaks through.
    for index, frame in frames.items():
        if not frame.damaged:
            assert _mean_abs(frame.image, clean[index].image) < 1.0, index
    # Keyframes come every second (10 slots): damage ends at one, and the clean frames after it are kept.
    assert (damaged[-1] + 1) % 10 == 0
    assert any(i > damaged[-1] and not frames[i].damaged for i in frames)
    assert reader.frames_damaged == len(damaged)
    assert reader.warning is not None and f"{len(damaged)} sampled frames marked damaged" in reader.warning


def test_clean_decode_marks_nothing(damaged_media):
    reader, frames = _decode(damaged_media["clean"])
    assert sorted(frames) == list(range(60))
    assert not any(f.damaged for f in frames.values()) and reader.warning is None


def test_a_file_cut_short_keeps_its_frames_and_warns(damaged_media):
    reader, frames = _decode(damaged_media["cut"])
    assert 10 < len(frames) < 60 and sorted(frames) == list(range(len(frames)))
    assert reader.warning is not None and "data ends at" in reader.warning


def _combing(image: np.ndarray) -> float:
    """How much neighbouring rows (opposite fields) differ beyond rows two apart (same field)."""
    gray = image.astype(float).mean(axis=2)
    return float(np.abs(gray[1:-1] - gray[:-2]).mean() - np.abs(gray[2:] - gray[:-2]).mean() / 2)


def test_interlaced_source_is_deinterlaced(damaged_media):
    path = damaged_media["interlaced"]
    assert deinterlace_parity(probe_video(path).field_order) == "tff"
    _, woven = _decode(path, end_s=3.0)
    _, fixed = _decode(path, end_s=3.0, parity="tff")
    assert sorted(woven) == sorted(fixed)
    combing = [_combing(f.image) for f in woven.values()]
    assert np.median([_combing(f.image) for f in fixed.values()]) < 0.5 * np.median(combing)


@pytest.mark.parametrize("field_order, parity", [("tt", "tff"), ("tb", "tff"), ("bb", "bff"), ("bt", "bff")])
def test_deinterlace_parity_follows_the_field_order(field_order, parity):
    assert deinterlace_parity(field_order) == parity


@pytest.mark.parametrize("field_order", ["progressive", None, "unknown"])
def test_progressive_and_unknown_sources_are_left_alone(field_order):
    assert deinterlace_parity(field_order) is None
