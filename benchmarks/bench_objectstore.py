"""Local disk against an S3 data root (moto's server on loopback), side by side in one run. Prints JSON.

    python -m benchmarks.bench_objectstore [--videos 2] [--seconds 20] [--size 640x360] [--rounds 3] [--batches 60]
                                           [--out FILE]

(a) pipeline: `pipeline.driver.curate_entries` (yt-dlp's copy of each file:// source, ingest, publish; one
    video at a time) of the same rendered videos into a fresh local root and a fresh s3:// root, alternating
    rounds (local, s3, local, s3, ...), after one untimed warm-up; the s3 time includes every upload and the
    publish reads.
(b) trainer: `ShardStream` + `make_loader` (2 workers, video batches with supports) over the local manifest and
    the s3 manifest, alternating rounds; each round starts a fresh loader (so row groups are fetched inside the
    timed window) and times --batches batches after 2 warm-up batches.
Medians over rounds and the ratios s3/local are reported. The server is moto (Python, a subprocess on this same
machine, sharing its CPUs): the figures bound the client-side overhead of the object-store path, they are not
a measurement of S3.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import time
import uuid

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pipeline.torch_compat import ensure_torchvision

ensure_torchvision()  # before anything imports timm / torchvision on a CPU torch

import requests  # noqa: E402

from benchmarks.common import Stopwatch, add_out_argument, emit, meta, work_directory  # noqa: E402
from flows.local_services import free_port  # noqa: E402
from pipeline.config import load_config  # noqa: E402
from pipeline.driver import curate_entries  # noqa: E402
from pipeline.io.data_root import DataRoot  # noqa: E402
from pipeline.sources.catalog import CatalogEntry  # noqa: E402
from pipeline.synthetic.renderer import SceneSpec, normalized_intrinsics, render_video  # noqa: E402
from trainer.config import load_train_config  # noqa: E402
from trainer.data import ShardStream, make_loader  # noqa: E402
from trainer.manifest import load_manifests  # noqa: E402
from trainer.plan import EpochPlan  # noqa: E402


def start_moto() -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            requests.get(url, timeout=1)
            return proc, url
        except requests.ConnectionError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("moto server did not start")


def curate(root: DataRoot, entries: list[CatalogEntry], cfg) -> float:
    """Seconds to download (copy), ingest and publish `entries` into `root`; every video must come out ok."""
    with Stopwatch() as watch:
        result = curate_entries(entries, root, cfg)
    assert all(video.status == "ok" for video in result.videos), result.videos
    return watch.s


def loader_rate(manifest: str, batches: int) -> float:
    cfg = load_train_config(overrides={"data": {"batch_size": 8, "height": 192, "width": 320, "num_workers": 2}})
    stream = ShardStream(EpochPlan(load_manifests([manifest], "train", cfg.data.filters), cfg.data), cfg.data)
    it = iter(make_loader(stream))
    for _ in range(2):
        next(it)
    with Stopwatch() as watch:
        for _ in itertools.islice(it, batches):
            pass
    del it
    return batches / watch.s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--videos", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--size", default="640x360")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batches", type=int, default=60)
    add_out_argument(parser)
    args = parser.parse_args()
    run_meta = meta("fsspec", "s3fs", "moto")
    width, height = (int(v) for v in args.size.split("x"))
    server, endpoint = start_moto()
    os.environ.update(
        {
            "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": "bench",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": endpoint,
        }
    )
    try:
        with work_directory(None, prefix="bench-objectstore-") as work:
            cfg = load_config(
                overrides={
                    "sample": {"fps": 10, "trim": {"head_s": 0, "tail_s": 0}, "decimate": None, "max_height": height},
                    "split": {"train_fraction": 1.0, "gap_frames": 0},
                    "run": {"workers": 1},  # one video at a time, as the figures before the driver
                    "download": {"local_roots": [str(work / "src")]},
                }
            )
            entries = []
            for i in range(args.videos):
                spec = SceneSpec(width=width, height=height, fps=30.0, duration_s=args.seconds, seed=40 + i)
                fx, fy, cx, cy = normalized_intrinsics(spec)
                path = render_video(spec, work / "src" / f"v{i}.mp4")
                entries.append(
                    CatalogEntry(
                        video_id=f"v{i}",
                        url=f"file://{path}",
                        dataset="bench",
                        category="natural",
                        fx=fx,
                        fy=fy,
                        cx=cx,
                        cy=cy,
                    )
                )
            import fsspec.core

            bucket = f"bench-{uuid.uuid4().hex[:8]}"
            fsspec.core.url_to_fs(f"s3://{bucket}")[0].mkdir(bucket)
            # Untimed: yt-dlp's first extraction in a process loads its extractors (about a second), which
            # would otherwise land in the first local round only.
            curate(DataRoot(work / "warm-up"), entries[:1], cfg)
            times: dict[str, list[float]] = {"local": [], "s3": []}
            roots: dict[str, DataRoot] = {}
            for r in range(args.rounds):
                roots["local"] = DataRoot(work / f"local-{r}")
                roots["s3"] = DataRoot(f"s3://{bucket}/round-{r}", work_dir=work / f"s3work-{r}")
                for kind in ("local", "s3"):
                    times[kind].append(curate(roots[kind], entries, cfg))
            manifests = {kind: roots[kind].address(roots[kind].manifest("bench")) for kind in roots}
            rates: dict[str, list[float]] = {"local": [], "s3": []}
            for _ in range(args.rounds):
                for kind in ("local", "s3"):
                    rates[kind].append(loader_rate(manifests[kind], args.batches))
            shards = json.loads(roots["local"].dataset_json.read_text())["shards"]
    finally:
        server.terminate()
        server.wait(timeout=30)
    curate_s = {k: round(statistics.median(v), 3) for k, v in times.items()}
    batches_s = {k: round(statistics.median(v), 2) for k, v in rates.items()}
    emit(
        {
            "videos": args.videos,
            "seconds_each": args.seconds,
            "size": args.size,
            "rounds": args.rounds,
            "shard_bytes": sum(s["bytes"] for s in shards),
            "samples": sum(s["rows"] for s in shards),
            "ingest_publish_s": curate_s,
            "ingest_publish_ratio_s3_over_local": round(curate_s["s3"] / curate_s["local"], 3),
            "loader_batches_per_s": batches_s,
            "loader_ratio_s3_over_local": round(batches_s["s3"] / batches_s["local"], 3),
            "batch": {"size": 8, "height": 192, "width": 320, "workers": 2},
            "all_rounds": {"ingest_publish_s": times, "loader_batches_per_s": rates},
        },
        args.out,
        run_meta,
    )


if __name__ == "__main__":
    main()
