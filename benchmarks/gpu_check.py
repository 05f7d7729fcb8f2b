"""GPU smoke and throughput check of the trainer and the pipeline's torch stages. Prints JSON.

    python -m benchmarks.gpu_check [--tiny] [--device auto|cuda|cpu] [--manifest FILE ...] [--steps N]
                                   [--workers N] [--workdir DIR] [--out FILE]

On CUDA (about 2-4 minutes on one GPU):
- fit: `trainer.train.fit` at the SlowTV config (trainer/configs/slowtv.yaml: ConvNeXt-B depth, ConvNeXt-T pose,
  384x640, batch 8, random encoder weights) with bf16 autocast for --steps (20) steps: the median step time after
  the first 5 (from the run's log.jsonl), the median wait for data, and peak GPU memory
  (torch.cuda.max_memory_allocated over the fit);
- loader: the shard loader alone (`ShardStream` + `make_loader`, --workers workers, same config), samples/s
  against the step rate: does the loader keep up with the GPU?
- raft: the RAFT flow backend (`pipeline.stereo.optical_flow.RAFTFlow`, raft_large, 12 updates, fp16 autocast)
  from a randomly initialised local state dict, on rendered frame pairs;
- clip: CLIP embedding (`pipeline.clip.model.ClipModel`, ViT-B-32 from a random local checkpoint, bf16);
- torchrun: `torchrun --standalone --nproc-per-node 1` running this module's `--ddp-child`, which joins an NCCL
  process group, all-reduces a tensor and runs a 2-step `fit`. `fit` wraps the model in DDP only for a world of
  more than one, so one GPU checks NCCL and the launch, not DDP's gradient all-reduce.
With --tiny, or where there is no CUDA, the same parts run on tiny sizes (test encoders, 64x96, batch 2, 2 steps,
raft_small with 2 updates, the tiny CLIP architecture, gloo), in well under a minute on a CPU: the CI check
that keeps this script from rotting. `skipped` names what did not run, and why.

Without --manifest, a small dataset is rendered and curated first (`benchmarks.bench_loader.build_dataset`:
synthetic canyon videos, every frame kept, split train; so fit's evaluation is skipped: there is no val split).
A part that fails records its error and the exit status is 1.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import statistics
import subprocess
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pipeline.torch_compat import ensure_torchvision

ensure_torchvision()  # before anything imports timm / torchvision on a CPU torch

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from benchmarks.bench_loader import build_dataset, time_loader  # noqa: E402
from benchmarks.common import REPO, Stopwatch, add_out_argument, add_workdir_argument, emit, meta, work_directory  # noqa: E402
from pipeline.clip.model import TINY_ARCHITECTURE, ClipModel, save_random_checkpoint  # noqa: E402
from pipeline.config import ClipConfig  # noqa: E402
from pipeline.stereo.optical_flow import RAFTFlow  # noqa: E402
from pipeline.synthetic.renderer import SceneSpec, render_frames  # noqa: E402
from trainer.config import TrainConfig, load_train_config  # noqa: E402
from trainer.data import ShardStream, make_loader  # noqa: E402
from trainer.manifest import load_manifests  # noqa: E402
from trainer.plan import EpochPlan  # noqa: E402
from trainer.train import fit  # noqa: E402

SLOWTV_CONFIG = REPO / "trainer" / "configs" / "slowtv.yaml"


@dataclass(frozen=True)
class Sizes:
    """What each part runs at: the SlowTV size on a GPU, tiny sizes on the CPU."""

    name: str
    steps: int
    warmup: int  # steps (and loader batches) left out of the medians
    loader_batches: int
    render: tuple[int, int]  # (width, height) of the rendered videos and of the RAFT / CLIP frames
    videos: int
    seconds: float
    raft_small: bool
    raft_iterations: int
    pairs: int
    clip_model: str
    clip_frames: int


SLOWTV = Sizes("slowtv", 20, 5, 40, (640, 384), 2, 8.0, False, 12, 16, "ViT-B-32", 128)
TINY = Sizes("tiny", 2, 1, 3, (160, 96), 1, 3.0, True, 2, 2, "tiny-clip-test", 8)


def train_config(
    sizes: Sizes, device: str, workers: int | None, out_dir: Path, steps: int | None = None
) -> TrainConfig:
    """The SlowTV config (or the tests' tiny one) for a short bf16 run that only logs."""
    run = {
        "out_dir": str(out_dir),
        "device": device,
        "log_every": 1,
        "checkpoint_every": 10**9,
        "eval_batches": 1,
        "tensorboard": False,
    }
    optim = {"max_steps": steps or sizes.steps, "warmup_steps": 0, "precision": "bf16"}
    if sizes is SLOWTV:
        data = {} if workers is None else {"num_workers": workers}
        return load_train_config(SLOWTV_CONFIG, {"data": data, "optim": optim, "run": run})
    data = {"height": 64, "width": 96, "batch_size": 2, "num_workers": 1 if workers is None else workers}
    tiny = {
        "data": {**data, "shuffle_buffer": 16},
        "model": {"encoder": "test_convnext", "pose_encoder": "test_resnet"},
        "optim": {**optim, "lr": 1e-3},
        "run": run,
    }
    return load_train_config(overrides=tiny)


# ---------------------------------------------------------------- parts


def check_fit(cfg: TrainConfig, manifests: list[str], warmup: int) -> dict[str, Any]:
    cuda = cfg.run.device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    with Stopwatch() as watch:
        result = fit(manifests, cfg)
    rows = [json.loads(line) for line in (Path(cfg.run.out_dir) / "log.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "step_s" in r]
    timed = steps[warmup:] or steps[-1:]
    median_step_s = statistics.median(r["step_s"] for r in timed)
    losses = [r["loss"] for r in steps]
    return {
        "config": {
            "size": f"{cfg.data.height}x{cfg.data.width}",
            "batch_size": cfg.data.batch_size,
            "encoder": cfg.model.encoder,
            "pose_encoder": cfg.model.pose_encoder,
            "precision": cfg.optim.precision,
            "num_workers": cfg.data.num_workers,
        },
        "steps": result["step"],
        "losses": [round(x, 5) for x in losses],
        "losses_finite": bool(losses) and all(math.isfinite(x) for x in losses),
        "median_step_s": round(median_step_s, 4),
        "median_data_wait_s": round(statistics.median(r["data_wait_s"] for r in timed), 4),
        "step_samples_per_s": round(cfg.data.batch_size / median_step_s, 2),
        "timed_steps": len(timed),
        "disparity_cv_last": steps[-1].get("disparity_cv"),
        "peak_gpu_memory_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
        "wall_s": round(watch.s, 1),
    }


def check_loader(
    cfg: TrainConfig, manifests: list[str], sizes: Sizes, step_samples_per_s: float | None
) -> dict[str, Any]:
    plan = EpochPlan(load_manifests(manifests, cfg.data.split, cfg.data.filters), cfg.data)
    timing = time_loader(make_loader(ShardStream(plan, cfg.data)), max(1, sizes.warmup), sizes.loader_batches)
    rate = timing["samples_per_s"]
    return {
        "num_workers": cfg.data.num_workers,
        "batches": sizes.loader_batches,
        "samples_per_s": round(rate, 2),
        "cpu_s_per_batch": round(timing["cpu_s_per_batch"], 4),
        "step_samples_per_s": step_samples_per_s,
        # The loader alone against the training step: below 1 the GPU waits for data.
        "headroom": round(rate / step_samples_per_s, 2) if step_samples_per_s else None,
        "keeps_up": rate >= step_samples_per_s if step_samples_per_s else None,
    }


def frames(sizes: Sizes, count: int) -> list[np.ndarray]:
    width, height = sizes.render
    spec = SceneSpec(width=width, height=height, fps=10.0, duration_s=count / 10.0, seed=7)
    return [frame.image for frame in render_frames(spec)]


def check_raft(sizes: Sizes, device: str, work: Path) -> dict[str, Any]:
    from torchvision.models.optical_flow import raft_large, raft_small

    torch.manual_seed(0)
    path = work / "raft_random.pt"
    torch.save((raft_small if sizes.raft_small else raft_large)(weights=None, progress=False).state_dict(), path)
    raft = RAFTFlow(path, small=sizes.raft_small, iterations=sizes.raft_iterations, device=device)
    images = frames(sizes, sizes.pairs + 1)
    first, second = images[:-1], images[1:]
    raft(first[:1], second[:1])  # warm-up: kernels, allocator
    _sync(device)
    with Stopwatch() as watch:
        flows = raft(first, second)
        _sync(device)
    return {
        "model": "raft_small" if sizes.raft_small else "raft_large",
        "iterations": sizes.raft_iterations,
        "size": f"{sizes.render[1]}x{sizes.render[0]}",
        "pairs": len(flows),
        "pairs_per_s": round(len(flows) / watch.s, 2),
        "finite": all(bool(np.isfinite(f).all()) for f in flows),
        "device": str(raft.device),
    }


def check_clip(sizes: Sizes, device: str, work: Path) -> dict[str, Any]:
    architecture = None
    if sizes.clip_model == "tiny-clip-test":
        architecture = work / "tiny-clip-test.json"
        architecture.write_text(json.dumps(TINY_ARCHITECTURE))
    checkpoint = save_random_checkpoint(sizes.clip_model, work / "clip_random.pt", architecture=architecture)
    model = ClipModel(
        ClipConfig(
            enabled=True,
            model=sizes.clip_model,
            checkpoint=str(checkpoint),
            architecture=str(architecture) if architecture else None,
            device=device,
            batch_size=64,
        )
    )
    images = frames(sizes, min(sizes.clip_frames, 16))
    jpegs = [cv2.imencode(".jpg", images[i % len(images)])[1].tobytes() for i in range(sizes.clip_frames)]
    model.embed_jpegs(jpegs[: model.batch_size])  # warm-up
    _sync(device)
    with Stopwatch() as watch:
        vectors = model.embed_jpegs(jpegs)
        _sync(device)
    return {
        "model": sizes.clip_model,
        "frames": len(jpegs),
        "frames_per_s": round(len(jpegs) / watch.s, 1),
        "dim": model.dim,
        "finite": bool(np.isfinite(vectors.astype(np.float32)).all()),
        "amp": str(model.amp_dtype) if model.amp_dtype else None,
        "device": str(model.device),
    }


def check_torchrun(cfg: TrainConfig, manifests: list[str], work: Path) -> dict[str, Any]:
    """`torchrun --nproc-per-node 1` of `--ddp-child`: a process group (NCCL on CUDA, gloo on the CPU), 2 steps."""
    child_cfg = cfg.model_copy(
        update={
            "optim": cfg.optim.model_copy(update={"max_steps": 2}),
            "run": cfg.run.model_copy(update={"out_dir": str(work / "torchrun")}),
        }
    )
    config_path = work / "torchrun_config.json"
    config_path.write_text(child_cfg.model_dump_json())
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1"]
    command += ["-m", "benchmarks.gpu_check", "--ddp-child", str(config_path), *manifests]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    with Stopwatch() as watch:
        done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=env, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"torchrun exited {done.returncode}: {done.stderr[-2000:]}")
    return {
        **json.loads(done.stdout.strip().splitlines()[-1]),
        "returncode": done.returncode,
        "wall_s": round(watch.s, 1),
    }


def ddp_child(config_path: Path, manifests: list[str]) -> None:
    """Under torchrun: join the process group, all-reduce one tensor, fit; one JSON line on stdout."""
    cfg = TrainConfig.model_validate_json(config_path.read_text())
    cuda = cfg.run.device.startswith("cuda")
    if cuda:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    backend = "nccl" if cuda else "gloo"
    dist.init_process_group(backend)
    ones = torch.ones(4, device="cuda" if cuda else "cpu")
    dist.all_reduce(ones)
    result = fit(manifests, cfg)
    world_size = dist.get_world_size()
    dist.destroy_process_group()
    print(
        json.dumps(
            {
                "backend": backend,
                "world_size": world_size,
                "all_reduce_sum": float(ones[0]),
                "steps": result["step"],
            }
        )
    )


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _release(device: str) -> None:
    """Hand this process's cached GPU memory back before a child process needs the GPU."""
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def run_part(name: str, fn: Callable[[], dict[str, Any]], errors: list[str]) -> dict[str, Any]:
    """fn's result, or its error: a failing part is reported and the others still run."""
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - the check reports every part's failure, then exits 1
        errors.append(name)
        return {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-3000:]}


# ---------------------------------------------------------------- main


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--ddp-child":
        ddp_child(Path(sys.argv[2]), sys.argv[3:])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny sizes on any device (what runs without CUDA)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when there is a GPU), cuda, cpu")
    parser.add_argument("--manifest", action="append", help="train on these manifests instead of a rendered set")
    parser.add_argument("--steps", type=int, help="fit steps (default: 20 at the SlowTV size, 2 tiny)")
    parser.add_argument("--workers", type=int, help="loader workers (default: the config's; 1 tiny)")
    add_workdir_argument(parser, "the rendered dataset and the runs")
    add_out_argument(parser)
    args = parser.parse_args()
    run_meta = meta("torchvision", "timm", "open_clip_torch")
    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device
    device = "cpu" if device == "auto" else device
    cuda = device.startswith("cuda")
    sizes = SLOWTV if cuda and not args.tiny else TINY
    skipped: dict[str, str] = {}
    if not cuda:
        why = "no CUDA device" if not torch.cuda.is_available() else f"--device {args.device}"
        skipped = {
            "slowtv_size": f"{why}: tiny sizes on the CPU",
            "bf16_on_cuda": f"{why}: bf16 autocast ran on the CPU",
            "peak_gpu_memory": why,
            "nccl": f"{why}: torchrun ran on gloo",
        }
    elif args.tiny:
        skipped = {"slowtv_size": "--tiny"}
    errors: list[str] = []
    out: dict[str, Any] = {
        "device": device,
        "gpu": torch.cuda.get_device_name(0) if cuda else None,
        "sizes": sizes.name,
        "skipped": skipped,
    }
    with Stopwatch() as total, work_directory(args.workdir, prefix="gpu-check-") as work:
        manifests = args.manifest
        if not manifests:
            width, height = sizes.render
            manifest, counts = build_dataset(work / "dataset", sizes.videos, sizes.seconds, width, height)
            manifests = [str(manifest)]
            out["dataset"] = {"rendered": f"{width}x{height}", "videos": sizes.videos, **counts}
        else:
            out["dataset"] = {"manifests": manifests}
        cfg = train_config(sizes, device, args.workers, work / "fit", args.steps)
        out["fit"] = run_part("fit", lambda: check_fit(cfg, manifests, sizes.warmup), errors)
        step_rate = out["fit"].get("step_samples_per_s")
        out["loader"] = run_part("loader", lambda: check_loader(cfg, manifests, sizes, step_rate), errors)
        out["raft"] = run_part("raft", lambda: check_raft(sizes, device, work), errors)
        out["clip"] = run_part("clip", lambda: check_clip(sizes, device, work), errors)
        _release(device)
        out["torchrun"] = run_part("torchrun", lambda: check_torchrun(cfg, manifests, work), errors)
    out["errors"] = errors
    out["wall_s"] = round(total.s, 1)
    emit(out, args.out, run_meta)
    sys.exit(1 if errors else 0)


if __name__ == "__main__":
    main()
