"""Read a video's stream facts with ffprobe (through ffmpeg-python)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import av.error
import ffmpeg

from pipeline.errors import VideoError, ffmpeg_message

_TAIL_S = 2.0  # a file whose packets reach within this of the header's end is whole


@dataclass(frozen=True)
class VideoInfo:
    duration_s: float
    fps: float  # average frame rate
    width: int  # as stored; see display_size for rotation
    height: int
    codec: str
    rotation: int  # degrees, multiple of 90, from the display matrix
    variable_frame_rate: bool
    container: str
    field_order: str | None = None  # ffprobe's: progressive, tt, bb, tb, bt (interlaced), or None when unknown
    truncated_at_s: float | None = None  # the data ends here, before the header's duration (a file cut short)

    @property
    def usable_duration_s(self) -> float:
        """What can be decoded: the header's duration, or less for a file cut short."""
        return self.truncated_at_s if self.truncated_at_s is not None else self.duration_s

    @property
    def display_size(self) -> tuple[int, int]:
        """(width, height) after ffmpeg's automatic rotation."""
        if self.rotation % 180:
            return self.height, self.width
        return self.width, self.height

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def probe_video(path: str | Path) -> VideoInfo:
    """Probe `path`; raises VideoError (unreadable_video, no_video_stream, zero_duration) on bad input."""
    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        raise VideoError("unreadable_video", f"{path.name} is empty or missing")
    try:
        meta = ffmpeg.probe(str(path), v="error")  # errors only: no version banner in failure messages
    except ffmpeg.Error as exc:
        raise VideoError(
            "unreadable_video", f"ffprobe failed on {path.name}: {ffmpeg_message(exc.stderr, 2) or 'no output'}"
        ) from exc
    stream = next(
        (
            s
            for s in meta.get("streams", [])
            if s.get("codec_type") == "video" and not s.get("disposition", {}).get("attached_pic")
        ),
        None,
    )
    if stream is None:
        kinds = sorted({s.get("codec_type", "?") for s in meta.get("streams", [])}) or ["none"]
        raise VideoError("no_video_stream", f"{path.name} has no video stream (streams: {', '.join(kinds)})")
    fmt = meta.get("format", {})
    duration = _first_float(stream.get("duration"), fmt.get("duration"))
    if not duration or duration <= 0:
        raise VideoError("zero_duration", f"{path.name} reports no positive duration")
    avg = _rate(stream.get("avg_frame_rate"))
    base = _rate(stream.get("r_frame_rate"))
    fps = avg or base
    if not fps:
        raise VideoError("unreadable_video", f"{path.name} reports no frame rate")
    return VideoInfo(
        duration_s=duration,
        fps=fps,
        width=int(stream.get("width") or 0),
        height=int(stream.get("height") or 0),
        codec=str(stream.get("codec_name", "unknown")),
        rotation=_rotation(stream),
        variable_frame_rate=bool(avg and base and abs(avg - base) > 0.01 * base),
        container=str(fmt.get("format_name", "unknown")),
        field_order=stream.get("field_order") if stream.get("field_order") not in (None, "unknown") else None,
        truncated_at_s=data_end_s(path, duration),
    )


def data_end_s(path: str | Path, duration_s: float) -> float | None:
    """Where a file's video data really ends when that is before `duration_s` (its header's), else None.

    A streamable MP4 cut short keeps its full header: ffprobe reports the whole duration, decoding stops early.
    Reading the last few seconds of packets tells the two apart cheaply; only a short file is scanned in full.
    """
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            base = stream.time_base or Fraction(1, 1000)
            origin = container.start_time / av.time_base if container.start_time is not None else 0.0
            seek_s = max(0.0, duration_s - _TAIL_S)
            container.seek(int((seek_s + origin) / base), stream=stream, backward=True)
            end = _last_packet_s(container, stream, base, origin)
            if end is not None and end >= duration_s - _TAIL_S / 2:
                return None
            container.seek(0, stream=stream, backward=True)
            end = _last_packet_s(container, stream, base, origin)
    except (av.error.FFmpegError, OSError, IndexError):
        return None  # undecodable files are the decoder's to report
    return round(end, 3) if end is not None and end < duration_s - _TAIL_S / 2 else None


def _last_packet_s(container: Any, stream: Any, base: Fraction, origin: float) -> float | None:
    """End time of the last packet that could be read from the current position (demux only, no decoding)."""
    end: float | None = None
    try:
        for packet in container.demux(stream):
            if packet.pts is not None:
                stop = float((packet.pts + (packet.duration or 0)) * base) - origin
                end = stop if end is None else max(end, stop)
    except av.error.FFmpegError:
        pass  # a read error is where the data ends
    return end


def _rate(text: str | None) -> float | None:
    try:
        value = float(Fraction(text)) if text else 0.0
    except (ValueError, ZeroDivisionError):
        return None
    return value or None


def _first_float(*values: Any) -> float | None:
    for value in values:
        try:
            return float(value)
        except (TypeError, ValueError):
            continue
    return None


def _rotation(stream: dict[str, Any]) -> int:
    for side in stream.get("side_data_list", []) or []:
        if "rotation" in side:
            return int(round(float(side["rotation"]))) % 360
    rotate = stream.get("tags", {}).get("rotate")
    return int(rotate) % 360 if rotate else 0
