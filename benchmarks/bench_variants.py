"""Do the trainer's variants help on independently moving objects? Same short CPU budget each. Prints JSON.

    python -m benchmarks.bench_variants [--steps 500] [--only NAME] [--quick] [--workdir DIR] [--out FILE]

The dataset is bench_learning's (its `build_dataset`, mono scenes only) with `objects`: boxes crossing the
canyon, boxes coming towards the camera and one box fixed in the camera frame (`moving_objects`), which
plain photometric training can explain with infinite depth. The last `--val-scenes` scenes are held out.
Each variant trains from scratch with the same seed, steps and loader, views compared at each scale's
resolution (`loss.photometric_resolution: scale`):

  baseline        the default video loss (SlowTV: automask + per-pixel minimum reprojection)
  explainability  loss.explainability.enabled (SfMLearner's mask)
  aquanet         model.disparity_head: aquanet
  zoom            data.augment.resize_prob 0.5 (depth-cue-preserving resize)
  positional      model.positional_encoding (SPIMO's first stage; reported as a variant too)
  spimo           loss.spimo from the `positional` checkpoint (so it costs twice the steps in all)

On held-out frames: AbsRel, RMSE, a1 after least-squares scale and shift in disparity fitted on the whole
image, averaged over all pixels (`overall`), over moving-object pixels (`moving`), over those of the
world-moving boxes (`moving_world`) and of the box riding with the camera (`with_camera`); plus the pose
net's translation direction (bench_learning's `pose_check`), and each variant's AbsRel over the baseline's.
A ratio below 1 is only a finding if it is clear of run-to-run noise: one seed, short runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.bench_learning import (  # before trainer: it makes torchvision importable (ensure_torchvision)
    FPS,
    RENDER_H,
    RENDER_W,
    add_training_arguments,
    build_dataset,
    cached_dataset,
    manifests,
    pose_check,
    run_fit,
    train_config,
    untrained,
)
from benchmarks.common import Stopwatch, add_out_argument, add_workdir_argument, emit, meta, work_directory
from trainer.config import TrainConfig
from trainer.data import GroundTruth, resize_nearest
from trainer.evaluate import evaluation_batches
from trainer.manifest import load_manifests
from trainer.metrics import depth_metrics_per_image
from trainer.plan import EpochPlan
from trainer.train import LAST

VARIANTS = ("baseline", "explainability", "aquanet", "zoom", "positional", "spimo")
REGIONS = ("overall", "moving", "moving_world", "with_camera")
_SCENE, _WORLD, _ATTACHED = 0.0, 1.0, 2.0


class ObjectCodes(GroundTruth):
    """The moving-object masks served as a 'depth' (0 scene, 1 world-moving, 2 with the camera).

    Going through GroundTruth's interface, the batch builder crops and resizes them exactly as the depth."""

    def depth(self, video_id: str, timestamp_s: float, size: tuple[int, int]) -> np.ndarray | None:
        found = self.frame(video_id, timestamp_s)
        if found is None:
            return None
        truth, index = found
        codes = np.full(truth["depth"].shape[1:], _SCENE, np.float32)
        if "moving" in truth:
            codes[truth["moving"][index]] = _WORLD
            codes[truth["moving_attached"][index]] = _ATTACHED
        return resize_nearest(codes, size)


@torch.no_grad()
def evaluate_regions(model: torch.nn.Module, cfg: TrainConfig, data_root: Path) -> dict[str, Any]:
    """Held-out depth metrics over the whole image and over each moving-object region, plus pixel shares."""
    frame = load_manifests(manifests(data_root, "synth"), "val", cfg.data.filters)
    plan = EpochPlan(frame, cfg.data)
    directory = data_root / "ground_truth"
    model.eval()
    per_image: dict[str, list[dict[str, torch.Tensor]]] = {r: [] for r in REGIONS}
    pixels = dict.fromkeys(REGIONS, 0)
    for batch, codes in zip(
        evaluation_batches(plan, cfg, GroundTruth(directory)), evaluation_batches(plan, cfg, ObjectCodes(directory))
    ):
        assert batch["sample_id"] == codes["sample_id"]
        gt, code = batch["gt_depth"], codes["gt_depth"]
        pred = 1.0 / model.predict_disparity(batch["image"]).float().clamp_min(1e-6)
        regions = {
            "overall": None,
            "moving": code > _SCENE,
            "moving_world": code == _WORLD,
            "with_camera": code == _ATTACHED,
        }
        for region, mask in regions.items():
            per_image[region].append(
                depth_metrics_per_image(
                    pred, gt, torch.isfinite(gt), cfg.eval.min_depth, cfg.eval.max_depth, cfg.eval.alignment, mask
                )
            )
            pixels[region] += int(torch.isfinite(gt).sum() if mask is None else (mask & torch.isfinite(gt)).sum())
    out: dict[str, Any] = {}
    for region, rows in per_image.items():
        values = {k: torch.cat([r[k] for r in rows]) for k in rows[0]}
        out[region] = {k: round(float(v.nanmean()), 4) for k, v in values.items() if k in ("abs_rel", "rmse", "a1")}
    out["pixel_share"] = {r: round(pixels[r] / max(pixels["overall"], 1), 4) for r in REGIONS[1:]}
    return out


