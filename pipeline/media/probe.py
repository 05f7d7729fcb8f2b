"""Read a video's stream facts with ffprobe (through ffmpeg-python)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import ffmpeg

from pipeline.errors import VideoError, ffmpeg_message


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
    )


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
