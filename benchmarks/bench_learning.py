"""Does the bundled trainer learn depth, not just the layout of its scenes? Short CPU runs on rendered scenes
with exact depth, over several seeds. Prints JSON.

    python -m benchmarks.bench_learning [--steps 1000] [--seeds 0 1 2] [--motion-seeds N] [--stereo-steps 200]
                                        [--train-families canyon terrain] [--held-out-family corridor]
                                        [--only PART] [--quick] [--workdir DIR] [--out FILE]

A curated dataset is built without Prefect (`pipeline.driver.curate_entries`: download of the file://
sources, ingest, publish) from rendered videos of several scene families (`pipeline.synthetic.renderer.draw_scene`:
canyons, corridors, open terrain with objects; each video with its own camera height, tilt, roll, sway, speed and
focal length). Dataset "synth": `--videos-per-family` training videos and `--val-per-family` held-out videos
(split "val") of each of `--train-families`; dataset "synth_heldout": `--held-out-videos` videos of
`--held-out-family`, a layout never trained on (split "val"). Rendered depth goes to
<root>/ground_truth/<video_id>.npz. Then, on the held-out scenes of the trained families (`held_out_scenes`) and
on the held-out family (`held_out_family`), AbsRel and friends after least-squares scale-and-shift alignment in
disparity (MiDaS):
(a) the untrained network (the exact initial weights of each run: same seed);
(b) a constant prediction: lsq alignment of a constant is degenerate and maps it to each image's mean
    true disparity (an oracle constant); median scaling of a constant is reported too; and, as a stronger
    content-free reference, the mean true disparity map of the training split (a layout prior);
(c) `trainer.train.fit` for `--steps` steps on the video (self-supervised) task, support mode "category",
    views compared at each scale's resolution (`--photometric-resolution scale`), once per seed in `--seeds`;
(d) SSI training on stereo only (rendered sbs_full canyon videos through the stereo branch, first seed),
    evaluated on held-out stereo frames (disparity metrics against the pipeline's flow disparity) against the
    untrained network, and, for reference, on the held-out mono scenes' rendered depth;
(e) (c) again with `data.support.mode: motion`, for the first `--motion-seeds` seeds;
(f) (c) again with views compared at full resolution (Monodepth2's choice, the trainer's default), first seed;
(g) `mixed`: (c) with the stereo dataset's batches mixed in (one trainer, both objectives: the video loss on
    "synth" batches, SSI on "synth3d" ones, as a curated corpus of both kinds is meant to be trained), per seed.
`photometric_oracle`: the video loss on training batches with the rendered depth and motion, with a flat depth
and the same motion, and unwarped: whether the data themselves reward depth (a check on intrinsics and poses).
Every figure over seeds is given as its mean, std, min, max and per-seed values (`per_seed`, in `--seeds`
order). `beats_layout_prior`: the trained net's mean AbsRel is below the layout prior's by more than its
min-max spread over seeds.
For each video run, `pose` compares the pose net's translation direction with the rendered camera motion on
held-out batches (cosine; 1 = right direction): depth cannot be learned from views the pose net misplaces.
`collapse`: the kinds trainer/collapse.py warned of during the run, those still on at its end, and whether that
cosine is negative.
Training is deterministic for a given seed (fit seeds torch; the loader plan is seeded). A run of 1000 steps
takes about 7 minutes on one loaded core (`--only` runs parts separately); no pretrained encoder is used.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
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
    FAMILIES,
    Family,
    MovingObject,
    SceneSpec,
    draw_scene,
    normalized_intrinsics,
    render_stereo_video,
    render_video,
    save_ground_truth,
)
from trainer.config import LossConfig, TrainConfig, load_train_config  # noqa: E402
from trainer.data import BatchBuilder, GroundTruth  # noqa: E402
from trainer.evaluate import evaluate_model, evaluation_batches  # noqa: E402
from trainer.geometry import intrinsics_matrix, warp  # noqa: E402
from trainer.losses import photometric_error, reprojection_loss  # noqa: E402
from trainer.manifest import load_manifests  # noqa: E402
from trainer.objective import DepthTraining  # noqa: E402
from trainer.plan import Batch, EpochPlan  # noqa: E402
from trainer.train import fit  # noqa: E402

RENDER_W, RENDER_H, FPS = 320, 192, 10.0
PARTS = ("video", "stereo", "motion", "full", "mixed")


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


@dataclass(frozen=True)
class Video:
    """One rendered source video of a benchmark dataset."""

    video_id: str
    spec: SceneSpec
    split: str  # "train" or "val", for the whole video
    layout: str  # "mono" (ground truth saved) or a stereo layout
    dataset: str


def stereo_videos(count: int, seconds: float) -> list[Video]:
    """Canyon stereo videos ("synth3d"), the last one held out."""
    return [
        Video(
            f"pair{i}",
            SceneSpec(width=RENDER_W, height=RENDER_H, fps=FPS, seed=200 + i, duration_s=seconds, baseline_m=0.3),
            "train" if i < max(1, count - 1) else "val",
            "sbs_full",
            "synth3d",
        )
        for i in range(count)
    ]


def family_videos(
    train_families: Sequence[Family],
    held_out_family: Family,
    per_family: int,
    val_per_family: int,
    held_out_videos: int,
    seconds: float,
    val_seconds: float,
) -> list[Video]:
    """Mono videos of several scene families, each with its own drawn camera: `per_family` training and
    `val_per_family` held-out videos of each trained family ("synth"), and `held_out_videos` of the held-out
    family ("synth_heldout", never trained on)."""
    plan: list[tuple[Family, str, str, float]] = []
    for family in train_families:
        plan += [(family, "train", "synth", seconds)] * per_family
        plan += [(family, "val", "synth", val_seconds)] * val_per_family
    plan += [(held_out_family, "val", "synth_heldout", val_seconds)] * held_out_videos
    return [
        Video(
            f"{family}{i}",
            draw_scene(300 + i, width=RENDER_W, height=RENDER_H, fps=FPS, duration_s=duration, family=family),
            split,
            "mono",
            dataset,
        )
        for i, (family, split, dataset, duration) in enumerate(plan)
    ]


def with_objects(video: Video) -> Video:
    """The video with `moving_objects` added to its scene (same camera, content and length)."""
    spec = video.spec
    objects = moving_objects(spec.duration_s, spec.speed_mps, spec.seed)
    return dataclasses.replace(video, spec=dataclasses.replace(spec, objects=objects))


def add_family_arguments(parser: argparse.ArgumentParser) -> None:
    """The scene-family dataset's arguments (`family_dataset`); a benchmark changes defaults with set_defaults."""
    parser.add_argument("--stereo-scenes", type=int, default=3, help="stereo videos (the last one held out)")
    parser.add_argument("--stereo-seconds", type=float, default=15.0)
    parser.add_argument("--train-families", nargs="+", choices=FAMILIES, default=["canyon", "terrain"])
    parser.add_argument("--held-out-family", choices=FAMILIES, default="corridor")
    parser.add_argument("--videos-per-family", type=int, default=3, help="training videos of each trained family")
    parser.add_argument("--val-per-family", type=int, default=2, help="held-out videos of each trained family")
    parser.add_argument("--held-out-videos", type=int, default=2, help="videos of the held-out family")


