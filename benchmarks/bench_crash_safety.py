"""Crash safety: kill -9 the curate flow at random points, rerun, compare with an uninterrupted run. Prints JSON.

    python -m benchmarks.bench_crash_safety [--points 20] [--seed 0] [--workdir DIR] [--ephemeral]
                                            [--out benchmarks/results/crash_safety.json]

A small catalog (synthetic videos on a loopback HTTP server, downloads rate-limited so a download lasts long
enough to be interrupted, parts small so each video writes several shard files, plus one 404) is curated once
uninterrupted, in a subprocess (`python -m flows.cli curate`, the deployment's code path). Then, for each
point, a fresh data root: the same command is started and its whole process group (flow, ffmpeg children)
gets SIGKILL at the point; the state left behind is inspected; the command is rerun to completion and the
result compared with the uninterrupted run:

- identical bytes of every file under the root, except yt-dlp's `.info.json` (it stamps the extraction time)
  and `videos/archive.tsv` (lines in completion order; compared as a set);
- at kill time every `*.parquet` a reader can see opens; after the rerun no temporary file is left;
- nothing finished is done twice: a video record present at kill time, its shards and frame-stats parts
  keep their modification time, a completed download keeps its time and is not fetched again
  (`archive.tsv` lists each id once); `depthcurate verify` passes.

Points are stratified over the uninterrupted run's timeline: 3/4 at a uniform delay after the first download
shows (up to the time the last video record took in the uninterrupted run: downloads, decoding, shard writes
overlap there, two workers), the rest at a delay after the last record (publish: stats tables, manifests,
dataset.json). Delays count from those events, not from the process start, whose length varies. The stage a
kill actually hit is read from the files it left (`.part` download, hidden shard temporary, downloaded but
unrecorded video, all records but no dataset.json, or none of these: between steps), so jitter between runs
cannot mislabel a point.

By default a Prefect server is started on 127.0.0.1 for all runs (flows/local_services.py; a killed run stays
"Running" there, harmlessly); --ephemeral uses Prefect's per-process ephemeral mode instead (8-10 s more per
run).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq

from benchmarks.common import REPO, add_out_argument, add_workdir_argument, emit, meta, work_directory
from flows.local_services import prefect_server
from pipeline.corpus.verify import verify_dataset
from pipeline.io.data_root import DataRoot
from pipeline.io.storage import TMP_MARK
from pipeline.sources.catalog import CatalogEntry, write_catalog
from pipeline.synthetic.demo import serve_directory
from pipeline.synthetic.renderer import SceneSpec, render_video

DATASET = "crash"
CONFIG = """\
download: {attempts: 1, rate_limit: "%s"}
sample: {fps: 10, max_height: 192, trim: {head_s: 1.0, tail_s: 1.0}, decimate: null}
split: {train_fraction: 0.8, gap_frames: 3}
write: {row_group_bytes: 65536, part_bytes: 1048576}
run: {workers: 2}
"""
# Files whose bytes legitimately differ between two runs.
TIME_STAMPED = ("videos/*/*.info.json",)  # yt-dlp writes the extraction time ("epoch")
ORDER_ONLY = ("videos/*/archive.tsv",)  # one line per download, in completion order


@dataclass
class Run:
    returncode: int
    wall_s: float
    output: str
    timeline: dict[str, float] = field(default_factory=dict)


def build_catalog(directory: Path, videos: int, seconds: float) -> list[tuple[str, str]]:
    """Render `videos` clips (distinct scenes) into `directory`; returns (video_id, file name) incl. a 404."""
    directory.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(videos):
        path = directory / f"clip{i}.mp4"
        if not path.is_file():
            render_video(SceneSpec(width=320, height=192, fps=20.0, duration_s=seconds, seed=100 + i), path)
        names.append((f"clip{i}", path.name))
    names.append(("gone", "gone.mp4"))  # a failure record is part of the state too
    return names


def write_bench_catalog(path: Path, base_url: str, names: list[tuple[str, str]]) -> Path:
    return write_catalog(
        [
            CatalogEntry(video_id=vid, url=f"{base_url}/{name}", dataset=DATASET, category="natural")
            for vid, name in names
        ],
        path,
    )


def curate_command(catalog: Path, root: Path, config: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "flows.cli",
        "curate",
        "--catalog",
        str(catalog),
        "--data-root",
        str(root),
        "--config",
        str(config),
        "--prefect",  # the flow, as deployed; with --ephemeral, in Prefect's ephemeral mode
    ]


def child_env(extra: dict[str, str]) -> dict[str, str]:
    """The curate command's environment (it runs as `python -m flows.cli` in the repository root, which puts the
    project on its path): no API URL of the caller's, plus `extra`."""
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "HF_HUB_OFFLINE": "1"}
    env.pop("PREFECT_API_URL", None)
    env.update(extra)
    return env


