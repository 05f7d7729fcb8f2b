"""Training-batch throughput of the Parquet shard loader against a folder-of-JPEG loader. Prints JSON.

    python -m benchmarks.bench_loader [--videos 4] [--seconds 50] [--size 640x384] [--batches 200] [--workdir DIR]
                                      [--out FILE]

A curated dataset is built without Prefect (render, then `pipeline.driver.curate_entries`: download of the
file:// sources, ingest, publish) from synthetic canyon videos, every frame kept (no trims, no decimation).
Its frames are then also written out in SlowTV's on-disk layout, one JPEG per frame at
<folder>/<video_id>/<frame_index:06d>.jpg, with the very JPEG bytes the shards hold.
(a) shard: what training reads, `trainer.data.ShardStream` + `make_loader` (video batches with their two
    supports, augmented, batch_size and num_workers as given);
(b) folder: a map-style torch Dataset fed shuffled target indices a batch at a time, which reads the target
    and its two support files by path and builds the batch with the same `BatchBuilder` code (the same
    `decode_rgb`, supports rule, augmentation and collation): only where the bytes come from differs.
The shard loader's own advantages count: it knows its planned batches, so it decodes a frame that is a target
now and a support later once (data.decode_cache_mb) and drops row groups after their last use.
Both run in one process, alternating rounds (shard, folder, shard, folder, ...); each round starts a fresh
loader, skips --warmup batches and times --batches (row-group reads of the shard loader fall inside the
timed window, as they do in training). Medians over rounds and the ratio shard/folder are reported, with
the seconds per batch each can sustain, next to one training step of a small model on this CPU for context.
On a shared machine wall-clock rates move with the neighbours' load, so the CPU seconds the loader's
processes (workers and main) spend per batch are reported too (from /proc), and the workers' peak RSS.
`in_process` builds the same planned batches in the main process, without a DataLoader, as the stream does
(the shard builder told the plan, so row-group reads and decoded-frame reuse are included), and one
row-group read. The page cache is warm for both (the files were just written): a cold cache is not simulated.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pipeline.torch_compat import ensure_torchvision

ensure_torchvision()  # before anything imports timm / torchvision on a CPU torch

import numpy as np  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader, Dataset, Sampler  # noqa: E402

from benchmarks.common import (  # noqa: E402
    Stopwatch,
    add_out_argument,
    add_workdir_argument,
    emit,
    meta,
    proc_cpu_s,
    proc_kb,
    work_directory,
)
from pipeline.config import load_config  # noqa: E402
from pipeline.driver import curate_entries  # noqa: E402
from pipeline.io.data_root import DataRoot  # noqa: E402
from pipeline.sources.catalog import CatalogEntry  # noqa: E402
from pipeline.synthetic.renderer import SceneSpec, normalized_intrinsics, render_video  # noqa: E402
from trainer.config import TrainConfig, load_train_config  # noqa: E402
from trainer.data import BatchBuilder, ShardReader, ShardStream, make_loader  # noqa: E402
from trainer.manifest import load_manifests  # noqa: E402
from trainer.plan import Batch, EpochPlan  # noqa: E402

FPS = 10.0


def build_dataset(work: Path, videos: int, seconds: float, width: int, height: int) -> tuple[Path, dict[str, Any]]:
    """Render, curate (every frame kept, split train) and publish; returns the manifest and counts."""
    sources = work / "sources"
    sources.mkdir(parents=True, exist_ok=True)
    root = DataRoot(work / "data")
    cfg = load_config(
        overrides={
            "sample": {"fps": FPS, "max_height": None, "trim": {"head_s": 0, "tail_s": 0}, "decimate": None},
            "split": {"train_fraction": 1.0, "gap_frames": 0},
            "download": {"local_roots": [str(sources)]},
        }
    )
    entries = []
    for i in range(videos):
        spec = SceneSpec(width=width, height=height, fps=FPS, duration_s=seconds, seed=300 + i)
        path = render_video(spec, sources / f"v{i}.mp4")
        fx, fy, cx, cy = normalized_intrinsics(spec)
        entries.append(
            CatalogEntry(
                video_id=f"v{i}", url=f"file://{path}", dataset="bench", category="natural", fx=fx, fy=fy, cx=cx, cy=cy
            )
        )
    result = curate_entries(entries, root, cfg)
    failed = [video for video in result.videos if video.status != "ok"]
    if failed:
        raise RuntimeError(f"curating failed: {failed}")
    kept = sum(video.frames_kept for video in result.videos)
    manifest = root.manifest("bench")
    shards = sorted({p for p in pq.read_table(manifest, columns=["shard"])["shard"].to_pylist()})
    groups = sum(pq.ParquetFile(root.root / s).metadata.num_row_groups for s in shards)
    size = sum((root.root / s).stat().st_size for s in shards)
    return manifest, {"frames": kept, "shards": len(shards), "row_groups": groups, "shard_mb": round(size / 2**20, 1)}


def export_folder(plan: EpochPlan, folder: Path) -> tuple[np.ndarray, dict[str, Any]]:
    """Write each manifest row's JPEG bytes to folder/<video_id>/<frame_index:06d>.jpg; path per plan row."""
    frame = plan.frame
    paths = np.empty(len(frame), object)
    total = 0
    for (root, shard), rows in frame.groupby(["root", "shard"], sort=False).groups.items():
        images = pq.read_table(Path(root) / shard, columns=["image"])["image"]
        for index in rows:
            video, number = frame.at[index, "video_id"], int(frame.at[index, "frame_index"])
            path = folder / str(video) / f"{number:06d}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            data = images[int(frame.at[index, "row"])].as_py()
            path.write_bytes(data)
            paths[index] = str(path)
            total += len(data)
    return paths, {"files": len(frame), "folder_mb": round(total / 2**20, 1)}


