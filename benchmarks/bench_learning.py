"""Does the bundled trainer learn depth? Short CPU runs on rendered scenes with exact depth. Prints JSON.

    python -m benchmarks.bench_learning [--steps 1000] [--stereo-steps 200] [--scenes 4] [--only PART] [--quick]
                                        [--workdir DIR] [--out FILE]

A curated dataset is built without Prefect (`pipeline.driver.curate_entries`: download of the file://
sources, ingest, publish) from synthetic canyon videos: `--scenes` mono scenes of which the last `--val-scenes`
are held out whole (split "val"), the others are all "train"; rendered depth goes to
<root>/ground_truth/<video_id>.npz. Then, on the held-out scenes, AbsRel and friends after least-squares
scale-and-shift alignment in disparity (MiDaS):
(a) the untrained network (the exact initial weights of the run: same seed);
(b) a constant prediction: lsq alignment of a constant is degenerate and maps it to each image's mean
    true disparity (an oracle constant); median scaling of a constant is reported too; and, as a stronger
    content-free reference, the mean true disparity map of the training split (a layout prior);
(c) `trainer.train.fit` for `--steps` steps on the video (self-supervised) task, support mode "category",
    views compared at each scale's resolution (`--photometric-resolution scale`);
(d) SSI training on stereo only (rendered sbs_full videos through the stereo branch), evaluated on held-out
    stereo frames (disparity metrics against the pipeline's flow disparity) against the untrained network,
    and, for reference, on the held-out mono scenes' rendered depth;
(e) (c) again with `data.support.mode: motion` (same steps, same seed);
(f) (c) again with views compared at full resolution (Monodepth2's choice, the trainer's default).
For each video run, `pose` compares the pose net's translation direction with the rendered camera motion on
held-out batches (cosine; 1 = right direction): depth cannot be learned from views the pose net misplaces.
`collapse`: the kinds trainer/collapse.py warned of during the run, those still on at its end, and whether that
cosine is negative.
Training is deterministic for a given seed (fit seeds torch; the loader plan is seeded). Defaults take
about 15 minutes on 2 idle cores (`--only` runs parts separately); no pretrained encoder is used.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pipeline.torch_compat import ensure_torchvision

ensure_torchvision()  # before anything imports timm / torchvision on a CPU torch

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.common import Stopwatch, add_out_argument, add_workdir_argument, emit, meta, work_directory  # noqa: E402
from pipeline.config import load_config  # noqa: E402
from pipeline.driver import curate_entries  # noqa: E402
from pipeline.io.data_root import DataRoot  # noqa: E402
from pipeline.sources.catalog import CatalogEntry  # noqa: E402
from pipeline.synthetic.renderer import (  # noqa: E402
    MovingObject,
    SceneSpec,
    normalized_intrinsics,
    render_stereo_video,
    render_video,
    save_ground_truth,
)
from trainer.config import TrainConfig, load_train_config  # noqa: E402
from trainer.data import BatchBuilder, GroundTruth  # noqa: E402
from trainer.evaluate import evaluate_model, evaluation_batches  # noqa: E402
from trainer.manifest import load_manifests  # noqa: E402
from trainer.objective import DepthTraining  # noqa: E402
from trainer.plan import Batch, EpochPlan  # noqa: E402
from trainer.train import fit  # noqa: E402

RENDER_W, RENDER_H, FPS = 320, 192, 10.0


def moving_objects(seconds: float, speed_mps: float, seed: int) -> tuple[MovingObject, ...]:
    """Boxes that cross the canyon just ahead of the camera, boxes coming towards it, and one riding with it."""
    rng = np.random.default_rng(seed)
    objects = []
    z = 10.0
    while z < speed_mps * seconds + 10.0:
        speed = float(rng.uniform(0.8, 1.5)) * (1 if rng.random() < 0.5 else -1)
        t_cross = max(z - 7.0, 0.0) / speed_mps  # at x = 0 when the camera is about 7 m before it
        objects.append(MovingObject(size=(1.0, 1.0, 1.0), centre=(-speed * t_cross, 0.5, z), velocity=(speed, 0, 0)))
        z += float(rng.uniform(8.0, 14.0))
    for z in np.arange(25.0, speed_mps * seconds + 40.0, 30.0):
        objects.append(
            MovingObject(
                size=(0.8, 1.4, 0.8), centre=(float(rng.choice([-1.8, 1.8])), 0.7, float(z)), velocity=(0.0, 0.0, -1.5)
            )
        )
    # Fixed in the camera frame, low on the right: photometrically it never moves (plain training: infinite depth).
    objects.append(MovingObject(size=(0.7, 0.5, 0.5), centre=(0.9, 0.9, 3.5), attached=True))
    return tuple(objects)


def cached_dataset(work: Path, key: list[Any], build: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """`build()`'s dataset, or the one an earlier run with the same `key` built in `work` (--workdir reuses it)."""
    cache = work / "dataset.json"
    if cache.is_file() and json.loads(cache.read_text())["key"] == key:
        return json.loads(cache.read_text())["dataset"]
    dataset = build()
    cache.write_text(json.dumps({"key": key, "dataset": dataset}))
    return dataset