def _start(command: list[str], env: dict[str, str], log: Path) -> tuple[subprocess.Popen, object]:
    handle = open(log, "w")  # noqa: SIM115 - the caller closes it
    # A session of its own, so SIGKILL reaches the flow and every ffmpeg it started, as a crash would.
    proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)
    return proc, handle


def run_to_completion(
    command: list[str],
    env: dict[str, str],
    root: Path,
    log: Path,
    n_videos: int,
    watch: bool = False,
    timeout_s: float = 600,
) -> Run:
    """Run the command; with `watch`, record when each stage first shows in the files (seconds from start)."""
    start = time.monotonic()
    proc, handle = _start(command, env, log)
    timeline: dict[str, float] = {}
    try:
        while proc.poll() is None:
            if time.monotonic() - start > timeout_s:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                raise RuntimeError(f"{command} ran over {timeout_s}s; see {log}")
            if watch:
                for stage in observed_stages(root, n_videos):
                    timeline.setdefault(stage, time.monotonic() - start)
            time.sleep(0.02 if watch else 0.1)
    finally:
        _reap(proc)
        handle.close()
    return Run(proc.returncode, time.monotonic() - start, log.read_text(), timeline)


def kill_after(
    command: list[str], env: dict[str, str], root: Path, log: Path, n_videos: int, trigger: str, delay_s: float
) -> float:
    """Start the command and SIGKILL its process group `delay_s` after `trigger` first shows in the files.

    "work": the first download or decode (so the start-up time of Python and Prefect, which varies from run to
    run, does not move the point); "all_records": every video finished, publish under way.
    """
    start = time.monotonic()
    proc, handle = _start(command, env, log)
    wanted = {"work": {"download", "decode", "shard_write"}, "all_records": {"all_records"}}[trigger]
    try:
        armed = None
        while proc.poll() is None:
            now = time.monotonic()
            if armed is None and wanted & set(observed_stages(root, n_videos)):
                armed = now
            if armed is not None and now - armed >= delay_s:
                os.killpg(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.005)
        proc.wait()
    finally:
        _reap(proc)
        handle.close()
    return time.monotonic() - start