class FileBatchBuilder(BatchBuilder):
    """BatchBuilder whose rows come from one JPEG file per frame instead of shard row groups."""

    def __init__(self, plan: EpochPlan, cfg, paths: np.ndarray):
        super().__init__(plan, cfg, train=True)
        self.files = paths

    def _row(self, index: int, stereo: bool) -> dict[str, Any]:
        with open(self.files[index], "rb") as fh:
            return {"image": fh.read()}


class FolderDataset(Dataset):
    """Map-style: item = a list of target rows; reads target and supports by path, as SlowTV's loader."""

    def __init__(self, plan: EpochPlan, cfg, paths: np.ndarray):
        self.builder = FileBatchBuilder(plan, cfg, paths)
        self.seed = cfg.seed

    def __getitem__(self, targets: np.ndarray) -> dict[str, Any]:
        return self.builder(Batch(0, np.asarray(targets, np.int64), (self.seed, int(targets[0]))))


class ShuffledBatches(Sampler):
    """Endless epochs of a random permutation of the eligible rows, cut into full batches."""

    def __init__(self, rows: np.ndarray, batch_size: int, seed: int):
        self.rows, self.batch_size, self.seed = rows, batch_size, seed

    def __iter__(self):
        for epoch in itertools.count():
            order = np.random.default_rng([self.seed, epoch]).permutation(self.rows)
            for start in range(0, len(order) - self.batch_size + 1, self.batch_size):
                yield order[start : start + self.batch_size]


def folder_loader(plan: EpochPlan, cfg: TrainConfig, paths: np.ndarray) -> DataLoader:
    data = cfg.data
    rows = np.flatnonzero(plan.eligible)
    workers = data.num_workers
    return DataLoader(
        FolderDataset(plan, data, paths),
        batch_size=None,
        sampler=ShuffledBatches(rows, data.batch_size, data.seed),
        num_workers=workers,
        pin_memory=torch.cuda.is_available(),
        prefetch_factor=2 if workers else None,
    )


def time_loader(loader: DataLoader, warmup: int, batches: int) -> dict[str, float]:
    """Seconds to the first batch, then the rate over `batches` batches after `warmup` (>= 1) skipped, the
    CPU seconds per batch of the workers and the main process in that window, and the workers' peak RSS."""
    start = time.perf_counter()
    iterator = iter(loader)
    next(iterator)
    first = time.perf_counter() - start
    for _ in range(warmup - 1):
        next(iterator)
    pids = [w.pid for w in getattr(iterator, "_workers", [])]  # DataLoader internals: a benchmark may peek
    cpu_from = sum(proc_cpu_s(pid) for pid in pids) + time.process_time()
    timed_from = time.perf_counter()
    samples = 0
    for _ in range(batches):
        batch = next(iterator)
        assert batch["kind"] == "video" and batch["supports"].shape[1] == 2
        samples += batch["image"].shape[0]
    elapsed = time.perf_counter() - timed_from
    cpu = sum(proc_cpu_s(pid) for pid in pids) + time.process_time() - cpu_from
    peak = max((proc_kb(f"/proc/{pid}/status", "VmHWM", float("nan")) / 1024 for pid in pids), default=float("nan"))
    del iterator  # shuts the workers down
    return {
        "first_batch_s": first,
        "samples_per_s": samples / elapsed,
        "batches_per_s": batches / elapsed,
        "cpu_s_per_batch": cpu / batches,
        "worker_peak_rss_mb": peak,
    }


