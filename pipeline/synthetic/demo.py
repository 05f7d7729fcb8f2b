"""The embedded demo: render a small catalog of videos (good and bad), serve it over loopback HTTP."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.server
import json
import logging
import re
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pyarrow.parquet as pq

from pipeline.io.data_root import DataRoot
from pipeline.io.storage import atomic_path, write_bytes_atomic
from pipeline.sources.catalog import CatalogEntry, write_catalog
from pipeline.synthetic.renderer import (
    SceneSpec,
    encode_video,
    normalized_intrinsics,
    render_frames,
    render_stereo_video,
    save_ground_truth,
)

DEMO_DATASET = "demo"
GROUND_TRUTH_DIR = "ground_truth"  # under the sources directory: <data_root>/demo_sources/ground_truth
_LOOPBACK = re.compile(r"http://127\.0\.0\.1:\d+")
CONFIG_PATH = Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"
LOG = logging.getLogger("depthcurate")


@contextlib.contextmanager
def serve_handler(handler: Callable[..., http.server.BaseHTTPRequestHandler]) -> Iterator[str]:
    """Serve `handler` on 127.0.0.1 (an ephemeral port) for the duration; yields the base URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    # A short poll interval: shutdown() waits for one poll.
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def serve_directory(directory: str | Path) -> contextlib.AbstractContextManager[str]:
    """Serve the files of `directory` on loopback; yields the base URL."""
    return serve_handler(functools.partial(_QuietHandler, directory=str(directory)))


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def handle(self) -> None:
        # Clients (yt-dlp probing a URL) hang up mid-transfer; that is not an error here.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            super().handle()

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the stdlib's name
        pass


def _spec(seed: int, **overrides: Any) -> SceneSpec:
    return SceneSpec(**{"width": 320, "height": 192, "fps": 20.0, "duration_s": 12.0, "seed": seed, **overrides})


def _frames(spec: SceneSpec) -> Iterator[np.ndarray]:
    return (f.image for f in render_frames(spec))


def _with_defects(frames: Iterator[np.ndarray], fps: float) -> Iterator[np.ndarray]:
    """Black frames (a fade to black) and an out-of-focus stretch, so the filters have work to do."""
    for i, image in enumerate(frames):
        t = i / fps
        if 4.0 <= t < 5.0:
            yield (image * 0.03).astype(np.uint8)
        elif 6.0 <= t < 7.5:
            yield cv2.GaussianBlur(image, (0, 0), 6)
        else:
            yield image


