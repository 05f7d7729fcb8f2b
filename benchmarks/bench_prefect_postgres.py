"""A Prefect server on PostgreSQL against the default SQLite server under the same load. Prints JSON.

    python -m benchmarks.bench_prefect_postgres [--videos 200] [--second 20] [--workers 4] [--out FILE]

For each backend, in the same run: a fresh `prefect server start` on 127.0.0.1 (SQLite in its PREFECT_HOME, or a
throw-away PostgreSQL from flows/local_services.py), every deployment of prefect.yaml registered, then two
`curate/slowtv` flow runs scheduled together and taken by one process worker: one mapping `--videos` 1-second
videos (loopback HTTP, yt-dlp, ffmpeg, Parquet; `run.workers` in flight) and a concurrent second run of
`--second` videos into another data root. Reported per backend: wall time from worker start to both runs
finished, the flow runs' own durations, records ok, database error lines in the server log, peak RSS of the
server's process tree (sampled every 0.25 s) and of its main process (VmHWM), and for PostgreSQL the peak of
the summed RSS and PSS of all its processes (PSS counts shared buffers once); CPU seconds of the server and of
PostgreSQL from their start to the end of the load (steadier than wall time on a shared machine). Ratios are
PostgreSQL / SQLite. The JSON goes to --out (default benchmarks/results/prefect_postgres.json) and stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
import threading
import urllib.request
from collections.abc import Callable
from pathlib import Path

from benchmarks.common import RESULTS, Stopwatch, add_out_argument, emit, meta, proc_cpu_s, proc_kb, proc_stat
from flows.local_services import (
    build_load_sources,
    create_flow_run,
    database_trouble,
    deploy_all,
    install_postgres,
    postgres_server,
    prefect_server,
    run_flow_runs,
    write_load_catalog,
    write_load_config,
)
from pipeline.synthetic.demo import serve_directory

MB = 2**20


def process_tree(root: int) -> list[int]:
    """`root` and all its descendants, from /proc/*/stat."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        fields = proc_stat(int(stat.parent.name))
        if fields is None:
            continue  # exited meanwhile
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def tree_cpu_s(root: int) -> float:
    """CPU seconds (user + system) of `root`'s tree, with its reaped children (PostgreSQL's exited backends)."""
    return sum(proc_cpu_s(pid, children=True) for pid in process_tree(root))


def tree_memory(root: int) -> dict[str, float]:
    pids = process_tree(root)
    return {
        "rss_mb": sum(proc_kb(f"/proc/{p}/status", "VmRSS") for p in pids) / 1024,
        "pss_mb": sum(proc_kb(f"/proc/{p}/smaps_rollup", "Pss") for p in pids) / 1024,
        "processes": len(pids),
    }


class PeakSampler:
    """Sample the memory of some process trees in a thread; keep the peaks."""

    def __init__(self, roots: dict[str, Callable[[], int]], interval_s: float = 0.25) -> None:
        self.roots, self.interval_s = roots, interval_s
        self.peaks: dict[str, dict[str, float]] = {name: {} for name in roots}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stop.is_set():
            for name, root in self.roots.items():
                for key, value in tree_memory(root()).items():
                    self.peaks[name][key] = max(self.peaks[name].get(key, 0), value)
            self._stop.wait(self.interval_s)


def flow_run(api_url: str, run_id: str) -> dict:
    with urllib.request.urlopen(f"{api_url}/flow_runs/{run_id}", timeout=10) as response:
        return json.load(response)


def run_load(
    backend: str, work: Path, base_url: str, names: list[str], second: int, workers: int, pg_bin: Path | None
) -> dict:
    """Both flow runs against a fresh server of `backend`; returns the figures."""
    work.mkdir(parents=True)
    config = write_load_config(work / "load.yaml", workers)
    main_catalog = write_load_catalog(work / "main.csv", base_url, names, "load")
    second_catalog = write_load_catalog(work / "second.csv", base_url, names[:second], "second")
    with _database(backend, pg_bin) as database:
        with prefect_server(work / "home", database.url if database else None) as server:
            deploy_all(server.env)
            runs = [
                create_flow_run(
                    server.env, "curate/slowtv", f"catalog={catalog}", f"data_root={root}", f"config={config}"
                )
                for catalog, root in ((main_catalog, work / "data_main"), (second_catalog, work / "data_second"))
            ]
            roots = {"server": lambda: server.pid}
            if database:
                roots["postgres"] = database.pid
            with PeakSampler(roots) as sampler, Stopwatch() as watch:
                run_flow_runs(server.env, work, runs, timeout=1800)
            wall = watch.s
            server_hwm_mb = proc_kb(f"/proc/{server.pid}/status", "VmHWM") / 1024
            cpu = {name: tree_cpu_s(root()) for name, root in roots.items()}
            details = [flow_run(server.env["PREFECT_API_URL"], run_id) for run_id in runs]
        trouble = database_trouble(server.log)
        errors = [line for line in server.log.read_text(errors="replace").splitlines() if "ERROR" in line]
    counts = [
        json.loads((work / root / "dataset.json").read_text())["counts"]["videos"]
        for root in ("data_main", "data_second")
    ]
    result = {
        "wall_s": round(wall, 1),
        "flow_run_s": [round(d["total_run_time"], 1) for d in details],
        "states": [d["state_type"] for d in details],
        "videos": [len(names), second],
        "records": counts,
        "database_error_lines": len(trouble),
        "database_error_examples": trouble[:3],
        "server_error_examples": errors[:3],  # what the database errors broke
        "server_peak_tree_rss_mb": round(sampler.peaks["server"]["rss_mb"], 1),
        "server_main_process_peak_rss_mb": round(server_hwm_mb, 1),
        "server_processes": int(sampler.peaks["server"]["processes"]),
        "server_cpu_s": round(cpu["server"], 1),  # less disturbed by a busy machine than wall time
    }
    if database:
        result["postgres_peak_rss_sum_mb"] = round(sampler.peaks["postgres"]["rss_mb"], 1)
        result["postgres_peak_pss_mb"] = round(sampler.peaks["postgres"]["pss_mb"], 1)
        result["postgres_peak_processes"] = int(sampler.peaks["postgres"]["processes"])
        result["postgres_cpu_s"] = round(cpu["postgres"], 1)
    return result


def _database(backend: str, pg_bin: Path | None):
    return postgres_server(pg_bin) if backend == "postgres" else contextlib.nullcontext(None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--videos", type=int, default=200)
    parser.add_argument("--second", type=int, default=20, help="videos of the concurrent second flow run")
    parser.add_argument("--workers", type=int, default=4, help="run.workers: videos in flight per flow run")
    add_out_argument(parser, default=RESULTS / "prefect_postgres.json")
    args = parser.parse_args()
    run_meta = meta("prefect", "yt-dlp")
    pg_bin = install_postgres()
    with tempfile.TemporaryDirectory(prefix="bench-pg-") as tmp:
        sources = Path(tmp) / "sources"
        names = build_load_sources(sources, args.videos)
        with serve_directory(sources) as base_url:
            figures = {
                backend: run_load(backend, Path(tmp) / backend, base_url, names, args.second, args.workers, pg_bin)
                for backend in ("sqlite", "postgres")
            }
    pg, lite = figures["postgres"], figures["sqlite"]
    report = {
        "setup": {
            "videos": args.videos,
            "second_run_videos": args.second,
            "run_workers": args.workers,
            "video": "1 s, 64x36, 10 fps H.264, sampled at 5 fps",
            "postgres_bin": str(pg_bin),
        },
        **figures,
        "ratios_postgres_over_sqlite": {
            "wall_s": round(pg["wall_s"] / lite["wall_s"], 3),
            "main_flow_run_s": round(pg["flow_run_s"][0] / lite["flow_run_s"][0], 3),
            "server_peak_tree_rss_mb": round(pg["server_peak_tree_rss_mb"] / lite["server_peak_tree_rss_mb"], 3),
            "server_cpu_s": round(pg["server_cpu_s"] / lite["server_cpu_s"], 3),
            "server_plus_database_cpu_s": round((pg["server_cpu_s"] + pg["postgres_cpu_s"]) / lite["server_cpu_s"], 3),
        },
    }
    emit(report, args.out, run_meta)


if __name__ == "__main__":
    main()