def in_process(plan: EpochPlan, cfg: TrainConfig, paths: np.ndarray, batches: int) -> dict[str, Any]:
    """Per-batch build cost without a DataLoader, as the stream builds them, and one row-group read."""
    planned = plan.epoch(0, 1)[0][:batches]
    shard, folder = BatchBuilder(plan, cfg.data), FileBatchBuilder(plan, cfg.data, paths)
    times: dict[str, list[float]] = {"shard": [], "folder": [], "shard_cpu": [], "folder_cpu": []}
    for _ in range(3):
        for name, builder in (("shard", shard), ("folder", folder)):
            if builder is shard:
                shard.plan_ahead(planned)  # as ShardStream does; the pass re-reads the row groups it needs
            start, cpu = time.perf_counter(), time.process_time()
            for batch in planned:
                builder(batch)
            times[name].append((time.perf_counter() - start) / len(planned))
            times[f"{name}_cpu"].append((time.process_time() - cpu) / len(planned))
    frames = shard.frames
    group_reads = []
    for path in sorted(set(plan.frame["root"] + "/" + plan.frame["shard"]))[:4]:
        start = time.perf_counter()
        ShardReader(1).row(path, 0, 0, stereo=False)
        group_reads.append(time.perf_counter() - start)
    return {
        "batches": len(planned),
        "shard_s_per_batch": round(min(times["shard"]), 4),
        "folder_s_per_batch": round(min(times["folder"]), 4),
        "shard_cpu_s_per_batch": round(min(times["shard_cpu"]), 4),
        "folder_cpu_s_per_batch": round(min(times["folder_cpu"]), 4),
        "shard_decoded_frame_reuse": round(frames.hits / max(1, frames.hits + frames.misses), 3),
        "row_group_read_s": round(statistics.median(group_reads), 3),
    }


