"""Tests for pipeline.media.probe: stream facts of good videos, named reasons for bad ones."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from pipeline.errors import VideoError
from pipeline.media.probe import VideoInfo, probe_video


def _ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *args], check=True)


@pytest.fixture(scope="module")
def made(video_dir, tmp_path_factory) -> Path:
    """Odd inputs built from the session videos: rotated, variable frame rate, broken, audio only."""
    d = tmp_path_factory.mktemp("probe")
    walk = str(video_dir / "walk.mp4")
    _ffmpeg("-i", walk, "-c", "copy", "-metadata:s:v:0", "rotate=90", str(d / "rotated.mp4"))
    # Variable frame rate: keep 3 frames out of every 10 and let their timestamps through as they are.
    _ffmpeg(
        "-i",
        walk,
        "-vf",
        r"select=lt(mod(n\,10)\,3)",
        "-vsync",
        "vfr",
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-threads",
        "1",
        str(d / "vfr.mp4"),
    )
    (d / "empty.mp4").write_bytes(b"")
    (d / "random.mp4").write_bytes(np.random.default_rng(0).bytes(50_000))
    (d / "truncated.mp4").write_bytes((video_dir / "walk.mp4").read_bytes()[:20_000])
    (d / "page.html").write_text("<html><body><p>no video here</p></body></html>")
    _ffmpeg("-f", "lavfi", "-i", "sine=frequency=440:duration=1", "-c:a", "aac", str(d / "audio.m4a"))
    shutil.copy(video_dir / "walk.mkv", d / "walk.mkv")
    return d


def test_h264_mp4(video_dir):
    info = probe_video(video_dir / "walk.mp4")
    assert isinstance(info, VideoInfo)
    assert (info.width, info.height) == (160, 96)
    assert info.display_size == (160, 96)
    assert info.fps == pytest.approx(20.0)
    assert info.codec == "h264"
    assert info.duration_s == pytest.approx(6.0, abs=0.1)
    assert info.rotation == 0
    assert info.variable_frame_rate is False
    assert "mp4" in info.container


def test_mpeg4_mkv(made):
    # Matroska streams carry no duration of their own: it must come from the container.
    info = probe_video(str(made / "walk.mkv"))  # str paths work too
    assert (info.width, info.height) == (160, 96)
    assert info.fps == pytest.approx(20.0)
    assert info.codec == "mpeg4"
    assert info.duration_s == pytest.approx(4.0, abs=0.1)
    assert info.variable_frame_rate is False
    assert "matroska" in info.container


def test_as_dict_round_trips():
    info = VideoInfo(
        duration_s=1.5,
        fps=10.0,
        width=4,
        height=2,
        codec="h264",
        rotation=270,
        variable_frame_rate=False,
        container="mp4",
    )
    assert VideoInfo(**info.as_dict()) == info
    assert info.display_size == (2, 4)


def test_rotated_video_reports_rotation_and_swapped_display_size(made):
    info = probe_video(made / "rotated.mp4")
    assert info.rotation == 90  # ffprobe 5.1 reports the display matrix of rotate=90 as rotation 90
    assert (info.width, info.height) == (160, 96)  # as stored
    assert info.display_size == (96, 160)
    assert info.fps == pytest.approx(20.0)


def test_variable_frame_rate_is_detected(made):
    info = probe_video(made / "vfr.mp4")
    assert info.variable_frame_rate is True
    # 3 of every 10 frames survive: the average rate is far below the 20 fps time base.
    assert 4.0 < info.fps < 10.0
    assert (info.width, info.height) == (160, 96)
    assert info.duration_s > 4.0


@pytest.mark.parametrize(
    "name, reason",
    [
        ("empty.mp4", "unreadable_video"),
        ("random.mp4", "unreadable_video"),
        ("truncated.mp4", "unreadable_video"),
        ("page.html", "unreadable_video"),
        ("missing.mp4", "unreadable_video"),
        ("audio.m4a", "no_video_stream"),
    ],
)
def test_bad_inputs_raise_named_reasons(made, name, reason):
    with pytest.raises(VideoError) as caught:
        probe_video(made / name)
    err = caught.value
    assert err.reason == reason
    assert err.transient is False  # a broken file stays broken
    assert name in err.message
    assert "0x" not in err.message  # no object addresses: messages are stable across runs
    assert str(err).startswith(f"{reason}: ")


def test_audio_only_message_names_the_streams(made):
    with pytest.raises(VideoError, match=r"streams: audio"):
        probe_video(made / "audio.m4a")


@pytest.mark.parametrize("name", ["random.mp4", "truncated.mp4", "page.html"])
def test_ffprobe_failure_message_is_the_error_not_the_banner(made, name):
    with pytest.raises(VideoError) as caught:
        probe_video(made / name)
    message = caught.value.message
    assert "Invalid data found" in message
    assert "lib" not in message.replace(str(made), "")  # no "libavcodec 59. ..." version lines
    assert "version" not in message


def test_probe_finds_where_a_file_cut_short_ends(damaged_media):
    whole = probe_video(damaged_media["clean"])
    assert whole.truncated_at_s is None and whole.usable_duration_s == whole.duration_s
    cut = probe_video(damaged_media["cut"])
    assert cut.duration_s == pytest.approx(whole.duration_s)  # the header still says 6 s
    assert cut.truncated_at_s is not None and 2.0 < cut.truncated_at_s < 5.0
    assert cut.usable_duration_s == cut.truncated_at_s


def test_probe_reads_the_field_order(damaged_media):
    assert probe_video(damaged_media["interlaced"]).field_order == "tt"
    assert probe_video(damaged_media["clean"]).field_order == "progressive"
