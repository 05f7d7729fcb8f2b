"""Capacity model: measured per-stage rates on this machine, core-hours and memory for SlowTV and 10,000 videos,
the split over a Ray cluster, and a check against one measured end-to-end run. Prints JSON.

    python -m benchmarks.bench_capacity [--short-seconds 40] [--long-seconds 180] [--videos 4] [--seconds 75]
                                        [--workers 2] [--bitrate 2000k] [--intrinsics | --intrinsics-json FILE]
                                        [--publish-json FILE] [--nodes 10] [--cores 16] [--workdir DIR] [--out FILE]

Download is excluded throughout (a file:// copy stands for it in the end-to-end run).

(a) ingest: `ingest_video` (probe, sampling, JPEG, Parquet, record) with configs/slowtv.yaml as it is (trims
    shrink to `trim.max_fraction` of a short video by themselves; 10 fps, 100 kept of every 250), intrinsics
    off, in a child process per run, on a short and a long rendered 1280x720 30 fps H.264 video encoded at a
    YouTube-like bitrate (itag 136 is about 1-2.5 Mbit/s). CPU time is getrusage of the child: RUSAGE_SELF
    (Python, OpenCV and pyarrow threads) plus RUSAGE_CHILDREN (ffprobe, ffmpeg). The two lengths give a
    fixed per-video cost and a per-source-second cost (source seconds = the trimmed, sampled span). The
    videos are 10 s rendered scenes of several seeds, each also flipped (h, v, hv), concatenated: no segment
    repeats inside a video or across the end-to-end videos, so dedup drops what it would drop on new footage.
    Also: ffmpeg decode-only CPU on the same file and on the CRF-18 render (how decode cost moves with bitrate).
(b) publish: from benchmarks/results/publish.json (bench_publish) when present, else the figures it gave
    earlier (FALLBACK_PUBLISH); its wall time stands for its CPU time (one main thread plus one read-ahead).
(c) optional stages from their own results: CLIP (clip_embed.json), SemDeDup (semdedup.json), stereo
    (README: bench_stereo), COLMAP intrinsics (with --intrinsics: measured here on the long video's shards, about
    10 minutes; --intrinsics-json takes that figure from an earlier result instead).
(d) the model (see `model`) for SlowTV (40 videos, 4M decoded rows, 1.7M kept) and 10,000 SlowTV-like videos.
(e) check: the model's prediction of CPU and wall time of `curate_entries` on --videos rendered videos from
    file:// URLs into a fresh data root with run.workers --workers, then that run, measured. Wall is predicted
    for this machine's cores idle, and for a fair share of them given the cores other work kept busy just before
    (/proc/stat over 5 s); the run also reports what the neighbours took while it ran.

Everything generated goes under --workdir (default /tmp/bench_capacity); rendered videos are reused.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.common import CLOCK_TICKS, REPO, RESULTS, add_out_argument, emit, meta

WORKDIR = Path("/tmp/bench_capacity")
CONFIG = REPO / "configs" / "slowtv.yaml"
FPS = 30.0
SIZE = (1280, 720)
SEGMENT_S = 10.0
FLIPS = ("null", "hflip", "vflip", "hflip,vflip")

# bench_publish's figures as given before benchmarks/results/publish.json exists (2-core machine, loaded).
FALLBACK_PUBLISH = {
    "source": "bench_publish figures given in the issue (publish.json absent)",
    "sizes": [
        {"rows": 400_000, "full_s": 1.8, "full_rss_mb": 400.0},
        {"rows": 4_000_000, "full_s": 19.0, "full_rss_mb": 1130.0, "rerun_s": 0.006, "add_one_s": 6.3},
    ],
}
# README "Benchmarks", bench_stereo: pipeline pairs per second at 940x400 on this 2-core machine.
STEREO = {"pairs_per_s": 15.0, "cores": 2, "size": "940x400", "source": "README Benchmarks (bench_stereo)"}

# DESIGN.md: SlowTV as published.
SLOWTV = {"videos": 40, "decoded_rows": 4_000_000, "kept_rows": 1_700_000, "sampled_fps": 10.0}
SCALE_VIDEOS = 10_000


# ---------------------------------------------------------------- inputs


def _ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", *args], check=True)


def render_clips(workdir: Path, seeds: int) -> list[Path]:
    """`seeds` rendered 10 s 1280x720 30 fps scenes (CRF 18, the renderer's encoding), cached in workdir."""
    from pipeline.synthetic.renderer import SceneSpec, render_video

    clips = []
    for seed in range(seeds):
        clip = workdir / "clips" / f"seed{seed:02d}.mp4"
        if not clip.exists():
            clip.parent.mkdir(parents=True, exist_ok=True)
            spec = SceneSpec(width=SIZE[0], height=SIZE[1], fps=FPS, duration_s=SEGMENT_S, seed=100 + seed)
            render_video(spec, clip)
        clips.append(clip)
    return clips


def segments(clips: list[Path]) -> list[tuple[Path, str]]:
    """Every (clip, flip) once, seeds varying fastest: no two neighbours share a scene."""
    return [(clip, flip) for flip in FLIPS for clip in clips]


def make_video(path: Path, parts: list[tuple[Path, str]], seconds: float, bitrate: str) -> Path:
    """Concatenate `parts` (flipped as named), cut to `seconds`, encode as 720p30 H.264 at `bitrate`."""
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    inputs = [arg for clip, _ in parts for arg in ("-i", str(clip))]
    chains = ";".join(f"[{i}:v]{flip}[s{i}]" for i, (_, flip) in enumerate(parts))
    concat = "".join(f"[s{i}]" for i in range(len(parts))) + f"concat=n={len(parts)}:v=1:a=0[out]"
    tmp = path.with_name(path.stem + ".tmp.mp4")
    _ffmpeg(
        *inputs,
        "-filter_complex",
        f"{chains};{concat}",
        "-map",
        "[out]",
        "-t",
        f"{seconds:.3f}",
        "-r",
        str(FPS),
        "-c:v",
        "libx264",
        "-preset",
        "veryfast",
        "-profile:v",
        "main",
        "-b:v",
        bitrate,
        "-maxrate",
        bitrate,
        "-bufsize",
        _double(bitrate),
        "-g",
        "60",
        "-pix_fmt",
        "yuv420p",
        "-an",
        str(tmp),
    )
    os.replace(tmp, path)
    return path


def _double(bitrate: str) -> str:
    number = "".join(c for c in bitrate if c.isdigit() or c == ".")
    return f"{float(number) * 2:g}{bitrate[len(number) :]}"


def probe(path: Path) -> dict[str, float]:
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "format=duration,bit_rate", "-of", "json", str(path)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    fmt = json.loads(out)["format"]
    return {"duration_s": float(fmt["duration"]), "bitrate_mbps": round(int(fmt["bit_rate"]) / 1e6, 2)}


def decode_only_cpu(path: Path) -> dict[str, float]:
    """ffmpeg decode at 10 fps output (as the sampling pipe, minus scaling to the pipe): CPU and wall per
    source second."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    _ffmpeg("-i", str(path), "-vf", "fps=10", "-f", "null", "-")
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    seconds = probe(path)["duration_s"]
    return {
        "cpu_s_per_source_s": round(cpu / seconds, 4),
        "source_s_per_wall_s": round(seconds / wall, 2),
        "cores_used": round(cpu / wall, 2),
    }


# ---------------------------------------------------------------- children (measured in their own process)


def _config(workers: int = 2, intrinsics: bool = False, local_roots: list[str] | None = None):
    from pipeline.config import load_config

    overrides: dict[str, Any] = {"intrinsics": {"enabled": intrinsics}, "run": {"workers": workers}}
    if local_roots:  # file:// sources are refused outside download.local_roots
        overrides["download"] = {"local_roots": local_roots}
    return load_config(CONFIG, overrides=overrides)


def _cpu(which: int) -> float:
    usage = resource.getrusage(which)
    return usage.ru_utime + usage.ru_stime


def _hwm_mb() -> float:
    from benchmarks.common import proc_kb

    return proc_kb("/proc/self/status", "VmHWM") / 1024


def child_ingest(video: str, root: str, intrinsics: bool) -> dict[str, Any]:
    from pipeline.io.data_root import DataRoot
    from pipeline.sources.catalog import CatalogEntry
    from pipeline.video.ingest import ingest_video

    cfg = _config()
    entry = CatalogEntry(video_id="ingest", url=f"file://{video}", dataset="slowtv", category="natural")
    rss_before = _hwm_mb()
    load = os.getloadavg()[0]
    py0, ff0, t0 = _cpu(resource.RUSAGE_SELF), _cpu(resource.RUSAGE_CHILDREN), time.perf_counter()
    record = ingest_video(entry, video, DataRoot(root), cfg)
    wall = time.perf_counter() - t0
    py, ff = _cpu(resource.RUSAGE_SELF) - py0, _cpu(resource.RUSAGE_CHILDREN) - ff0
    assert record.ok, record
    assert record.info is not None and record.trim_start_s is not None and record.trim_end_s is not None
    result: dict[str, Any] = {
        "duration_s": round(record.info.duration_s, 3),
        "source_s": round(record.info.duration_s - record.trim_start_s - record.trim_end_s, 3),
        "frames_decoded": record.frames_decoded,
        "frames_kept": record.frames_kept,
        "dropped": {k: v for k, v in record.dropped.items() if v},
        "wall_s": round(wall, 3),
        "python_cpu_s": round(py, 3),
        "ffmpeg_cpu_s": round(ff, 3),
        "python_peak_rss_mb": round(_hwm_mb(), 1),
        "python_rss_before_ingest_mb": round(rss_before, 1),
        "ffmpeg_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
        "loadavg_1m_before": round(load, 2),
        "loadavg_1m_after": round(os.getloadavg()[0], 2),
    }
    if intrinsics:
        from pipeline.corpus.intrinsics import estimate_video

        icfg = _config(intrinsics=True)
        py0, t0 = _cpu(resource.RUSAGE_SELF), time.perf_counter()
        camera, _ = estimate_video(DataRoot(root), record, icfg.intrinsics)
        wall = time.perf_counter() - t0
        result["intrinsics"] = {
            "status": camera.get("status"),
            "frames": camera.get("frames"),
            "wall_s": round(wall, 2),
            "cpu_s": round(_cpu(resource.RUSAGE_SELF) - py0, 2),
            "threads": icfg.intrinsics.threads,
            "peak_rss_mb": round(_hwm_mb(), 1),
        }
    return result


def child_curate(videos: list[str], root: str, workers: int) -> dict[str, Any]:
    import pipeline.driver as driver
    from pipeline.io.data_root import DataRoot
    from pipeline.sources.catalog import CatalogEntry

    cfg = _config(workers=workers, local_roots=sorted({str(Path(v).parent) for v in videos}))
    entries = [
        CatalogEntry(video_id=f"v{i:02d}", url=f"file://{v}", dataset="slowtv", category="natural")
        for i, v in enumerate(videos)
    ]
    timed: dict[str, float] = {}
    publish = driver.publish

    def timed_publish(*args: Any, **kwargs: Any) -> Any:
        # curate_entries publishes after its pool is done: the process's CPU in this window is publish's.
        cpu0, t0 = _cpu(resource.RUSAGE_SELF), time.perf_counter()
        try:
            return publish(*args, **kwargs)
        finally:
            timed["publish_wall_s"] = time.perf_counter() - t0
            timed["publish_cpu_s"] = _cpu(resource.RUSAGE_SELF) - cpu0

    driver.publish = timed_publish
    load = os.getloadavg()[0]
    py0, ff0, t0 = _cpu(resource.RUSAGE_SELF), _cpu(resource.RUSAGE_CHILDREN), time.perf_counter()
    result = driver.curate_entries(entries, DataRoot(root), cfg)
    wall = time.perf_counter() - t0
    py, ff = _cpu(resource.RUSAGE_SELF) - py0, _cpu(resource.RUSAGE_CHILDREN) - ff0
    records = {r.video_id: r for r in _records(root)}
    return {
        "statuses": [v.status for v in result.videos],
        "frames_decoded": sum(v.frames_decoded for v in result.videos),
        "frames_kept": sum(v.frames_kept for v in result.videos),
        "published": {k: v for k, v in result.description.get("counts", {}).items() if k != "dropped"},
        "source_s": [
            round(r.info.duration_s - r.trim_start_s - r.trim_end_s, 3)
            for r in records.values()
            if r.info and r.trim_start_s is not None and r.trim_end_s is not None
        ],
        "wall_s": round(wall, 3),
        "cpu_s": round(py + ff, 3),
        "python_cpu_s": round(py, 3),
        "ffmpeg_cpu_s": round(ff, 3),
        "publish_wall_s": round(timed["publish_wall_s"], 3),
        "publish_cpu_s": round(timed["publish_cpu_s"], 3),
        "python_peak_rss_mb": round(_hwm_mb(), 1),
        "ffmpeg_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
        "loadavg_1m_before": round(load, 2),
        "loadavg_1m_after": round(os.getloadavg()[0], 2),
    }


def _records(root: str) -> list[Any]:
    from pipeline.io.data_root import DataRoot
    from pipeline.video.record import load_records

    return list(load_records(DataRoot(root)))


def run_child(kind: str, **kwargs: Any) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_capacity", "--child", kind, "--child-args", json.dumps(kwargs)],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    if result.returncode != 0:
        raise RuntimeError(f"child {kind} failed:\n{result.stderr[-4000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- figures from other benchmarks


def publish_figures(path: Path) -> dict[str, Any]:
    """Publish wall and peak RSS per size: bench_publish's JSON (its `sizes` rows) or the fallback figures."""
    if not path.exists():
        return FALLBACK_PUBLISH
    data = json.loads(path.read_text())
    sizes = []
    for size in data.get("sizes", []):
        if size.get("full_s") is None:
            continue
        row = {"rows": size["rows"], "videos": size.get("videos"), "full_s": size["full_s"]}
        row["full_rss_mb"] = size.get("full_rss_mb")
        for key in ("rerun_s", "add_one_s", "add_one_rss_mb"):
            if size.get(key) is not None:
                row[key] = size[key]
        sizes.append(row)
    if not sizes:
        return FALLBACK_PUBLISH
    return {"source": str(path.relative_to(REPO) if path.is_relative_to(REPO) else path), "sizes": sizes}


def publish_rates(figures: dict[str, Any]) -> dict[str, Any]:
    """Seconds per million decoded rows (largest size) and a linear peak-RSS fit through the two largest sizes."""
    sizes = sorted(figures["sizes"], key=lambda s: s["rows"])
    big = sizes[-1]
    s_per_mrow = big["full_s"] / (big["rows"] / 1e6)
    if len(sizes) >= 2 and sizes[-2].get("full_rss_mb") is not None:
        small = sizes[-2]
        per_row = (big["full_rss_mb"] - small["full_rss_mb"]) / (big["rows"] - small["rows"]) * 2**20
        base = big["full_rss_mb"] - per_row * big["rows"] / 2**20
    else:
        per_row, base = big["full_rss_mb"] * 2**20 / big["rows"], 0.0
    exponent = (
        math.log(big["full_s"] / sizes[-2]["full_s"]) / math.log(big["rows"] / sizes[-2]["rows"])
        if len(sizes) >= 2
        else 1.0
    )
    return {
        "cpu_s_per_million_rows": round(s_per_mrow, 2),
        "time_exponent_largest_sizes": round(exponent, 3),
        "cpu_note": "publish wall time taken as its CPU time (one main thread + one read-ahead thread)",
        "rss_fit_mb": {"base_mb": round(base, 1), "bytes_per_row": round(per_row, 1)},
        "rss_fit_from_rows": [s["rows"] for s in sizes[-2:]],
        "measured_up_to_rows": big["rows"],
        "figures": figures,
    }


def publish_cost(rates: dict[str, Any], rows: float) -> dict[str, Any]:
    fit = rates["rss_fit_mb"]
    top = rates["measured_up_to_rows"]
    linear = rates["cpu_s_per_million_rows"] * rows / 1e6
    # Beyond the largest measured size: linear from it, and (upper) the growth between the two largest sizes.
    power = (
        linear
        if rows <= top
        else rates["cpu_s_per_million_rows"]
        * top
        / 1e6
        * (rows / top) ** max(1.0, rates["time_exponent_largest_sizes"])
    )
    return {
        "cpu_s": round(linear, 1),
        "cpu_s_power_law": round(power, 1),
        "peak_rss_gb": round((fit["base_mb"] + fit["bytes_per_row"] * rows / 2**20) / 1024, 2),
        "extrapolated": rows > 1.5 * rates["measured_up_to_rows"],
    }


def optional_stages() -> dict[str, Any]:
    stages: dict[str, Any] = {"stereo": {**STEREO, "cpu_s_per_pair": round(STEREO["cores"] / STEREO["pairs_per_s"], 3)}}
    clip_path = RESULTS / "clip_embed.json"
    if clip_path.exists():
        vit = json.loads(clip_path.read_text()).get("ViT-B-32")
        if vit:
            stages["clip_embed"] = {
                "model": "ViT-B-32",
                "device": vit["device"],
                "images_per_s": vit["end_to_end_fps"],
                "threads": vit["torch_threads"],
                "cpu_s_per_image": round(vit["torch_threads"] / vit["end_to_end_fps"], 3),
                "source": "benchmarks/results/clip_embed.json (ViT-B-32, end_to_end_fps, 1280x720 JPEG q95)",
            }
    semdedup_path = RESULTS / "semdedup.json"
    if semdedup_path.exists():
        largest = max(json.loads(semdedup_path.read_text())["scaling"], key=lambda s: s["n"])
        stages["semdedup"] = {
            "n": largest["n"],
            "seconds": largest["seconds"],
            "process_peak_rss_mb": largest["process_peak_rss_mb"],
            "s_per_million": round(largest["seconds"] / (largest["n"] / 1e6), 2),
            "rss_bytes_per_embedding": round(largest["process_peak_rss_mb"] * 2**20 / largest["n"], 1),
            "source": "benchmarks/results/semdedup.json (largest n; runs on the driver inside publish)",
        }
    return stages


# ---------------------------------------------------------------- the model


def ingest_rates(short: dict[str, Any], long: dict[str, Any]) -> dict[str, Any]:
    """cpu(video) = fixed + per_source_s * source_s, from the two lengths; the rest from the long run."""

    def cpu(run: dict[str, Any]) -> float:
        return run["python_cpu_s"] + run["ffmpeg_cpu_s"]

    per_s = (cpu(long) - cpu(short)) / (long["source_s"] - short["source_s"])
    fixed = cpu(short) - per_s * short["source_s"]
    if per_s <= 0 or fixed < 0:  # noise beat the fit: no fixed part, the long run's ratio
        per_s, fixed = cpu(long) / long["source_s"], 0.0
    cores = cpu(long) / long["wall_s"]
    return {
        "cpu_s_per_source_s": round(per_s, 4),
        "cpu_s_fixed_per_video": round(fixed, 2),
        "cpu_s_per_decoded_row": round(per_s / SLOWTV["sampled_fps"], 5),
        "core_hours_per_source_hour": round(per_s, 4),
        "source_s_per_wall_s": round(long["source_s"] / long["wall_s"], 2),
        "cores_used_by_one_ingest": round(cores, 2),
        # Python (one GIL-bound pipeline) and ffmpeg (threaded decode) run pipelined: on an idle many-core node
        # one ingest could keep up to cpu / python_cpu cores busy, if Python is the serial part.
        "cores_one_ingest_could_use": round(cpu(long) / long["python_cpu_s"], 2),
        "python_share_of_cpu": round(long["python_cpu_s"] / cpu(long), 3),
        "task_peak_rss_mb": round(max(r["python_peak_rss_mb"] + r["ffmpeg_peak_rss_mb"] for r in (short, long)), 1),
        "kept_fraction": round(long["frames_kept"] / long["frames_decoded"], 3),
    }


def model(
    rates: dict[str, Any], pub: dict[str, Any], stages: dict[str, Any], videos: int, rows: float, kept: float
) -> dict[str, Any]:
    """Core-hours and peak memory of the mono path (download excluded), with optional add-ons."""
    source_s = rows / SLOWTV["sampled_fps"]
    ingest_cpu = videos * rates["cpu_s_fixed_per_video"] + source_s * rates["cpu_s_per_source_s"]
    publish = publish_cost(pub, rows)
    out: dict[str, Any] = {
        "videos": videos,
        "decoded_rows": int(rows),
        "kept_rows": int(kept),
        "sampled_source_hours": round(source_s / 3600, 1),
        "source_hours_per_video": round(source_s / 3600 / videos, 2),
        "ingest_core_hours": round(ingest_cpu / 3600, 1),
        "publish_core_hours": round(publish["cpu_s"] / 3600, 2),
        "publish_core_hours_power_law": round(publish["cpu_s_power_law"] / 3600, 2),
        "mono_core_hours": round((ingest_cpu + publish["cpu_s"]) / 3600, 1),
        "ingest_task_peak_rss_mb": rates["task_peak_rss_mb"],
        "publish_peak_rss_gb": publish["peak_rss_gb"],
        "publish_extrapolated": publish["extrapolated"],
        "add_ons": {},
    }
    if "clip_embed" in stages:
        clip = stages["clip_embed"]
        out["add_ons"]["clip_embed_core_hours_cpu"] = round(kept * clip["cpu_s_per_image"] / 3600, 1)
    if "semdedup" in stages:
        sd = stages["semdedup"]
        out["add_ons"]["semdedup_driver_hours"] = round(kept / 1e6 * sd["s_per_million"] / 3600, 2)
        out["add_ons"]["semdedup_peak_rss_gb"] = round(kept * sd["rss_bytes_per_embedding"] / 2**30, 1)
        out["add_ons"]["semdedup_extrapolated"] = kept > 1.5 * sd["n"]
    if "intrinsics" in stages:
        out["add_ons"]["intrinsics_core_hours"] = round(videos * stages["intrinsics"]["cpu_s_per_video"] / 3600, 1)
    return out


def ray_split(
    rates: dict[str, Any], estimate: dict[str, Any], nodes: int, cores: int, longest_video_hours: float
) -> dict[str, Any]:
    """Wall time on `nodes` x `cores`: per-video tasks in parallel, publish (and SemDeDup) on the driver alone.

    T_ingest = max(ingest_cpu / (nodes*cores), t_longest), t_longest = cpu(longest video) / k, where k is the
    cores one ingest keeps busy; T = T_ingest + T_publish."""
    k = max(1.0, rates["cores_used_by_one_ingest"])
    slots = nodes * max(1, math.floor(cores / k))
    ingest_cpu_s = estimate["ingest_core_hours"] * 3600
    throughput_s = ingest_cpu_s / (nodes * cores)
    longest_cpu_s = rates["cpu_s_fixed_per_video"] + longest_video_hours * 3600 * rates["cpu_s_per_source_s"]
    straggler_s = longest_cpu_s / k
    tasks = estimate["videos"]
    # Fewer videos than slots: the cluster cannot be filled, each video runs alone at k cores.
    ingest_s = max(throughput_s, straggler_s) if tasks >= slots else max(ingest_cpu_s / (tasks * k), straggler_s)
    publish_s = estimate["publish_core_hours"] * 3600
    publish_hi_s = estimate["publish_core_hours_power_law"] * 3600
    return {
        "nodes": nodes,
        "cores_per_node": cores,
        "cores_per_task_k": round(k, 2),
        "run_workers": slots,
        "tasks_per_node": slots // nodes,
        "node_peak_rss_gb": round(slots // nodes * rates["task_peak_rss_mb"] / 1024, 1),
        "longest_video_hours": longest_video_hours,
        "ingest_throughput_bound_h": round(throughput_s / 3600, 2),
        "ingest_straggler_bound_h": round(straggler_s / 3600, 2),
        "ingest_wall_h": round(ingest_s / 3600, 2),
        "publish_wall_h_driver": round(publish_s / 3600, 2),
        "publish_wall_h_driver_power_law": round(publish_hi_s / 3600, 2),
        "wall_h": round((ingest_s + publish_s) / 3600, 2),
        "wall_h_power_law_publish": round((ingest_s + publish_hi_s) / 3600, 2),
        "driver_peak_rss_gb": estimate["publish_peak_rss_gb"],
    }


def machine_busy_s() -> tuple[float, float]:
    """(busy CPU-seconds of the whole machine since boot, from /proc/stat, wall clock): sample twice for a rate."""
    fields = [int(f) for f in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields) - idle) / CLOCK_TICKS, time.perf_counter()


def other_busy_cores(seconds: float = 5.0) -> float:
    """Cores the rest of the machine keeps busy while this benchmark waits (the load it will compete with)."""
    busy0, t0 = machine_busy_s()
    time.sleep(seconds)
    busy1, t1 = machine_busy_s()
    return round((busy1 - busy0) / (t1 - t0), 2)


def predict_run(
    rates: dict[str, Any], pub: dict[str, Any], source_s: list[float], workers: int, load: float
) -> dict[str, Any]:
    """The model on this machine: CPU, and wall on all its cores (idle) or on a fair share of them, where `load`
    is the cores other work kept busy just before the run (CFS shares the cores in proportion to demand)."""
    cores = os.cpu_count() or 1
    k = max(1.0, rates["cores_used_by_one_ingest"])
    per_video = [rates["cpu_s_fixed_per_video"] + s * rates["cpu_s_per_source_s"] for s in source_s]
    rows = sum(source_s) * SLOWTV["sampled_fps"]
    publish_s = publish_cost(pub, rows)["cpu_s"]
    demand = min(workers, len(source_s)) * k
    idle_cores = min(cores, demand)
    fair_cores = cores * demand / (demand + load) if load > 0 else idle_cores
    fair_cores = min(fair_cores, idle_cores)

    def wall(c: float) -> float:
        return max(sum(per_video) / c, max(per_video) / min(k, c)) + publish_s

    return {
        "videos": len(source_s),
        "source_s": [round(s, 1) for s in source_s],
        "cpu_s": round(sum(per_video) + publish_s, 1),
        "cores_idle_machine": idle_cores,
        "wall_s_idle_machine": round(wall(idle_cores), 1),
        "other_work_busy_cores_before": load,
        "cores_fair_share": round(fair_cores, 2),
        "wall_s_fair_share": round(wall(fair_cores), 1),
        "publish_s": round(publish_s, 2),
    }


def planned_source_s(duration_s: float) -> float:
    """The sampled span plan_sampling gives a video of this length under configs/slowtv.yaml."""
    trim = _config().sample.trim
    head = min(trim.head_s, trim.max_fraction * duration_s)
    tail = min(trim.tail_s, trim.max_fraction * duration_s)
    start = math.ceil(head * SLOWTV["sampled_fps"] - 1e-6) / SLOWTV["sampled_fps"]
    return duration_s - tail - start


# ---------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--short-seconds", type=float, default=40.0, help="short ingest video (fixed cost)")
    parser.add_argument("--long-seconds", type=float, default=180.0, help="long ingest video (rate)")
    parser.add_argument("--videos", type=int, default=4, help="videos in the end-to-end check")
    parser.add_argument("--seconds", type=float, default=75.0, help="length of each end-to-end video")
    parser.add_argument("--workers", type=int, default=2, help="run.workers of the end-to-end check")
    parser.add_argument("--bitrate", default="2000k", help="H.264 bitrate of the test videos (YouTube 720p-like)")
    parser.add_argument("--intrinsics", action="store_true", help="also time COLMAP intrinsics on one video")
    parser.add_argument(
        "--intrinsics-json", type=Path, help="without --intrinsics: take the COLMAP figure from this earlier result"
    )
    parser.add_argument("--publish-json", type=Path, default=RESULTS / "publish.json")
    parser.add_argument("--nodes", type=int, default=10)
    parser.add_argument("--cores", type=int, default=16)
    parser.add_argument("--workdir", type=Path, default=WORKDIR, help="rendered videos and data roots")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--child-args", help=argparse.SUPPRESS)
    add_out_argument(parser)
    args = parser.parse_args()
    if args.child:
        kwargs = json.loads(args.child_args)
        fn = {"ingest": child_ingest, "curate": child_curate}[args.child]
        print(json.dumps(fn(**kwargs)), flush=True)
        return

    run_meta = meta()
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    # Inputs: unique 10 s segments, enough for the end-to-end videos and for the long one.
    per_video = math.ceil(args.seconds / SEGMENT_S)
    needed = max(args.videos * per_video, math.ceil(args.long_seconds / SEGMENT_S))
    clips = render_clips(work, math.ceil(needed / len(FLIPS)))
    parts = segments(clips)
    tag = f"{args.bitrate}"
    short = make_video(
        work / "videos" / f"short_{args.short_seconds:g}s_{tag}.mp4",
        parts[: math.ceil(args.short_seconds / SEGMENT_S)],
        args.short_seconds,
        args.bitrate,
    )
    long = make_video(
        work / "videos" / f"long_{args.long_seconds:g}s_{tag}.mp4",
        parts[: math.ceil(args.long_seconds / SEGMENT_S)],
        args.long_seconds,
        args.bitrate,
    )
    e2e = [
        make_video(
            work / "videos" / f"e2e{i}_{args.seconds:g}s_{tag}.mp4",
            parts[i * per_video : (i + 1) * per_video],
            args.seconds,
            args.bitrate,
        )
        for i in range(args.videos)
    ]
    inputs_s = time.perf_counter() - started

    # (a) ingest, each in a fresh root and process.
    roots = work / "roots"
    subprocess.run(["rm", "-rf", str(roots)], check=True)
    runs = {
        "short": run_child("ingest", video=str(short), root=str(roots / "short"), intrinsics=False),
        "long": run_child("ingest", video=str(long), root=str(roots / "long"), intrinsics=args.intrinsics),
    }
    rates = ingest_rates(runs["short"], runs["long"])
    decode = {
        "test_video": {**probe(long), **decode_only_cpu(long)},
        "renderer_crf18_clip": {**probe(clips[0]), **decode_only_cpu(clips[0])},
    }

    # (b), (c)
    pub = publish_rates(publish_figures(args.publish_json))
    stages = optional_stages()
    intrinsics_run, intrinsics_source = runs["long"].get("intrinsics"), "measured in this run"
    if intrinsics_run is None and args.intrinsics_json is not None and args.intrinsics_json.exists():
        earlier = json.loads(args.intrinsics_json.read_text())
        intrinsics_run = earlier.get("ingest_runs", {}).get("long", {}).get("intrinsics")
        intrinsics_source = f"{args.intrinsics_json} (an earlier --intrinsics run, {earlier['meta']['utc']})"
    if intrinsics_run and intrinsics_run.get("frames"):
        stages["intrinsics"] = {
            **intrinsics_run,
            "cpu_s_per_video": intrinsics_run["cpu_s"],
            "source": intrinsics_source,
            "note": "COLMAP (pycolmap, CPU, intrinsics.threads) on the long test video's longest clip at 1280x720; "
            "under SlowTV decimation a clip has at most decimate.keep = 100 frames, so this is the per-video cost",
        }

    # (d) the model.
    slowtv = model(rates, pub, stages, SLOWTV["videos"], SLOWTV["decoded_rows"], SLOWTV["kept_rows"])
    scale = SCALE_VIDEOS / SLOWTV["videos"]
    big = model(rates, pub, stages, SCALE_VIDEOS, SLOWTV["decoded_rows"] * scale, SLOWTV["kept_rows"] * scale)
    average_h = slowtv["source_hours_per_video"]
    ray = {
        "slowtv": ray_split(rates, slowtv, args.nodes, args.cores, longest_video_hours=round(3 * average_h, 2)),
        "videos_10000": ray_split(rates, big, args.nodes, args.cores, longest_video_hours=round(3 * average_h, 2)),
        "assumption": "longest video = 3x the SlowTV average sampled length (the straggler bound)",
    }

    # (e) the check: predict, then run.
    source_s = [planned_source_s(probe(v)["duration_s"]) for v in e2e]
    predicted = predict_run(rates, pub, source_s, args.workers, other_busy_cores())
    busy0, t0 = machine_busy_s()
    measured = run_child("curate", videos=[str(v) for v in e2e], root=str(roots / "e2e"), workers=args.workers)
    busy1, t1 = machine_busy_s()
    # Machine-wide busy time during the run less the run's own CPU: what the neighbours took meanwhile.
    measured["other_work_busy_cores_during"] = round(max(0.0, busy1 - busy0 - measured["cpu_s"]) / (t1 - t0), 2)
    check = {
        "predicted": predicted,
        "measured": measured,
        "ratio_cpu_measured_to_predicted": round(measured["cpu_s"] / predicted["cpu_s"], 3),
        "ratio_wall_measured_to_idle_prediction": round(measured["wall_s"] / predicted["wall_s_idle_machine"], 3),
        "ratio_wall_measured_to_fair_share_prediction": round(measured["wall_s"] / predicted["wall_s_fair_share"], 3),
    }

    emit(
        {
            "benchmark": "capacity",
            "settings": {
                "config": str(CONFIG.relative_to(REPO)),
                "video": f"{SIZE[0]}x{SIZE[1]} {FPS:g} fps H.264 main, {args.bitrate} (rendered, flipped segments)",
                "short_seconds": args.short_seconds,
                "long_seconds": args.long_seconds,
                "e2e_videos": args.videos,
                "e2e_seconds": args.seconds,
                "workers": args.workers,
                "inputs_s": round(inputs_s, 1),
            },
            "ingest_runs": runs,
            "ingest": rates,
            "decode_only": decode,
            "publish": pub,
            "optional_stages": stages,
            "model": {"slowtv": slowtv, "videos_10000": big},
            "ray": ray,
            "check": check,
            "total_s": round(time.perf_counter() - started, 1),
        },
        args.out,
        run_meta,
    )


if __name__ == "__main__":
    main()