def train_step_time(cfg: TrainConfig, steps: int, encoder: str, pose_encoder: str) -> dict[str, Any]:
    """Median seconds of a forward + backward + AdamW step on a video batch of the benchmark's shape."""
    from trainer.objective import DepthTraining

    model_cfg = cfg.model.model_copy(update={"encoder": encoder, "pose_encoder": pose_encoder})
    torch.manual_seed(0)
    model = DepthTraining(model_cfg, cfg.loss)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    b, h, w = cfg.data.batch_size, cfg.data.height, cfg.data.width
    batch = {
        "kind": "video",
        "image": torch.rand(b, 3, h, w),
        "supports": torch.rand(b, 2, 3, h, w),
        "intrinsics": torch.tensor([[0.7, 1.2, 0.5, 0.5]] * b),
    }
    times = []
    for _ in range(steps + 1):  # the first step warms up allocators
        start = time.perf_counter()
        model(batch)["loss"].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    return {
        "encoder": encoder,
        "pose_encoder": pose_encoder,
        "torch_threads": torch.get_num_threads(),
        "step_s": round(statistics.median(times[1:]), 3),
        "steps_timed": steps,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--videos", type=int, default=4, help="synthetic videos (one scene seed each)")
    parser.add_argument("--seconds", type=float, default=50.0, help="length of each video (10 fps, all kept)")
    parser.add_argument("--size", default="640x384", help="rendered (and stored) frame size WxH")
    parser.add_argument("--train-size", default="192x320", help="training HxW (data.height x data.width)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers, the same for both")
    parser.add_argument("--decode-cache-mb", type=float, help="data.decode_cache_mb (default: the config's)")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds of each loader, alternating")
    parser.add_argument("--batches", type=int, default=200, help="batches timed per round")
    parser.add_argument("--warmup", type=int, default=5, help="batches skipped per round before timing")
    parser.add_argument(
        "--in-process-batches",
        type=int,
        default=30,
        help="also time building batches in the main process, no DataLoader (0: skip)",
    )
    parser.add_argument("--train-steps", type=int, default=2, help="training steps timed for context (0: skip)")
    parser.add_argument("--encoder", default="convnext_atto", help="depth encoder of the training step")
    parser.add_argument("--pose-encoder", default="resnet18")
    add_workdir_argument(parser, "the dataset")
    add_out_argument(parser)
    args = parser.parse_args()
    run_meta = meta("torchvision", "timm")
    args.warmup = max(1, args.warmup)
    width, height = (int(v) for v in args.size.lower().split("x"))
    train_h, train_w = (int(v) for v in args.train_size.lower().split("x"))
    started = Stopwatch()
    with work_directory(args.workdir, prefix="bench-loader-") as work:
        key = [args.videos, args.seconds, width, height]
        cache = work / "dataset.json"
        build = Stopwatch()
        if cache.is_file() and json.loads(cache.read_text())["key"] == key:  # --workdir: reuse what is built
            stored = json.loads(cache.read_text())
            manifest, dataset = Path(stored["manifest"]), stored["dataset"]
        else:
            manifest, dataset = build_dataset(work, args.videos, args.seconds, width, height)
            cache.write_text(json.dumps({"key": key, "manifest": str(manifest), "dataset": dataset}))
        build_s = build.s
        data = {"height": train_h, "width": train_w, "batch_size": args.batch_size, "num_workers": args.workers}
        if args.decode_cache_mb is not None:
            data["decode_cache_mb"] = args.decode_cache_mb
        cfg = load_train_config(overrides={"data": data})
        plan = EpochPlan(load_manifests([str(manifest)], "train", cfg.data.filters), cfg.data)
        paths, folder = export_folder(plan, work / "folder")
        rounds: dict[str, list[dict[str, float]]] = {"shard": [], "folder": []}
        for _ in range(args.rounds):
            for name in ("shard", "folder"):
                loader = (
                    make_loader(ShardStream(plan, cfg.data)) if name == "shard" else folder_loader(plan, cfg, paths)
                )
                rounds[name].append(time_loader(loader, args.warmup, args.batches))
        result: dict[str, Any] = {}
        for name, runs in rounds.items():
            sps = statistics.median(r["samples_per_s"] for r in runs)
            bps = statistics.median(r["batches_per_s"] for r in runs)
            result[name] = {
                "samples_per_s": round(sps, 1),
                "rounds_samples_per_s": [round(r["samples_per_s"], 1) for r in runs],
                "s_per_batch": round(1.0 / bps, 4),
                "first_batch_s": round(statistics.median(r["first_batch_s"] for r in runs), 3),
                "cpu_s_per_batch": round(statistics.median(r["cpu_s_per_batch"] for r in runs), 4),
                "worker_peak_rss_mb": round(max(r["worker_peak_rss_mb"] for r in runs), 1),
            }
        single = in_process(plan, cfg, paths, args.in_process_batches) if args.in_process_batches else None
        out = {
            "setup": {
                "videos": args.videos,
                "frame_size": f"{width}x{height}",
                "train_size": f"{train_h}x{train_w}",
                "batch_size": args.batch_size,
                "workers": args.workers,
                "supports": 2,
                "decode_cache_mb": cfg.data.decode_cache_mb,
                "rounds": args.rounds,
                "batches_per_round": args.batches,
                "warmup_batches": args.warmup,
                **dataset,
                **folder,
                "cpu_count": os.cpu_count(),
                "build_s": round(build_s, 1),
            },
            "shard": result["shard"],
            "folder": result["folder"],
            "ratio_shard_to_folder": round(result["shard"]["samples_per_s"] / result["folder"]["samples_per_s"], 3),
            # CPU per batch, folder over shard: > 1 means the shard loader needs less CPU for the same batches.
            "cpu_ratio_folder_to_shard": round(
                result["folder"]["cpu_s_per_batch"] / result["shard"]["cpu_s_per_batch"], 3
            ),
            "note": "page cache warm for both loaders (files just written); a cold cache / network storage is "
            "not simulated. Each loaded sample decodes 3 JPEGs (target + 2 supports).",
        }
        if single is not None:
            out["in_process"] = single
        if args.train_steps:
            step = train_step_time(cfg, args.train_steps, args.encoder, args.pose_encoder)
            step["loader_headroom_shard"] = round(step["step_s"] / result["shard"]["s_per_batch"], 1)
            out["train_step_cpu"] = step
        out["wall_s"] = round(started.s, 1)
        emit(out, args.out, run_meta)


if __name__ == "__main__":
    main()