def _reap(proc: subprocess.Popen) -> None:
    """Leave no run behind when the benchmark itself is interrupted."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def observed_stages(root: Path, n_videos: int) -> list[str]:
    """Which stages the files under `root` show in progress (several at once with two workers)."""
    stages = []
    videos = root / "videos" / DATASET
    records = {p.stem for p in (root / "stats" / "videos" / DATASET).glob("*.json")}
    downloaded = set()
    if (videos / "archive.tsv").is_file():
        downloaded = {line.split("\t")[0] for line in (videos / "archive.tsv").read_text().splitlines() if line}
    if videos.is_dir() and any(p.name.endswith((".part", ".ytdl")) for p in videos.iterdir()):
        stages.append("download")
    if downloaded - records:
        stages.append("decode")
    if any(TMP_MARK in p.name for p in (root / "shards").rglob(".*")):
        stages.append("shard_write")
    if len(records) >= n_videos:
        stages.append("all_records")
        if not (root / "dataset.json").is_file():
            stages.append("publish")
        else:
            stages.append("after_publish")
    if not stages:
        # Before anything is written, or between steps: yt-dlp looking at a URL before its .part exists,
        # a record written and the next download not begun.
        stages.append("startup" if not records and not downloaded else "between_steps")
    return stages


def visible_parquet_problems(root: Path) -> list[str]:
    """Every *.parquet a reader can see must be a whole file."""
    problems = []
    for path in root.rglob("*.parquet"):
        try:
            pq.read_metadata(path)
        except Exception as exc:  # noqa: BLE001 - any unreadable file is the finding
            problems.append(f"{path.relative_to(root)}: {exc}")
    return problems


def snapshot(root: Path) -> dict[str, int]:
    """mtime_ns of every file under root."""
    return {p.relative_to(root).as_posix(): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def finished_files(root: Path) -> tuple[set[str], set[str]]:
    """(files belonging to finished videos: record, shards, frame parts, preview), (completed downloads)."""
    done: set[str] = set()
    for record_path in (root / "stats" / "videos" / DATASET).glob("*.json"):
        record = json.loads(record_path.read_text())
        done.add(record_path.relative_to(root).as_posix())
        done.update(part["path"] for part in record["shards"] + record["frame_parts"])
    videos = root / "videos" / DATASET
    downloads: set[str] = set()
    if (videos / "archive.tsv").is_file():
        for line in (videos / "archive.tsv").read_text().splitlines():
            if line:
                downloads.add(f"videos/{DATASET}/{line.split(chr(9))[1]}")
    return done, downloads


def compare(clean: Path, other: Path) -> list[str]:
    """Differences between two data roots, ignoring only the files listed in TIME_STAMPED / ORDER_ONLY."""

    def files(root: Path) -> dict[str, Path]:
        skip = {p for pattern in TIME_STAMPED for p in root.glob(pattern)}
        return {p.relative_to(root).as_posix(): p for p in root.rglob("*") if p.is_file() and p not in skip}

    a, b = files(clean), files(other)
    problems = [f"only in the uninterrupted run: {k}" for k in sorted(a.keys() - b.keys())]
    problems += [f"only after the crash: {k}" for k in sorted(b.keys() - a.keys())]
    order_only = {p.relative_to(clean).as_posix() for pattern in ORDER_ONLY for p in clean.glob(pattern)}
    for key in sorted(a.keys() & b.keys()):
        left, right = a[key].read_bytes(), b[key].read_bytes()
        if key in order_only:
            lines_a, lines_b = left.decode().splitlines(), right.decode().splitlines()
            if sorted(lines_a) != sorted(lines_b) or len(set(lines_b)) != len(lines_b):
                problems.append(f"{key}: lines differ (a download done twice?)")
        elif left != right:
            problems.append(f"{key}: bytes differ")
    return problems


def trial(
    index: int,
    trigger: str,
    delay_s: float,
    work: Path,
    catalog: Path,
    config: Path,
    clean: Path,
    env: dict[str, str],
    n_videos: int,
) -> dict:
    root = work / f"point{index:02d}"
    command = curate_command(catalog, root, config)
    killed_after = kill_after(command, env, root, work / f"point{index:02d}-killed.log", n_videos, trigger, delay_s)
    stages = [s for s in observed_stages(root, n_videos) if s != "all_records"]
    torn = visible_parquet_problems(root) if root.exists() else []
    done, downloads = finished_files(root) if root.exists() else (set(), set())
    before = snapshot(root) if root.exists() else {}
    rerun = run_to_completion(command, env, root, work / f"point{index:02d}-rerun.log", n_videos)
    after = snapshot(root)
    redone = sorted(k for k in done | downloads if after.get(k) != before.get(k))
    leftovers = sorted(
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file() and (TMP_MARK in p.name or p.name.endswith((".part", ".ytdl")))
    )
    mismatches = compare(clean, root) if rerun.returncode == 0 else [f"rerun exited {rerun.returncode}"]
    problems = verify_dataset(DataRoot(root)) if rerun.returncode == 0 else []
    result = {
        "point": index,
        "trigger": trigger,
        "delay_s": round(delay_s, 3),
        "killed_after_s": round(killed_after, 2),
        "stages": stages,
        "records_at_kill": sum(k.startswith("stats/videos/") for k in done),
        "downloads_at_kill": len(downloads),
        "rerun_wall_s": round(rerun.wall_s, 2),
        "mismatches": mismatches,
        "torn_visible_files": torn,
        "leftover_temporaries": leftovers,
        "finished_then_redone": redone,
        "verify_problems": problems,
    }
    shutil.rmtree(root)
    return result


def plan_points(n: int, timeline: dict[str, float], rng: random.Random) -> list[tuple[str, float]]:
    """3/4 of the points uniformly over the per-video window, the rest after the last record (publish)."""
    first = min(timeline.get(s, float("inf")) for s in ("download", "decode", "shard_write"))
    first = first if first != float("inf") else 0.0
    last = timeline.get("all_records", first + 1.0)
    publish_s = max(0.05, timeline.get("after_publish", last + 0.5) - last)
    n_publish = max(1, n // 4)
    points = [("work", rng.uniform(0.0, last - first)) for _ in range(n - n_publish)]
    points += [("all_records", rng.uniform(0.0, publish_s * 1.2)) for _ in range(n_publish)]
    return sorted(points, key=lambda p: (p[0] != "work", p[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--points", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--videos", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=12.0, help="length of each rendered video")
    parser.add_argument("--rate-limit", default="400K", help="yt-dlp rate limit, so downloads can be interrupted")
    add_workdir_argument(parser, "the videos, data roots and logs")
    parser.add_argument("--ephemeral", action="store_true", help="Prefect ephemeral mode instead of a server")
    add_out_argument(parser)
    args = parser.parse_args()
    run_meta = meta("prefect", "yt-dlp")
    rng = random.Random(args.seed)
    with ExitStack() as stack:
        work = stack.enter_context(work_directory(args.workdir, prefix="crash-"))
        names = build_catalog(work / "sources", args.videos, args.seconds)
        base_url = stack.enter_context(serve_directory(work / "sources"))
        catalog = write_bench_catalog(work / "catalog.csv", base_url, names)
        config = work / "config.yaml"
        config.write_text(CONFIG % args.rate_limit)
        extra = {}
        if not args.ephemeral:
            # The runs need only the API URL: their PREFECT_HOME stays the caller's, as in ephemeral mode.
            server = stack.enter_context(prefect_server(work / "prefect_home"))
            extra = {"PREFECT_API_URL": server.env["PREFECT_API_URL"]}
        env = child_env(extra)
        n_videos = len(names)
        clean = work / "clean"
        shutil.rmtree(clean, ignore_errors=True)
        uninterrupted = run_to_completion(
            curate_command(catalog, clean, config), env, clean, work / "clean.log", n_videos, watch=True
        )
        if uninterrupted.returncode != 0:
            raise SystemExit(f"uninterrupted run failed:\n{uninterrupted.output[-3000:]}")
        # A rerun of a finished dataset: the baseline cost of "start, see everything done, publish".
        noop = run_to_completion(curate_command(catalog, clean, config), env, clean, work / "noop.log", n_videos)
        points = [
            trial(i, trigger, delay, work, catalog, config, clean, env, n_videos)
            for i, (trigger, delay) in enumerate(plan_points(args.points, uninterrupted.timeline, rng))
        ]
    stage_counts: dict[str, int] = {}
    for point in points:
        for stage in point["stages"]:
            stage_counts[stage] = stage_counts.get(stage, 0) + 1
    crash_cost = [p["killed_after_s"] + p["rerun_wall_s"] for p in points]
    failed = [
        p["point"]
        for p in points
        if p["mismatches"]
        or p["torn_visible_files"]
        or p["leftover_temporaries"]
        or p["finished_then_redone"]
        or p["verify_problems"]
    ]
    result = {
        "benchmark": "crash_safety",
        "catalog": {
            "videos": args.videos,
            "failing": 1,
            "seconds_each": args.seconds,
            "size": "320x192",
            "rate_limit": args.rate_limit,
            "workers": 2,
        },
        "prefect": "ephemeral" if args.ephemeral else "server on 127.0.0.1",
        "points": len(points),
        "stage_counts": dict(sorted(stage_counts.items())),
        "points_with_problems": failed,
        "mismatches": sum(len(p["mismatches"]) for p in points),
        "excluded_from_byte_comparison": {
            "time_stamped": list(TIME_STAMPED),
            "compared_as_line_sets": list(ORDER_ONLY),
        },
        "uninterrupted": {
            "wall_s": round(uninterrupted.wall_s, 2),
            "timeline_s": {k: round(v, 2) for k, v in sorted(uninterrupted.timeline.items(), key=lambda kv: kv[1])},
        },
        "rerun_of_finished_dataset_wall_s": round(noop.wall_s, 2),
        "killed_run_plus_rerun_wall_s": {
            "mean": round(sum(crash_cost) / len(crash_cost), 2),
            "max": round(max(crash_cost), 2),
        },
        "ratio_killed_plus_rerun_to_uninterrupted": round(sum(crash_cost) / len(crash_cost) / uninterrupted.wall_s, 3),
        "details": points,
    }
    emit(result, args.out, run_meta)


if __name__ == "__main__":
    main()