def variant_overrides(name: str, args: argparse.Namespace, first_stage: str | None) -> dict[str, Any]:
    """Config sections (merged over bench_learning's train_config) that make the variant."""
    if name == "explainability":
        return {"loss": {"explainability": {"enabled": True}}}
    if name == "aquanet":
        return {"model": {"disparity_head": "aquanet"}}
    if name == "zoom":
        return {"data": {"augment": {"aspect_prob": args.aspect_prob, "resize_prob": args.resize_prob}}}
    if name == "positional":
        return {"model": {"positional_encoding": True}}
    if name == "spimo":
        return {"loss": {"spimo": {"enabled": True, "first_stage_checkpoint": first_stage}}}
    return {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=500, help="optimiser steps of every variant's run")
    add_training_arguments(parser)
    parser.set_defaults(seconds=20.0, val_seconds=10.0, height=64, width=96)
    parser.add_argument("--resize-prob", type=float, default=0.5, help="data.augment.resize_prob of `zoom`")
    parser.add_argument("--only", choices=VARIANTS, action="append", help="run only these variants (repeatable)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 10 steps, short scenes")
    add_workdir_argument(parser, "the dataset and runs")
    add_out_argument(parser)
    args = parser.parse_args()
    run_meta = meta("torchvision", "timm")
    # The baseline's figures are the reference; SlowTV's loss with the scale-wise photometric comparison.
    args.automask, args.photometric_resolution = True, "scale"
    if args.quick:
        args.steps, args.seconds, args.val_seconds = 10, 6.0, 4.0
    names = [n for n in VARIANTS if n in set(args.only or VARIANTS) | {"baseline"}]
    if "spimo" in names and "positional" not in names:
        names.insert(names.index("spimo"), "positional")  # its first stage
    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "2"))))
    started = Stopwatch()
    with work_directory(args.workdir, prefix="bench-variants-") as work:
        key = ["objects", args.scenes, args.val_scenes, args.seconds, args.val_seconds, args.max_height, args.speed]
        build = Stopwatch()
        dataset = cached_dataset(
            work,
            key,
            lambda: build_dataset(
                work,
                args.scenes,
                args.val_scenes,
                args.seconds,
                args.val_seconds,
                0,
                0.0,
                args.max_height,
                args.speed,
                objects=True,
            ),
        )
        data_root = Path(dataset["root"])
        out: dict[str, Any] = {
            "setup": {
                "render": f"{RENDER_W}x{RENDER_H} @ {FPS:g} fps",
                "sample_max_height": args.max_height,
                "train_size": f"{args.height}x{args.width}",
                "batch_size": args.batch_size,
                "encoder": args.encoder,
                "pose_encoder": args.pose_encoder,
                "lr": args.lr,
                "steps_per_variant": args.steps,
                "photometric_resolution": "scale",
                "resize_prob_of_zoom": args.resize_prob,
                "seed": args.seed,
                "eval_alignment": "lsq_disparity",
                "videos": dataset["videos"],
                "build_s": round(build.s, 1),
                "threads": torch.get_num_threads(),
            },
        }
        cfg = train_config(args, work / "untrained")
        out["untrained"] = evaluate_regions(untrained(cfg), cfg, data_root)
        variants: dict[str, Any] = {}
        checkpoints: dict[str, str] = {}
        for name in names:
            cfg = train_config(
                args, work / f"run_{name}", **variant_overrides(name, args, checkpoints.get("positional"))
            )
            model, info = run_fit(cfg, manifests(data_root, "synth"))
            checkpoints[name] = str(Path(cfg.run.out_dir) / "checkpoints" / LAST)
            variants[name] = {
                **evaluate_regions(model, cfg, data_root),
                "pose": pose_check(model, cfg, data_root),
                "train": {k: info[k] for k in ("steps", "wall_s", "median_step_s", "loss_first", "loss_last")},
            }
            print(json.dumps({name: {r: variants[name][r] for r in REGIONS}}), file=sys.stderr, flush=True)
        out["variants"] = variants
        base = variants["baseline"]
        out["abs_rel_vs_baseline"] = {
            name: {
                r: (
                    round(v[r]["abs_rel"] / base[r]["abs_rel"], 3) if base[r]["abs_rel"] == base[r]["abs_rel"] else None
                )
                for r in REGIONS
            }
            for name, v in variants.items()
            if name != "baseline"
        }
        out["wall_s"] = round(started.s, 1)
        emit(out, args.out, run_meta)


if __name__ == "__main__":
    main()
