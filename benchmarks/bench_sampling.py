"""Sampling-stage throughput against ffmpeg decode-only, and peak memory against video length. Prints JSON.

    python -m benchmarks.bench_sampling [--seconds 60] [--long-minutes 10] [--workdir DIR] [--out FILE]

(a) decode-only, two ways: `ffmpeg -i video -f null -` (the system's ffmpeg), and PyAV decoding every frame with
    FFmpeg's frame threads (the libraries the pipeline decodes with), on a synthetic 1280x720 30 fps H.264 video;
(b) this project's sampling stage end to end on the same file (decode at 10 fps, cut detection, filters,
    pHash, JPEG encode, Parquet write), with no trims, no decimation and no within-video dedup (the video is a
    10 s render looped) so every sampled frame is worked on.
    It calls `ingest_video` on the file itself, not `pipeline.driver.curate_entries`: the driver's download
    (a copy of the file) and publish would fall inside the timed window and the peak RSS.
All are reported as source-video seconds per wall-clock second, run back to back, with the ratios.
(c) peak RSS of the sampling stage on a short and a long (>= 10 min) video: it should not grow with length
    (children: ffprobe; the decoder runs in process).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.common import REPO, Stopwatch, add_out_argument, add_workdir_argument, emit, meta
from pipeline.synthetic.renderer import SceneSpec, render_video

_CHILD = """
import json, resource, sys, time
from pipeline.sources.catalog import CatalogEntry
from pipeline.config import load_config
from pipeline.video.ingest import ingest_video
from pipeline.io.data_root import DataRoot
cfg = load_config(overrides={"sample": {"fps": 10, "max_height": 720, "decimate": None,
                                        "trim": {"head_s": 0, "tail_s": 0}}, "split": {"gap_frames": 0},
                             "dedup": {"min_separation_s": 3600, "separation_max_fraction": 1.0}})
entry = CatalogEntry(video_id="bench", url="file:///bench", dataset="bench", category="natural")
start = time.perf_counter()
record = ingest_video(entry, sys.argv[1], DataRoot(sys.argv[2]), cfg)
wall = time.perf_counter() - start
assert record.ok, record
print(json.dumps({"wall_s": wall, "frames_decoded": record.frames_decoded, "frames_kept": record.frames_kept,
                  "duration_s": record.info.duration_s,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "children_peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
"""


def make_video(workdir: Path, name: str, width: int, height: int, seconds: float) -> Path:
    """Render 10 s of the synthetic scene and loop it (stream copy) to `seconds`."""
    clip = workdir / f"{name}_clip.mp4"
    if not clip.exists():
        render_video(SceneSpec(width=width, height=height, fps=30.0, duration_s=10.0, seed=11), clip)
    video = workdir / f"{name}.mp4"
    if not video.exists():
        subprocess.run(
            [
                "ffmpeg",
                "-loglevel",
                "error",
                "-y",
                "-stream_loop",
                "-1",
                "-i",
                str(clip),
                "-t",
                str(seconds),
                "-c",
                "copy",
                str(video),
            ],
            check=True,
        )
    return video


def decode_only(video: Path) -> float:
    with Stopwatch() as watch:
        subprocess.run(["ffmpeg", "-loglevel", "error", "-i", str(video), "-f", "null", "-"], check=True)
    return watch.s


def decode_only_pyav(video: Path) -> float:
    import av

    with Stopwatch() as watch, av.open(str(video)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for _ in container.decode(stream):
            pass
    return watch.s


def sampling_stage(video: Path, out: Path) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", _CHILD, str(video), str(out)],
        check=True,
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the throughput video")
    parser.add_argument("--long-minutes", type=float, default=10.0, help="length of the long memory video")
    add_workdir_argument(parser, "the rendered videos")
    add_out_argument(parser)
    args = parser.parse_args()
    run_meta = meta()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        video = make_video(workdir, f"hd_{int(args.seconds)}s", 1280, 720, args.seconds)
        decode_s = decode_only(video)
        pyav_s = decode_only_pyav(video)
        stage = sampling_stage(video, Path(tmp) / "out_hd")
        throughput = {
            "video": "1280x720 H.264 30 fps synthetic",
            "source_seconds": args.seconds,
            "decode_only_source_s_per_s": round(args.seconds / decode_s, 2),
            "decode_only_pyav_source_s_per_s": round(args.seconds / pyav_s, 2),
            "pipeline_source_s_per_s": round(args.seconds / stage["wall_s"], 2),
            "output_fps": 10,
            "frames_sampled": stage["frames_decoded"],
            "frames_kept": stage["frames_kept"],
        }
        throughput["ratio_pipeline_to_decode"] = round(
            throughput["pipeline_source_s_per_s"] / throughput["decode_only_source_s_per_s"], 3
        )
        throughput["ratio_pipeline_to_pyav_decode"] = round(
            throughput["pipeline_source_s_per_s"] / throughput["decode_only_pyav_source_s_per_s"], 3
        )
        memory = []
        for minutes in (args.long_minutes / 4, args.long_minutes):
            long_video = make_video(workdir, f"sd_{minutes:g}min", 640, 360, minutes * 60)
            run = sampling_stage(long_video, Path(tmp) / f"out_{minutes:g}")
            memory.append(
                {
                    "minutes": minutes,
                    "frames_sampled": run["frames_decoded"],
                    "peak_rss_mb": round(run["peak_rss_mb"], 1),
                    "children_peak_rss_mb": round(run["children_peak_rss_mb"], 1),
                    "source_s_per_s": round(minutes * 60 / run["wall_s"], 2),
                }
            )
        memory_growth = round(memory[1]["peak_rss_mb"] / memory[0]["peak_rss_mb"], 3)
        emit(
            {"throughput": throughput, "memory": memory, "peak_rss_ratio_long_to_short": memory_growth},
            args.out,
            run_meta,
        )


if __name__ == "__main__":
    main()
