"""Stream frames out of a video through an ffmpeg pipe: fixed fps, trimmed, resized, bounded memory."""

from __future__ import annotations

import collections
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import ffmpeg
import numpy as np

from pipeline.errors import VideoError, ffmpeg_message


@dataclass(frozen=True)
class DecodedFrame:
    index: int  # position on the video's own grid at the sampled fps: round(timestamp_s * fps)
    timestamp_s: float
    image: np.ndarray  # HxWx3 uint8 BGR


def output_size(width: int, height: int, max_height: int | None) -> tuple[int, int]:
    """Resize (never up) so height <= max_height, keeping aspect and an even width."""
    if not max_height or height <= max_height:
        return width, height
    new_w = max(2, int(round(width * max_height / height / 2)) * 2)
    return new_w, max_height


class FrameReader:
    """Iterate DecodedFrames of `path` between start_s and end_s at `fps`; one ffmpeg process, one frame in memory."""

    def __init__(self, path: str | Path, *, fps: float, start_s: float, end_s: float, size: tuple[int, int]) -> None:
        self.path = Path(path)
        self.fps = fps
        self.start_s = start_s
        self.end_s = end_s
        self.size = size
        self.frames_read = 0
        self.warning: str | None = None  # set when ffmpeg complained after some frames came out

    def command(self) -> list[str]:
        width, height = self.size
        stream = (
            ffmpeg.input(str(self.path), ss=f"{self.start_s:.6f}", t=f"{self.end_s - self.start_s:.6f}")
            .video.filter("fps", fps=self.fps)
            .filter("scale", width, height)
            .output("pipe:", format="rawvideo", pix_fmt="bgr24", loglevel="error")
        )
        return ffmpeg.compile(stream, cmd="ffmpeg", overwrite_output=True)

    def __iter__(self) -> Iterator[DecodedFrame]:
        width, height = self.size
        frame_bytes = width * height * 3
        first_index = int(round(self.start_s * self.fps))
        proc = subprocess.Popen(
            self.command(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        stdout, stderr = proc.stdout, proc.stderr
        assert stdout is not None and stderr is not None  # both were asked for with subprocess.PIPE
        stderr_tail: collections.deque[bytes] = collections.deque(maxlen=20)
        # Drain stderr on the side so a chatty ffmpeg never blocks on a full pipe.
        drain = threading.Thread(target=lambda: stderr_tail.extend(stderr), daemon=True)
        drain.start()
        finished = False
        try:
            while True:
                buf = stdout.read(frame_bytes)
                if len(buf) < frame_bytes:
                    finished = True
                    break
                k = self.frames_read
                self.frames_read += 1
                image = np.frombuffer(buf, np.uint8).reshape(height, width, 3)
                yield DecodedFrame(first_index + k, self.start_s + k / self.fps, image)
        finally:
            if not finished:  # the consumer stopped early: no need to decode the rest
                proc.kill()
            stdout.close()
            code = proc.wait()
            drain.join(timeout=5)
            if not drain.is_alive():
                stderr.close()
        self._check(code, ffmpeg_message(b"".join(stderr_tail)))

    def _check(self, code: int, message: str) -> None:
        if code != 0 and self.frames_read == 0:
            raise VideoError("decode_failed", f"ffmpeg exited {code} on {self.path.name}: {message}")
        if self.frames_read == 0:
            raise VideoError(
                "no_frames", f"no frame decoded from {self.path.name} in [{self.start_s:.1f}s, {self.end_s:.1f}s]"
            )
        if code != 0 or message:
            self.warning = f"ffmpeg reported problems after {self.frames_read} frames: {message}"