def build_dataset(
    root_dir: Path,
    scenes: int,
    val_scenes: int,
    seconds: float,
    val_seconds: float,
    stereo_scenes: int,
    stereo_seconds: float,
    max_height: int,
    speed_mps: float,
    objects: bool = False,
) -> dict[str, Any]:
    """Render and curate the mono ("synth") and stereo ("synth3d") datasets under root_dir/data.

    The split is per video (train_fraction 1 or 0), so train and val videos are curated with their own config,
    val first: the train run's publish, with the train config, is the one that stays.

    objects: the mono scenes get `moving_objects` and their ground truth the moving-object masks."""
    sources = root_dir / "sources"
    sources.mkdir(parents=True, exist_ok=True)
    root = DataRoot(root_dir / "data")
    (root.root / "ground_truth").mkdir(parents=True, exist_ok=True)
    base = {
        "sample": {"fps": FPS, "max_height": max_height, "trim": {"head_s": 0, "tail_s": 0}, "decimate": None},
        "split": {"gap_frames": 0},
        "write": {"row_group_bytes": 1 << 20},
        "stereo": {"crop": None, "output_size": None, "jump_s": 0.0, "clip_frames": 10, "clip_span_s": 1.0},
        "download": {"local_roots": [str(sources)]},
    }
    configs = {
        split: load_config(
            overrides={**base, "split": {"gap_frames": 0, "train_fraction": 1.0 if split == "train" else 0.0}}
        )
        for split in ("train", "val")
    }
    videos = []
    n_train = scenes - val_scenes
    for i in range(scenes):
        split = "train" if i < n_train else "val"
        duration = seconds if split == "train" else val_seconds
        spec = SceneSpec(
            width=RENDER_W,
            height=RENDER_H,
            fps=FPS,
            seed=100 + i,
            speed_mps=speed_mps,
            duration_s=duration,
            objects=moving_objects(duration, speed_mps, 100 + i) if objects else (),
        )
        videos.append((f"scene{i}", spec, split, "mono"))
    for i in range(stereo_scenes):
        split = "train" if i < max(1, stereo_scenes - 1) else "val"
        spec = SceneSpec(
            width=RENDER_W, height=RENDER_H, fps=FPS, seed=200 + i, duration_s=stereo_seconds, baseline_m=0.3
        )
        videos.append((f"pair{i}", spec, split, "sbs_full"))
    entries: dict[str, list[CatalogEntry]] = {"train": [], "val": []}
    for video_id, spec, split, layout in videos:
        path = sources / f"{video_id}.mp4"
        if layout == "mono":
            render_video(spec, path)
            save_ground_truth(spec, root.root / "ground_truth" / f"{video_id}.npz")
        else:
            render_stereo_video(spec, path, layout=layout)
        fx, fy, cx, cy = normalized_intrinsics(spec)
        entries[split].append(
            CatalogEntry(
                video_id=video_id,
                url=f"file://{path}",
                dataset="synth" if layout == "mono" else "synth3d",
                category="natural",
                layout=layout,
                fx=fx,
                fy=fy,
                cx=cx,
                cy=cy,
            )
        )
    outcomes = {}
    for split in ("val", "train"):
        if not entries[split]:
            continue
        for video in curate_entries(entries[split], root, configs[split]).videos:
            if video.status != "ok":
                raise RuntimeError(f"curating {video.video_id} failed: {video}")
            outcomes[video.video_id] = {"split": split, "kept": video.frames_kept, "decoded": video.frames_decoded}
    records = {video_id: outcomes[video_id] for video_id, *_ in videos}  # in rendering order, as before
    return {"root": str(root.root), "videos": records}


