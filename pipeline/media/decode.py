"""Stream frames out of a video with PyAV: fixed fps, trimmed, resized, damaged frames marked, bounded memory.

Decoding runs in process (FFmpeg's own frame threads do the work, the GIL released), so the decoder tells us per
packet when data was bad and per frame when it concealed errors. A frame predicted from damaged data is smeared
even when its own packet was clean, so damage lasts until the next keyframe whose decode was clean: every frame in
between comes out with `damaged=True`, and the sampler drops it as `decode_error`.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import os
import queue
import threading
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import av.error
import numpy as np

from pipeline.errors import VideoError

# Errors from a packet can surface a few packets later: the decoder keeps up to one packet per frame thread in
# flight. Frames are held back this many packets, and damage seen at packet i is traced back as far.
_THREAD_LAG = min(os.cpu_count() or 1, 16) + 2
_PREFETCH = 3  # decoded frames waiting for the caller
_INTERLACED = {"tt": "tff", "tb": "tff", "bb": "bff", "bt": "bff"}


@dataclass(frozen=True)
class DecodedFrame:
    index: int  # position on the video's own grid at the sampled fps: round(timestamp_s * fps)
    timestamp_s: float
    image: np.ndarray  # HxWx3 uint8 BGR
    damaged: bool = False  # decoded from, or predicted from, data the decoder reported bad
    picture: av.VideoFrame | None = field(default=None, repr=False, compare=False)  # as decoded, for its digest


def decoded_digest(frame: DecodedFrame) -> str:
    """128 bits of sha256 over the picture as decoded, before colour conversion and resizing.

    H.264 and its peers decode bit-exactly by their standards, so one source file gives one digest on any machine
    and FFmpeg build; the BGR image (swscale's output, which may change between versions) is the fallback.
    """
    data = frame.image
    if frame.picture is not None:
        with contextlib.suppress(ValueError, TypeError):  # a pixel format PyAV cannot hand over as an array
            data = frame.picture.to_ndarray()
    return hashlib.sha256(np.ascontiguousarray(data).data).hexdigest()[:32]


def output_size(width: int, height: int, max_height: int | None) -> tuple[int, int]:
    """Resize (never up) so height <= max_height, keeping aspect and an even width."""
    if not max_height or height <= max_height:
        return width, height
    new_w = max(2, int(round(width * max_height / height / 2)) * 2)
    return new_w, max_height


def deinterlace_parity(field_order: str | None) -> str | None:
    """yadif's parity for ffprobe's field_order (tt, bb, tb, bt), or None for progressive or unknown sources."""
    return _INTERLACED.get(field_order or "")


class _DamageTracker:
    """Which decoded frames (by decode order of their packet) come from or depend on damaged data."""

    def __init__(self) -> None:
        self.keyframes: collections.deque[tuple[int, int | None]] = collections.deque()  # (packet index, pts)
        self.runs: list[list[int]] = []  # [first damaged packet index, last packet index with an error]
        self.errors = 0

    def keyframe(self, index: int, pts: int | None) -> None:
        self.keyframes.append((index, pts))

    def error(self, first: int, last: int) -> None:
        self.errors += 1
        open_run = self.runs[-1] if self.runs and self._end_of(self.runs[-1]) is None else None
        if open_run is not None:
            open_run[0], open_run[1] = min(open_run[0], first), max(open_run[1], last)
        else:
            self.runs.append([max(0, first), last])

    def damaged(self, index: int, pts: int | None) -> bool:
        for first, last in self.runs:
            if index < first:
                continue
            end = self._end_of([first, last])
            if end is None or index < end[0]:
                return True
            # Pictures decoded after the clean keyframe but shown before it may still predict from the damage.
            if pts is not None and end[1] is not None and pts < end[1] and index > end[0]:
                return True
        return False

    def forget_before(self, index: int) -> None:
        """Drop runs and keyframes that can no longer matter for packets from `index` on."""
        self.runs = [r for r in self.runs if (end := self._end_of(r)) is None or end[0] >= index]
        oldest = min((r[0] for r in self.runs), default=index)
        while len(self.keyframes) > 1 and self.keyframes[1][0] <= oldest:
            self.keyframes.popleft()

    def _end_of(self, run: list[int]) -> tuple[int, int | None] | None:
        """The first keyframe after the run's last error: where clean decoding resumes."""
        return next((k for k in self.keyframes if k[0] > run[1]), None)


class FrameReader:
    """Iterate DecodedFrames of `path` between start_s and end_s at `fps`; a handful of frames in memory.

    Each slot of the output grid (start_s + k / fps) gets the decoded picture nearest to it; a slot with no picture
    of its own (a source slower than `fps`) is skipped, not filled with a copy. `parity` ("tff"/"bff", from
    `deinterlace_parity`) deinterlaces with yadif first.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        fps: float,
        start_s: float,
        end_s: float,
        size: tuple[int, int],
        parity: str | None = None,
    ) -> None:
        self.path = Path(path)
        self.fps = fps
        self.start_s = start_s
        self.end_s = end_s
        self.size = size
        self.parity = parity
        self.frames_read = 0
        self.frames_damaged = 0
        self.decoded_until_s: float | None = None  # source time of the last picture decoded
        self.warning: str | None = None  # set when the decoder reported problems after some frames came out
        self._problems: list[str] = []

    def __iter__(self) -> Iterator[DecodedFrame]:
        # Decoding and colour conversion run a few frames ahead on a helper thread (PyAV and FFmpeg release the
        # GIL), so the caller's work on one frame overlaps the decoding of the next ones.
        return _prefetched(self._decode(), _PREFETCH)

    def _decode(self) -> Generator[DecodedFrame, None, None]:
        self.frames_read = self.frames_damaged = 0
        self.warning, self.decoded_until_s, self._problems = None, None, []
        try:
            container = av.open(str(self.path))
        except (av.error.FFmpegError, OSError) as exc:
            raise VideoError("decode_failed", f"cannot open {self.path.name}: {_brief(exc)}") from exc
        with container:
            streams = [s for s in container.streams.video if not s.disposition & av.stream.Disposition.attached_pic]
            if not streams:
                raise VideoError("decode_failed", f"{self.path.name} has no video stream to decode")
            yield from self._frames(container, streams[0])
        self._finish()

    def _frames(
        self, container: av.container.InputContainer, stream: av.video.stream.VideoStream
    ) -> Iterator[DecodedFrame]:
        origin = _origin_s(container, stream)
        if self.start_s > 0 and stream.time_base is not None:
            container.seek(int((self.start_s + origin) / stream.time_base), stream=stream, backward=True)
        picker = _SlotPicker(self.start_s, self.end_s, self.fps)
        damage = _DamageTracker()
        held: collections.deque[tuple[int, int, av.VideoFrame]] = collections.deque()  # (slot, packet, picture)
        sent = 0
        for sent, where, picture in self._decoded(container, stream, origin, damage):
            done = False
            if picture is not None:
                t = _time_s(picture, origin)
                self.decoded_until_s = t
                held.extend((slot, *chosen) for slot, chosen in picker.offer(t, (where, picture)))
                done = picker.past_end(t)
            while held and (done or held[0][1] + _THREAD_LAG < sent):
                yield self._emit(*held.popleft(), damage)
            if done:
                return
        held.extend((slot, *chosen) for slot, chosen in picker.flush())
        while held:
            yield self._emit(*held.popleft(), damage)
        last = self.decoded_until_s
        if self.frames_read and last is not None and last < self.end_s - max(2 / self.fps, 0.25):
            self._problems.append(f"the data ends at {last:.2f}s, before {self.end_s:.2f}s")

    def _decoded(
        self,
        container: av.container.InputContainer,
        stream: av.video.stream.VideoStream,
        origin: float,
        damage: _DamageTracker,
    ) -> Iterator[tuple[int, int, av.VideoFrame | None]]:
        """(packets sent, packet index of the picture, picture) in presentation order; damage recorded on the way.

        Also yields (sent, sent, None) after each packet, so held frames move on while no picture comes out.
        """
        stream.thread_type = "AUTO"
        deinterlacer = _Deinterlacer(stream, self.parity) if self.parity else None
        packet_of: dict[int, int] = {}
        first_key_pts: int | None = None
        for sent, packet in enumerate(_packets(container, stream, self._problems)):
            if packet is not None and packet.pts is not None:
                packet_of[packet.pts] = sent
            if packet is not None and packet.is_keyframe:
                damage.keyframe(sent, packet.pts)
                first_key_pts = packet.pts if first_key_pts is None else first_key_pts
            try:
                pictures = packet.decode() if packet is not None else stream.codec_context.decode(None)
            except (av.error.FFmpegError, ValueError) as exc:
                damage.error(sent - _THREAD_LAG, sent)
                self._note(f"bad data near {self._packet_time(packet, origin)}: {_brief(exc)}")
                pictures = []
            if deinterlacer is not None:
                pictures = deinterlacer(pictures, flush=packet is None or packet.size == 0)
            for picture in pictures:
                where = packet_of.pop(picture.pts, sent) if picture.pts is not None else sent
                # Pictures shown before the first keyframe after a seek predict from what was skipped.
                if first_key_pts is not None and picture.pts is not None and picture.pts < first_key_pts:
                    continue
                if picture.is_corrupt:
                    # The bad data may sit, unnoticed, in the pictures this one predicts from.
                    damage.error(where - _THREAD_LAG, where)
                    self._note(f"concealed errors in the picture at {_time_s(picture, origin):.2f}s")
                yield sent, where, picture
            yield sent, sent, None
            if sent % 256 == 255:
                damage.forget_before(sent - 8 * _THREAD_LAG)
                packet_of = {pts: i for pts, i in packet_of.items() if i + 8 * _THREAD_LAG >= sent}

    @staticmethod
    def _packet_time(packet: av.Packet | None, origin: float) -> str:
        if packet is None or packet.pts is None or packet.time_base is None:
            return "the end"
        return f"{float(packet.pts * packet.time_base) - origin:.2f}s"

    def _emit(self, slot: int, packet_index: int, picture: av.VideoFrame, damage: _DamageTracker) -> DecodedFrame:
        damaged = damage.damaged(packet_index, picture.pts)
        self.frames_read += 1
        self.frames_damaged += damaged
        first_index = int(round(self.start_s * self.fps))
        image = self._image(picture)
        return DecodedFrame(first_index + slot, self.start_s + slot / self.fps, image, damaged, picture)

    def _image(self, picture: av.VideoFrame) -> np.ndarray:
        width, height = self.size
        rotation = int(round(picture.rotation or 0)) % 360
        if rotation % 180:
            width, height = height, width
        image = picture.reformat(width=width, height=height, format="bgr24", interpolation="BICUBIC").to_ndarray()
        # PyAV reports the display matrix's counter-clockwise angle; np.rot90 turns counter-clockwise for k > 0.
        return np.ascontiguousarray(np.rot90(image, k=rotation // 90)) if rotation else image

    def _note(self, problem: str) -> None:
        if len(self._problems) < 3:
            self._problems.append(problem)
        elif len(self._problems) == 3:
            self._problems.append("...")

    def _finish(self) -> None:
        if self.frames_read == 0:
            detail = f": {'; '.join(self._problems)}" if self._problems else ""
            if self._problems:
                raise VideoError("decode_failed", f"no frame decoded from {self.path.name}{detail}")
            raise VideoError(
                "no_frames", f"no frame decoded from {self.path.name} in [{self.start_s:.1f}s, {self.end_s:.1f}s]"
            )
        if self._problems:
            dropped = f"; {self.frames_damaged} sampled frames marked damaged" if self.frames_damaged else ""
            self.warning = f"decoder reported problems after {self.frames_read} frames{dropped}: " + "; ".join(
                self._problems
            )


_Chosen = tuple[int, av.VideoFrame]  # (decode index of the picture's packet, the picture)


class _SlotPicker:
    """Assigns decoded pictures to output slots start + k / fps: each slot takes the picture nearest to it."""

    def __init__(self, start_s: float, end_s: float, fps: float) -> None:
        self.start_s, self.fps = start_s, fps
        self.slots = max(0, int(np.ceil((end_s - start_s) * fps - 1e-6)))  # slots whose time is before end_s
        self._slot: int | None = None
        self._best: tuple[float, _Chosen] | None = None  # (distance in slots, payload)
        self._emitted = -1  # the last slot handed out: a decoder thrown off by bad data may go back in time

    def offer(self, t: float, payload: _Chosen) -> list[tuple[int, _Chosen]]:
        position = (t - self.start_s) * self.fps
        slot = int(np.floor(position + 0.5))
        if slot >= self.slots:
            return self.flush()
        if slot < 0 or slot <= self._emitted or (self._slot is not None and slot < self._slot):
            return []  # before the window, or back in time
        out = self.flush() if self._slot is not None and slot > self._slot else []
        distance = abs(position - slot)
        if self._best is None or distance < self._best[0]:
            self._slot, self._best = slot, (distance, payload)
        return out

    def past_end(self, t: float) -> bool:
        return (t - self.start_s) * self.fps >= self.slots - 0.5

    def flush(self) -> list[tuple[int, _Chosen]]:
        out = [(self._slot, self._best[1])] if self._slot is not None and self._best is not None else []
        if self._slot is not None:
            self._emitted = self._slot
        self._slot, self._best = None, None
        return out


class _Deinterlacer:
    """yadif over the decoded pictures, one picture out per picture in, timestamps kept."""

    def __init__(self, stream: av.video.stream.VideoStream, parity: str) -> None:
        self.graph = av.filter.Graph()
        source = self.graph.add_buffer(template=stream)
        yadif = self.graph.add("yadif", f"mode=send_frame:parity={parity}:deint=all")
        sink = self.graph.add("buffersink")
        source.link_to(yadif)
        yadif.link_to(sink)
        self.graph.configure()

    def __call__(self, pictures: list[av.VideoFrame], *, flush: bool) -> list[av.VideoFrame]:
        for picture in pictures:
            self.graph.push(picture)
        if flush:
            self.graph.push(None)
        out: list[av.VideoFrame] = []
        while True:
            try:
                out.append(self.graph.pull())  # type: ignore[arg-type]
            except (av.error.BlockingIOError, av.error.EOFError):
                return out


def _prefetched(source: Generator[DecodedFrame, None, None], depth: int) -> Iterator[DecodedFrame]:
    """`source`'s items, produced on a helper thread at most `depth` ahead; its errors re-raised here."""
    buffer: queue.Queue[tuple[bool, DecodedFrame | BaseException | None]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: tuple[bool, DecodedFrame | BaseException | None]) -> bool:
        while not stop.is_set():
            try:
                buffer.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False  # the caller went away

    def produce() -> None:
        try:
            for frame in source:
                if not put((True, frame)):
                    return
            put((False, None))
        except BaseException as exc:  # noqa: BLE001  (handed to the caller, who raises it)
            put((False, exc))
        finally:
            source.close()  # on this thread, where the generator runs: closes the container

    worker = threading.Thread(target=produce, name="frame-reader", daemon=True)
    worker.start()
    try:
        while True:
            more, item = buffer.get()
            if isinstance(item, BaseException):
                raise item
            if not more:
                return
            yield item  # type: ignore[misc]  # more is True: a frame
    finally:
        stop.set()
        worker.join()


def _packets(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream, problems: list[str]
) -> Iterator[av.Packet | None]:
    """Demuxed packets, ending with a flush packet (or None after a read error: a file cut short ends early)."""
    demuxer = container.demux(stream)
    while True:
        try:
            packet = next(demuxer)
        except StopIteration:
            return
        except av.error.FFmpegError as exc:
            problems.append(f"the file ends early: {_brief(exc)}")
            yield None  # flush what the decoder holds
            return
        yield packet


def _origin_s(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> float:
    """The timestamp ffmpeg calls 0 s: the container's start time, as `ffmpeg -ss` counts."""
    if container.start_time is not None:
        return container.start_time / av.time_base
    if stream.start_time is not None and stream.time_base is not None:
        return float(stream.start_time * stream.time_base)
    return 0.0


def _time_s(picture: av.VideoFrame, origin: float) -> float:
    if picture.pts is None or picture.time_base is None:
        return float(picture.time or 0.0) - origin
    return float(Fraction(picture.pts) * picture.time_base) - origin


def _brief(exc: BaseException) -> str:
    text = str(exc).replace(os.fspath(Path.cwd()), ".")
    return text if len(text) < 200 else text[:197] + "..."