def build_demo_sources(directory: str | Path, log: logging.Logger | logging.LoggerAdapter = LOG) -> dict[str, Path]:
    """Render the demo's source files once (reused when present), saying so in `log`; returns name -> file."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    rendered: list[str] = []

    def make(name: str, build) -> None:
        path = directory / name
        if not path.is_file():
            if not rendered:  # the only quiet stretch of a demo run otherwise
                log.info("rendering the demo's source videos into %s (the first run only)", directory)
            started = time.monotonic()
            build(path)
            rendered.append(name)
            log.info("rendered %s (%.1f s)", name, time.monotonic() - started)
        files[name] = path

    cut_a, cut_b = _spec(1, duration_s=3.5), _spec(2, duration_s=8.5)  # the cut falls inside a keep window
    make("canyon_cut.mp4", lambda p: encode_video(_chain(_frames(cut_a), _frames(cut_b)), p, 20.0, "h264"))
    make("canyon_defects.mkv", lambda p: encode_video(_with_defects(_frames(_spec(3)), 20.0), p, 20.0, "mpeg4"))
    # The same footage as canyon_cut, re-encoded smaller: corpus dedup must keep it once.
    make("canyon_cut_reupload.mp4", lambda p: _transcode(files["canyon_cut.mp4"], p, "-vf", "scale=256:-2"))
    tripod = _spec(4, speed_mps=0.0, yaw_amplitude_deg=0.0)
    make("tripod.mp4", lambda p: encode_video(_frames(tripod), p, 20.0, "h264"))
    stereo = _spec(6, duration_s=10.0, baseline_m=0.3)
    make("canyon_sbs.mp4", lambda p: render_stereo_video(stereo, p, layout="sbs_full", convergence_px=4.0))
    make(
        "canyon_half_sbs.mp4",
        lambda p: render_stereo_video(
            _spec(7, duration_s=10.0, baseline_m=0.3), p, layout="sbs_half", convergence_px=4.0
        ),
    )
    # Rendered depth of the single-shot mono videos, by video id, so the trainer's evaluation has ground truth.
    (directory / GROUND_TRUTH_DIR).mkdir(exist_ok=True)
    make(f"{GROUND_TRUTH_DIR}/canyon_defects.npz", lambda p: save_ground_truth(_spec(3), p))
    make(f"{GROUND_TRUTH_DIR}/tripod.npz", lambda p: save_ground_truth(tripod, p))
    make("tiny.mp4", lambda p: encode_video(_frames(_spec(5, duration_s=1.0)), p, 20.0, "h264"))
    make("truncated.mp4", lambda p: write_bytes_atomic(p, files["canyon_cut.mp4"].read_bytes()[:20_000]))
    make("empty.mp4", lambda p: write_bytes_atomic(p, b""))
    make("not_a_video.mp4", lambda p: write_bytes_atomic(p, np.random.default_rng(0).bytes(50_000)))
    make("audio_only.m4a", _audio_only)
    make("page.html", lambda p: write_bytes_atomic(p, b"<html><body><p>no video here</p></body></html>"))
    return files


def demo_entries(base_url: str) -> list[CatalogEntry]:
    """The demo catalog: four mono and two stereo videos, then one of each kind of bad input."""
    fx, fy, cx, cy = normalized_intrinsics(_spec(1))
    good: dict[str, Any] = dict(
        dataset=DEMO_DATASET, license="synthetic (generated by depthcurate)", fx=fx, fy=fy, cx=cx, cy=cy
    )
    bad: dict[str, Any] = dict(dataset=DEMO_DATASET, category="natural", license="synthetic (generated by depthcurate)")
    rows: list[tuple[str, str, str | None, dict[str, Any]]] = [
        ("canyon_cut", "canyon_cut.mp4", "natural", dict(title="two shots with a hard cut", **good)),
        ("canyon_defects", "canyon_defects.mkv", "driving", dict(title="fade to black and a blurry stretch", **good)),
        ("canyon_cut_reupload", "canyon_cut_reupload.mp4", "natural", dict(title="a re-upload of canyon_cut", **good)),
        ("tripod", "tripod.mp4", "natural", dict(title="static camera", **good)),
        ("canyon_sbs", "canyon_sbs.mp4", "natural", dict(title="full side-by-side stereo", layout="sbs_full", **good)),
        (
            "canyon_half_sbs",
            "canyon_half_sbs.mp4",
            "natural",
            dict(title="half side-by-side, layout detected", layout="auto", **good),
        ),
        (
            "mono_as_stereo",
            "canyon_defects.mkv",
            None,
            dict(title="a mono video declared side-by-side", layout="sbs_full", **bad),
        ),
        ("missing", "missing.mp4", None, dict(title="HTTP 404", **bad)),
        ("page", "page.html", None, dict(title="a web page, not a video", **bad)),
        ("not_a_video", "not_a_video.mp4", None, dict(title="random bytes", **bad)),
        ("truncated", "truncated.mp4", None, dict(title="first 20 kB of an MP4", **bad)),
        ("empty", "empty.mp4", None, dict(title="zero bytes", **bad)),
        ("audio_only", "audio_only.m4a", None, dict(title="audio, no video", **bad)),
        ("tiny", "tiny.mp4", None, dict(title="1 s video, 2 s of trims", trim_start_s=1.0, trim_end_s=1.0, **bad)),
    ]
    entries = []
    for i, (vid, name, category, extra) in enumerate(rows):
        fields: dict[str, Any] = {**({"category": category} if category else {}), **extra}
        entries.append(CatalogEntry(video_id=vid, url=f"{base_url}/{name}", seq=i, **fields))
    return entries


def write_demo_catalog(path: str | Path, base_url: str) -> Path:
    """Write the demo catalog, plus one row repeating an id, which must be reported as a catalog problem."""
    path = write_catalog(demo_entries(base_url), path)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(f"99,tripod,{base_url}/tripod.mp4,{DEMO_DATASET},natural,,mono,,,,,,,,repeated id,\n")
    return path


def _chain(*iterables: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
    for iterable in iterables:
        yield from iterable


def _transcode(source: Path, target: Path, *args: str) -> None:
    with atomic_path(target, keep_suffix=True) as tmp:
        subprocess.run(
            [
                "ffmpeg",
                "-loglevel",
                "error",
                "-y",
                "-i",
                str(source),
                *args,
                "-c:v",
                "libx264",
                "-preset",
                "veryfast",
                "-pix_fmt",
                "yuv420p",
                "-threads",
                "1",
                str(tmp),
            ],
            check=True,
        )


def _audio_only(path: Path) -> None:
    with atomic_path(path, keep_suffix=True) as tmp:
        subprocess.run(
            [
                "ffmpeg",
                "-loglevel",
                "error",
                "-y",
                "-f",
                "lavfi",
                "-i",
                "sine=frequency=440:duration=5",
                "-c:a",
                "aac",
                str(tmp),
            ],
            check=True,
        )


@contextlib.contextmanager
def demo_catalog(root: DataRoot, log: logging.Logger | logging.LoggerAdapter = LOG) -> Iterator[Path]:
    """Render the demo's videos under <root>/demo_sources (saying so in `log`) and serve them on loopback while the
    block runs; yields the catalog CSV pointing at that server."""
    sources = root.root / "demo_sources"
    build_demo_sources(sources, log)
    with serve_directory(sources) as base_url:
        yield write_demo_catalog(sources / "catalog.csv", base_url)


def demo_digest(root: str | Path) -> dict[str, str]:
    """sha256 of every file the demo publishes, with the run's loopback port and data-root path masked.

    Two demo runs (a flow run and a driver run, or the code before and after a refactor) agree on every entry
    exactly when they wrote the same bytes, apart from where the demo happened to be served and written.
    """
    root = Path(root).resolve()

    def masked(text: str) -> str:
        return _LOOPBACK.sub("http://127.0.0.1:PORT", text.replace(str(root), "<data_root>"))

    digests = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        relative = path.relative_to(root).as_posix()
        if relative.split("/")[0] in ("videos", "demo_sources", "runs", "state") or relative == "report.html":
            continue  # inputs, publish's own state, and the flow's report.html (a view of the outputs): not outputs
        data = path.read_bytes()
        if relative == "stats/videos.parquet":
            data = json.dumps(pq.read_table(path).to_pylist(), sort_keys=True, default=str).encode()
        if relative == "dataset.json" or relative == "stats/videos.parquet" or relative.startswith("stats/videos/"):
            data = masked(data.decode()).encode()
        if relative == "dataset.json":
            description = json.loads(data)
            description["tables"]["stats/videos.parquet"] = "masked"  # its own digest, taken masked above
            for file in description.get("files", []):
                if file["kind"] == "record":  # hashes of bytes that hold the port: the records are compared masked
                    file["sha256"] = file["bytes"] = "masked"
            data = json.dumps(description, sort_keys=True).encode()
        digests[relative] = hashlib.sha256(data).hexdigest()
    return digests