def manifests(data_root: Path, *datasets: str) -> list[str]:
    return [str(data_root / "manifest" / f"{d}.parquet") for d in datasets]


def train_config(args: argparse.Namespace, out_dir: Path, **extra: Any) -> TrainConfig:
    overrides: dict[str, Any] = {
        "data": {
            "height": args.height,
            "width": args.width,
            "batch_size": args.batch_size,
            "num_workers": args.workers,
            "shuffle_buffer": 64,
            "seed": args.seed,
            "augment": {"aspect_prob": args.aspect_prob},
        },
        "model": {"encoder": args.encoder, "pose_encoder": args.pose_encoder, "intrinsics": args.intrinsics},
        "loss": {
            "smoothness": args.smoothness,
            "scales": args.loss_scales,
            "automask": args.automask,
            "photometric_resolution": args.photometric_resolution,
        },
        "optim": {
            "lr": args.lr,
            "warmup_steps": min(20, args.steps // 10),
            "max_steps": args.steps,
            "precision": "fp32",
        },
        "run": {
            "out_dir": str(out_dir),
            "log_every": 10,
            "checkpoint_every": 10**6,
            "eval_batches": 1,
            "tensorboard": False,
            "device": "cpu",
        },
        "eval": {"alignment": "lsq_disparity"},
    }
    for section, values in extra.items():
        overrides[section] = {**overrides.get(section, {}), **values}
    return load_train_config(overrides=overrides)


def evaluate(
    model: torch.nn.Module | None,
    cfg: TrainConfig,
    data_root: Path,
    datasets: list[str],
    alignment: str | None = None,
    predict=None,
) -> dict[str, dict[str, float]]:
    """Metrics on the val split of `datasets` with rendered depth where it exists."""
    if alignment is not None:
        cfg = cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"alignment": alignment})})
    frame = load_manifests(manifests(data_root, *datasets), "val", cfg.data.filters)
    plan = EpochPlan(frame, cfg.data)
    model = model if model is not None else _Dummy()
    return evaluate_model(
        model, plan, cfg, "cpu", ground_truth=GroundTruth(data_root / "ground_truth"), predict=predict
    )


class _Dummy(torch.nn.Module):
    def predict_disparity(self, image):  # never used: a `predict` callable is given with it
        raise NotImplementedError


def untrained(cfg: TrainConfig) -> DepthTraining:
    """The network `fit` starts from: it seeds torch with data.seed right before building it."""
    torch.manual_seed(cfg.data.seed)
    return DepthTraining(cfg.model, cfg.loss)