def family_dataset(work: Path, args: argparse.Namespace, objects: bool = False) -> dict[str, Any]:
    """The scene families of `add_family_arguments` and the stereo canyons, curated in `work` (or the copy an
    earlier run with the same arguments left there). objects: `moving_objects` in the trained families' videos."""
    mono = [
        args.train_families,
        args.held_out_family,
        args.videos_per_family,
        args.val_per_family,
        args.held_out_videos,
        args.seconds,
        args.val_seconds,
    ]
    key = ["families+objects" if objects else "families", *mono, args.stereo_scenes, args.stereo_seconds]
    videos = family_videos(*mono)
    if objects:
        videos = [with_objects(v) if v.dataset == "synth" else v for v in videos]
    stereo = stereo_videos(args.stereo_scenes, args.stereo_seconds)
    return cached_dataset(
        work, [*key, args.max_height], lambda: curate_videos(work, [*videos, *stereo], args.max_height)
    )


def curate_videos(root_dir: Path, videos: Sequence[Video], max_height: int) -> dict[str, Any]:
    """Render `videos` and curate them under root_dir/data (mono videos' ground truth in data/ground_truth).

    The split is per video (train_fraction 1 or 0), so train and val videos are curated with their own config,
    val first: the train run's publish, with the train config, is the one that stays."""
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
    entries: dict[str, list[CatalogEntry]] = {"train": [], "val": []}
    for video in videos:
        path = sources / f"{video.video_id}.mp4"
        if video.layout == "mono":
            render_video(video.spec, path)
            save_ground_truth(video.spec, root.root / "ground_truth" / f"{video.video_id}.npz")
        else:
            render_stereo_video(video.spec, path, layout=video.layout)
        fx, fy, cx, cy = normalized_intrinsics(video.spec)
        entries[video.split].append(
            CatalogEntry(
                video_id=video.video_id,
                url=f"file://{path}",
                dataset=video.dataset,
                category="natural",
                layout=video.layout,
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
        for result in curate_entries(entries[split], root, configs[split]).videos:
            if result.status != "ok":
                raise RuntimeError(f"curating {result.video_id} failed: {result}")
            outcomes[result.video_id] = {"split": split, "kept": result.frames_kept, "decoded": result.frames_decoded}
    records = {  # in rendering order, as before
        video.video_id: {**outcomes[video.video_id], **(_camera(video.spec) if video.layout == "mono" else {})}
        for video in videos
    }
    return {"root": str(root.root), "videos": records}


def _camera(spec: SceneSpec) -> dict[str, Any]:
    """What varies between scenes, for the JSON."""
    return {
        "family": spec.family,
        "hfov_deg": round(spec.hfov_deg, 1),
        "eye_height_m": round(spec.eye_height_m, 2),
        "pitch_deg": round(spec.pitch_deg, 1),
        "roll_amplitude_deg": round(spec.roll_amplitude_deg, 1),
        "speed_mps": round(spec.speed_mps, 2),
    }


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
            "logit_penalty": args.logit_penalty,
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


def constant(image: torch.Tensor) -> torch.Tensor:
    """A content-free prediction: the same disparity everywhere."""
    return torch.full_like(image[:, :1], 0.5)


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
            support_rows = _eval_support_rows(plan, targets, seed)
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


@torch.no_grad()
def photometric_oracle(cfg: TrainConfig, data_root: Path, batches: int = 12) -> dict[str, float]:
    """The video loss (automasked minimum reprojection, full resolution) on training batches with the rendered
    depth and camera motion, with a flat depth (the median) and the same motion, and with no warp at all.

    If the true geometry did not explain the views far better than a flat depth, a net that ends flat would be
    the data's fault (intrinsics, timing, rendering); this says it is the optimisation's."""
    frame = load_manifests(manifests(data_root, "synth"), "train", cfg.data.filters)
    plan = EpochPlan(frame, cfg.data)
    builder = BatchBuilder(
        plan, cfg.data, train=False, with_supports=True, ground_truth=GroundTruth(data_root / "ground_truth")
    )
    rows = np.flatnonzero(plan.eligible)
    rng = np.random.default_rng(0)
    cache: dict[str, np.ndarray] = {}
    losses: dict[str, list[float]] = {"true_depth_and_motion": [], "flat_depth_true_motion": [], "no_warp": []}
    for i in range(batches):
        targets = np.sort(rng.choice(rows, cfg.data.batch_size, replace=False))
        seed = (cfg.data.seed, i)
        support_rows = _eval_support_rows(plan, targets, seed)
        batch = builder(Batch(0, targets, seed))
        image, sources = batch["image"], list(batch["supports"].unbind(1))
        depth = torch.nan_to_num(batch["gt_depth"].float(), nan=1e3, posinf=1e3).clamp(0.1, 1e3)
        k = intrinsics_matrix(batch["intrinsics"].float(), *image.shape[-2:])
        motion = [
            torch.from_numpy(_relative_poses(plan, cache, data_root, targets, support_rows[s])).float() for s in (0, 1)
        ]
        for name, d in (
            ("true_depth_and_motion", depth),
            ("flat_depth_true_motion", torch.full_like(depth, float(depth.median()))),
        ):
            warped, valid = zip(*(warp(src, d, t, k) for src, t in zip(sources, motion)))
            losses[name].append(float(reprojection_loss(image, list(warped), sources, list(valid))[0]))
        losses["no_warp"].append(
            float(torch.cat([photometric_error(src, image) for src in sources], 1).min(1).values.mean())
        )
    return {name: round(float(np.mean(values)), 4) for name, values in losses.items()}


def _eval_support_rows(plan: EpochPlan, targets: np.ndarray, seed: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The support rows an un-augmented BatchBuilder picks for `targets` with `seed`: it draws the support offset
    as its first random number when not training."""
    return plan.supports(targets, float(np.random.default_rng(seed).random()))


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


# The benchmark's two scorings of held-out video: new scenes of the trained families, and a family never trained on.
HELD_OUT = {"held_out_scenes": "synth/video", "held_out_family": "synth_heldout/video"}


def held_out(metrics: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    return {name: pick(metrics, source) for name, source in HELD_OUT.items()}


def spread(values: Sequence[float]) -> dict[str, Any]:
    """Mean, std (population), min, max and the values themselves, in seed order."""
    a = np.asarray(values, np.float64)
    return {
        "mean": round(float(a.mean()), 4),
        "std": round(float(a.std()), 4),
        "min": round(float(a.min()), 4),
        "max": round(float(a.max()), 4),
        "per_seed": [round(float(v), 4) for v in a],
    }


def over_seeds(per_seed: Sequence[dict[str, float]]) -> dict[str, dict[str, Any]]:
    """Each metric of per-seed results (dicts with the same keys) as its `spread`."""
    return {key: spread([result[key] for result in per_seed]) for key in per_seed[0]}


def compare_to_prior(trained: dict[str, Any], prior: dict[str, float]) -> dict[str, Any]:
    """Trained AbsRel over the layout prior's, and whether the gap is larger than the trained net's seed spread."""
    abs_rel = trained["abs_rel"]
    return {
        "abs_rel_vs_layout_prior": round(abs_rel["mean"] / prior["abs_rel"], 3),
        "beats_layout_prior": bool(prior["abs_rel"] - abs_rel["mean"] > abs_rel["max"] - abs_rel["min"]),
    }


def add_training_arguments(parser: argparse.ArgumentParser) -> None:
    """The dataset and training arguments this benchmark shares with bench_variants.py."""
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each training scene")
    parser.add_argument("--val-seconds", type=float, default=15.0, help="length of each held-out scene")
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
    parser.add_argument("--logit-penalty", type=float, default=LossConfig().logit_penalty, help="loss.logit_penalty")
    parser.add_argument("--loss-scales", type=int, default=4)
    parser.add_argument("--aspect-prob", type=float, default=0.0, help="aspect-ratio augmentation probability")
    parser.add_argument("--seed", type=int, default=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=1000, help="optimiser steps of each video training run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="one training run per seed")
    parser.add_argument("--motion-seeds", type=int, default=None, help="the motion part's runs: the first N seeds")
    parser.add_argument("--stereo-steps", type=int, default=200, help="optimiser steps of the stereo run")
    add_family_arguments(parser)
    add_training_arguments(parser)
    parser.set_defaults(seconds=20.0, val_seconds=8.0)
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
        choices=PARTS,
        action="append",
        help="run only these parts (repeatable; default: all): video (support mode category), "
        "motion (support mode motion), full (category at full photometric resolution), stereo, "
        "mixed (category with the stereo batches mixed in)",
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run: 20 steps, short scenes")
    add_workdir_argument(parser, "the dataset and runs")
    add_out_argument(parser)
    args = parser.parse_args()
    run_meta = meta("torchvision", "timm")
    if args.quick:
        args.steps, args.stereo_steps, args.seconds, args.val_seconds, args.stereo_seconds = 20, 20, 8.0, 5.0, 5.0
        args.videos_per_family, args.val_per_family, args.held_out_videos = 1, 1, 1
    parts = set(args.only or PARTS)
    motion_seeds = args.seeds[: args.motion_seeds or len(args.seeds)]
    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "2"))))
    started = Stopwatch()
    with work_directory(args.workdir, prefix="bench-learning-") as work:
        build = Stopwatch()
        dataset = family_dataset(work, args)
        data_root = Path(dataset["root"])
        build_s = build.s
        out: dict[str, Any] = {
            "setup": {
                "render": f"{RENDER_W}x{RENDER_H} @ {FPS:g} fps",
                "train_families": args.train_families,
                "held_out_family": args.held_out_family,
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
                "logit_penalty": args.logit_penalty,
                "automask": args.automask,
                "photometric_resolution": args.photometric_resolution,
                "aspect_prob": args.aspect_prob,
                "seeds": args.seeds,
                "motion_seeds": motion_seeds,
                "threads": torch.get_num_threads(),
                "eval_alignment": "lsq_disparity",
                "videos": dataset["videos"],
                "build_s": round(build_s, 1),
            },
        }
        scored = ["synth", "synth_heldout"]
        if parts & {"video", "motion", "full", "mixed"}:
            video_cfg = train_config(args, work / "run_video")
            prior = mean_disparity_prior(video_cfg, data_root)
            layout = evaluate(
                None, video_cfg, data_root, scored, predict=lambda image: prior.expand(image.shape[0], -1, -1, -1)
            )
            untrained_runs = []
            for seed in args.seeds:
                cfg = train_config(args, work / "run_video", data={"seed": seed})
                initial = untrained(cfg)
                untrained_runs.append(
                    {**held_out(evaluate(initial, cfg, data_root, scored)), "pose": pose_check(initial, cfg, data_root)}
                )
            out["video"] = {
                "untrained": {key: over_seeds([r[key] for r in untrained_runs]) for key in (*HELD_OUT, "pose")},
                "constant_lsq": held_out(evaluate(None, video_cfg, data_root, scored, predict=constant)),
                "constant_median": held_out(
                    evaluate(None, video_cfg, data_root, scored, alignment="median", predict=constant)
                ),
                "train_mean_disparity_map": held_out(layout),
                "photometric_oracle": photometric_oracle(video_cfg, data_root),
            }
        # name: (part, support mode, photometric resolution, seeds, datasets trained on)
        video_runs = {
            "category": ("video", "category", args.photometric_resolution, args.seeds, ("synth",)),
            "motion": ("motion", "motion", args.photometric_resolution, motion_seeds, ("synth",)),
            "category_full_resolution": ("full", "category", "full", args.seeds[:1], ("synth",)),
            "mixed": ("mixed", "category", args.photometric_resolution, args.seeds, ("synth", "synth3d")),
        }
        for name, (part, mode, resolution, seeds, datasets) in video_runs.items():
            if part not in parts or (name == "category_full_resolution" and args.photometric_resolution == "full"):
                continue
            out["video"][f"trained_{name}"] = trained_runs(
                args, work, data_root, name, mode, resolution, seeds, datasets
            )
            out["video"].update(ratios(out["video"], name))
        if "stereo" in parts:
            cfg = train_config(
                args,
                work / "run_stereo",
                data={"seed": args.seeds[0]},
                optim={"max_steps": args.stereo_steps, "warmup_steps": min(20, args.stereo_steps // 10)},
            )
            base = evaluate(untrained(cfg), cfg, data_root, ["synth3d", *scored])
            model, info = run_fit(cfg, manifests(data_root, "synth3d"))
            trained = evaluate(model, cfg, data_root, ["synth3d", *scored])
            out["stereo"] = {
                "untrained": pick(base, "synth3d/stereo"),
                "trained": {**pick(trained, "synth3d/stereo"), "train": info},
                "abs_rel_vs_untrained": round(
                    pick(trained, "synth3d/stereo")["abs_rel"] / pick(base, "synth3d/stereo")["abs_rel"], 3
                ),
                # The stereo-trained net on the held-out mono videos' rendered depth (lsq-aligned AbsRel).
                "on_mono_val_depth": {"untrained": held_out(base), "trained": held_out(trained)},
            }
        out["wall_s"] = round(started.s, 1)
        emit(out, args.out, run_meta)


def trained_runs(
    args: argparse.Namespace,
    work: Path,
    data_root: Path,
    name: str,
    mode: str,
    resolution: str,
    seeds: Sequence[int],
    datasets: Sequence[str] = ("synth",),
) -> dict[str, Any]:
    """One training run per seed on `datasets`, scored on both held-out sets, with its pose check and collapse
    verdict."""
    runs = []
    for seed in seeds:
        cfg = train_config(
            args,
            work / f"run_video_{name}_seed{seed}",
            data={"seed": seed, "support": {"mode": mode}},
            loss={"photometric_resolution": resolution},
        )
        model, info = run_fit(cfg, manifests(data_root, *datasets))
        pose = pose_check(model, cfg, data_root)
        runs.append(
            {
                **held_out(evaluate(model, cfg, data_root, ["synth", "synth_heldout"])),
                "pose": pose,
                "collapse": {
                    "warned": sorted({w["kind"] for w in info["collapse"]["warnings"]}),  # at some time in the run
                    "at_end": info["collapse"]["ongoing"],
                    "reversed_translation": min(pose.values()) < 0,  # against the rendered camera motion
                },
                "train": info,
            }
        )
        progress = {name: {"seed": seed, **{k: runs[-1][k] for k in (*HELD_OUT, "pose")}}}
        print(json.dumps(progress), file=sys.stderr, flush=True)
    return {
        **{key: over_seeds([r[key] for r in runs]) for key in (*HELD_OUT, "pose")},
        "collapse": [r["collapse"] for r in runs],
        "train": [r["train"] for r in runs],
    }


def ratios(video: dict[str, Any], name: str) -> dict[str, Any]:
    """The trained runs' mean AbsRel against each baseline, per held-out set."""
    trained = video[f"trained_{name}"]
    out: dict[str, Any] = {}
    for split in HELD_OUT:
        mean = trained[split]["abs_rel"]["mean"]
        out[f"{name}_{split}"] = {
            "abs_rel_vs_untrained": round(mean / video["untrained"][split]["abs_rel"]["mean"], 3),
            "abs_rel_vs_constant_lsq": round(mean / video["constant_lsq"][split]["abs_rel"], 3),
            **compare_to_prior(trained[split], video["train_mean_disparity_map"][split]),
        }
    return out


if __name__ == "__main__":
    main()