def run_fit(cfg: TrainConfig, paths: list[str]) -> tuple[DepthTraining, dict[str, Any]]:
    start = time.perf_counter()
    result = fit(paths, cfg)
    wall = time.perf_counter() - start
    model, _ = DepthTraining.from_checkpoint(result["checkpoint"])
    rows = [json.loads(line) for line in (Path(cfg.run.out_dir) / "log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    steps = [r for r in rows if "step_s" in r]
    info = {
        "steps": result["step"],
        "wall_s": round(wall, 1),
        "median_step_s": round(float(np.median([r["step_s"] for r in steps])), 3),
        "loss_first": round(losses[0], 4),
        "loss_last": round(losses[-1], 4),
        "loss_every_50": [round(r["loss"], 4) for r in rows if "loss" in r and r["step"] % 50 == 0],
        # trainer/collapse.py's warnings during the run, those still on at its end, and its last measures
        "collapse": json.loads((Path(cfg.run.out_dir) / "metrics.json").read_text())["collapse"],
    }
    return model, info


def mean_disparity_prior(cfg: TrainConfig, data_root: Path) -> torch.Tensor:
    """Mean true disparity map over the train split at the evaluation size: a content-free layout prior."""
    frame = load_manifests(manifests(data_root, "synth"), "train", cfg.data.filters)
    total, count = None, 0
    for batch in evaluation_batches(EpochPlan(frame, cfg.data), cfg, GroundTruth(data_root / "ground_truth")):
        depth = batch["gt_depth"]
        disparity = torch.where(torch.isfinite(depth), 1.0 / depth, torch.zeros_like(depth)).sum(0)
        total, count = (disparity if total is None else total + disparity), count + depth.shape[0]
    return total / count + 1e-3  # strictly positive: evaluate_model inverts it


def pose_check(model: DepthTraining, cfg: TrainConfig, data_root: Path, batches: int = 4) -> dict[str, Any]:
    """Translation direction of the pose net against the rendered camera motion, on held-out video batches.

    The objective's own `video_loss` runs on un-augmented batches with supports; a hook on the pose net
    records each call's target-to-source transform, compared with inv(pose_source) @ pose_target.
    """
    frame = load_manifests(manifests(data_root, "synth"), "val", cfg.data.filters)
    plan = EpochPlan(frame, cfg.data)
    builder = BatchBuilder(plan, cfg.data, train=False, with_supports=True)
    rows = np.flatnonzero(plan.eligible)
    calls: list[torch.Tensor] = []
    hook = model.pose.register_forward_hook(lambda module, args, out: calls.append(out[0].detach()))
    cosines: list[list[float]] = [[], []]
    truths: dict[str, np.ndarray] = {}
    try:
        for i in range(batches):
            targets = rows[i * len(rows) // batches :][: cfg.data.batch_size]
            seed = (cfg.data.seed, i)
            # BatchBuilder draws the support offset as its first random number when not training.
            support_rows = plan.supports(targets, float(np.random.default_rng(seed).random()))
            calls.clear()
            with torch.no_grad():
                model.video_loss(builder(Batch(0, targets, seed)))
            truth = [_relative_poses(plan, truths, data_root, targets, support_rows[s]) for s in range(2)]
            for s in range(2):
                cos = torch.nn.functional.cosine_similarity(
                    calls[s][:, :3, 3].double(), torch.from_numpy(truth[s][:, :3, 3]), dim=1
                )
                cosines[s] += cos.tolist()
    finally:
        hook.remove()
    return {
        "translation_cos_to_truth_t_minus_k": round(float(np.mean(cosines[0])), 3),
        "translation_cos_to_truth_t_plus_k": round(float(np.mean(cosines[1])), 3),
    }


def _relative_poses(
    plan: EpochPlan, cache: dict[str, np.ndarray], data_root: Path, targets: np.ndarray, sources: np.ndarray
) -> np.ndarray:
    """Rendered target-to-source transforms inv(pose_source) @ pose_target for rows of plan.frame."""

    def pose(row: int) -> np.ndarray:
        video = str(plan.frame.at[row, "video_id"])
        if video not in cache:
            truth = np.load(data_root / "ground_truth" / f"{video}.npz")
            cache[video] = (truth["timestamps"], truth["poses"])
        stamps, poses = cache[video]
        return poses[int(np.argmin(np.abs(stamps - float(plan.frame.at[row, "timestamp_s"]))))]

    return np.stack([np.linalg.inv(pose(int(s))) @ pose(int(t)) for t, s in zip(targets, sources)])


def pick(metrics: dict[str, dict[str, float]], source: str, keys=("abs_rel", "rmse", "a1")) -> dict[str, float]:
    values = metrics.get(source, {})
    return {k: round(values[k], 4) for k in keys if k in values}


def add_training_arguments(parser: argparse.ArgumentParser) -> None:
    """The dataset and training arguments this benchmark shares with bench_variants.py."""
    parser.add_argument("--scenes", type=int, default=4, help="mono scenes (the last --val-scenes held out)")
    parser.add_argument("--val-scenes", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each training scene")
    parser.add_argument("--val-seconds", type=float, default=15.0, help="length of each held-out scene")
    parser.add_argument("--speed", type=float, default=2.0, help="camera speed of the mono scenes, m/s")
    parser.add_argument("--max-height", type=int, default=96, help="pipeline sample.max_height")
    parser.add_argument("--height", type=int, default=96)
    parser.add_argument("--width", type=int, default=160)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--encoder", default="test_convnext")
    parser.add_argument("--pose-encoder", default="test_resnet")
    parser.add_argument("--intrinsics", choices=("given", "learned"), default="given")
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--smoothness", type=float, default=1e-3)
    parser.add_argument("--loss-scales", type=int, default=4)
    parser.add_argument("--aspect-prob", type=float, default=0.0, help="aspect-ratio augmentation probability")
    parser.add_argument("--seed", type=int, default=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=1000, help="optimiser steps of each video training run")
    parser.add_argument("--stereo-steps", type=int, default=200, help="optimiser steps of the stereo run")
    parser.add_argument("--stereo-scenes", type=int, default=3, help="stereo videos (the last one held out)")
    parser.add_argument("--stereo-seconds", type=float, default=15.0)
    add_training_arguments(parser)
    parser.add_argument(
        "--no-automask",
        dest="automask",
        action="store_false",
        help="turn off Monodepth2's identity automask (loss.automask)",
    )
    parser.add_argument(
        "--photometric-resolution",
        choices=("full", "scale"),
        default="scale",
        help="loss.photometric_resolution: compare views at full size or at each scale's size",
    )
    parser.add_argument(
        "--only",
        choices=("video", "stereo", "motion", "full"),
        action="append",
        help="run only these parts (repeatable; default: all): video (support mode category), "
        "motion (support mode motion), full (category at full photometric resolution), stereo",
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run: 20 steps, short scenes")
    add_workdir_argument(parser, "the dataset and runs")
    add_out_argument(parser)
    args = parser.parse_args()
    run_meta = meta("torchvision", "timm")
    if args.quick:
        args.steps, args.stereo_steps, args.seconds, args.val_seconds, args.stereo_seconds = 20, 20, 8.0, 5.0, 5.0
    parts = set(args.only or ("video", "stereo", "motion", "full"))
    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "2"))))
    started = Stopwatch()
    with work_directory(args.workdir, prefix="bench-learning-") as work:
        build = Stopwatch()
        shape = [
            args.scenes,
            args.val_scenes,
            args.seconds,
            args.val_seconds,
            args.stereo_scenes,
            args.stereo_seconds,
            args.max_height,
            args.speed,
        ]
        dataset = cached_dataset(work, shape, lambda: build_dataset(work, *shape))
        data_root = Path(dataset["root"])
        build_s = build.s
        out: dict[str, Any] = {
            "setup": {
                "render": f"{RENDER_W}x{RENDER_H} @ {FPS:g} fps",
                "sample_max_height": args.max_height,
                "train_size": f"{args.height}x{args.width}",
                "batch_size": args.batch_size,
                "encoder": args.encoder,
                "pose_encoder": args.pose_encoder,
                "intrinsics": args.intrinsics,
                "lr": args.lr,
                "steps": args.steps,
                "stereo_steps": args.stereo_steps,
                "smoothness": args.smoothness,
                "automask": args.automask,
                "photometric_resolution": args.photometric_resolution,
                "aspect_prob": args.aspect_prob,
                "seed": args.seed,
                "eval_alignment": "lsq_disparity",
                "videos": dataset["videos"],
                "build_s": round(build_s, 1),
            },
        }
        video_cfg = train_config(args, work / "run_video")
        if parts & {"video", "motion", "full"}:
            initial = untrained(video_cfg)
            base = evaluate(initial, video_cfg, data_root, ["synth"])
            const = evaluate(
                None, video_cfg, data_root, ["synth"], predict=lambda image: torch.full_like(image[:, :1], 0.5)
            )
            const_median = evaluate(
                None,
                video_cfg,
                data_root,
                ["synth"],
                alignment="median",
                predict=lambda image: torch.full_like(image[:, :1], 0.5),
            )
            prior = mean_disparity_prior(video_cfg, data_root)
            layout = evaluate(
                None, video_cfg, data_root, ["synth"], predict=lambda image: prior.expand(image.shape[0], -1, -1, -1)
            )
            out["video"] = {
                "untrained": {**pick(base, "synth/video"), "pose": pose_check(initial, video_cfg, data_root)},
                "constant_lsq": pick(const, "synth/video"),
                "constant_median": pick(const_median, "synth/video"),
                "train_mean_disparity_map": pick(layout, "synth/video"),
            }
        # name: (part, support mode, photometric resolution)
        video_runs = {
            "category": ("video", "category", args.photometric_resolution),
            "motion": ("motion", "motion", args.photometric_resolution),
            "category_full_resolution": ("full", "category", "full"),
        }
        for name, (part, mode, resolution) in video_runs.items():
            if part not in parts or (name == "category_full_resolution" and args.photometric_resolution == "full"):
                continue
            cfg = train_config(
                args,
                work / f"run_video_{name}",
                data={"support": {"mode": mode}},
                loss={"photometric_resolution": resolution},
            )
            model, info = run_fit(cfg, manifests(data_root, "synth"))
            trained = evaluate(model, cfg, data_root, ["synth"])
            v = out["video"]
            pose = pose_check(model, cfg, data_root)
            v[f"trained_{name}"] = {
                **pick(trained, "synth/video"),
                "train": info,
                "pose": pose,
                "collapse": {
                    "warned": sorted({w["kind"] for w in info["collapse"]["warnings"]}),  # at some time in the run
                    "at_end": info["collapse"]["ongoing"],
                    "reversed_translation": min(pose.values()) < 0,  # against the rendered camera motion
                },
            }
            v[f"{name}_abs_rel_vs_untrained"] = round(trained["synth/video"]["abs_rel"] / v["untrained"]["abs_rel"], 3)
            v[f"{name}_abs_rel_vs_constant_lsq"] = round(
                trained["synth/video"]["abs_rel"] / v["constant_lsq"]["abs_rel"], 3
            )
        if "stereo" in parts:
            cfg = train_config(
                args,
                work / "run_stereo",
                optim={"max_steps": args.stereo_steps, "warmup_steps": min(20, args.stereo_steps // 10)},
            )
            base = evaluate(untrained(cfg), cfg, data_root, ["synth3d", "synth"])
            model, info = run_fit(cfg, manifests(data_root, "synth3d"))
            trained = evaluate(model, cfg, data_root, ["synth3d", "synth"])
            out["stereo"] = {
                "untrained": pick(base, "synth3d/stereo"),
                "trained": {**pick(trained, "synth3d/stereo"), "train": info},
                "abs_rel_vs_untrained": round(
                    pick(trained, "synth3d/stereo")["abs_rel"] / pick(base, "synth3d/stereo")["abs_rel"], 3
                ),
                # The stereo-trained net on the held-out mono scenes' rendered depth (lsq-aligned AbsRel).
                "on_mono_val_depth": {"untrained": pick(base, "synth/video"), "trained": pick(trained, "synth/video")},
            }
        out["wall_s"] = round(started.s, 1)
        emit(out, args.out, run_meta)


if __name__ == "__main__":
    main()
