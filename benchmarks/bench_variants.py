"""Do the trainer's variants help? Each trains from scratch with the same seeds, steps and loader. Prints JSON.

    python -m benchmarks.bench_variants [--steps 500] [--seeds 0 1 2] [--only NAME] [--video-only] [--quick]
                                        [--workdir DIR] [--out FILE]

The dataset is bench_learning's scene families (`family_videos`: canyons and open terrain trained on, with
held-out videos of each, and corridors never trained on) with `moving_objects` in the trained families' videos:
boxes crossing just ahead of the camera, boxes coming towards it and one box fixed in the camera frame, which
plain photometric training can explain with infinite depth. Stereo canyon videos are mixed in unless
`--video-only` (bench_learning's `mixed` recipe: its video-only runs end in a flat disparity, which no variant
can be judged on). Views are compared at each scale's resolution (`loss.photometric_resolution: scale`):

  baseline        the default video loss (SlowTV: automask + per-pixel minimum reprojection)
  explainability  loss.explainability.enabled (SfMLearner's mask)
  aquanet         model.disparity_head: aquanet
  zoom            data.augment.resize_prob 0.5 (depth-cue-preserving resize)
  positional      model.positional_encoding (SPIMO's first stage; reported as a variant too)
  spimo           loss.spimo from the same seed's `positional` checkpoint (so it costs twice the steps in all)

On the held-out videos of the trained families: AbsRel, RMSE, a1 after least-squares scale and shift in
disparity fitted on the whole image, averaged over all pixels (`overall`), over moving-object pixels
(`moving`), over those of the world-moving boxes (`moving_world`) and of the box riding with the camera
(`with_camera`); on the held-out family, `held_out_family` (whole image); plus the pose net's translation
direction (bench_learning's `pose_check`). Every figure is over `--seeds` (mean, std, min, max, per seed).
`vs_baseline`: per region, the variant's AbsRel over the baseline's with the same seed (same initial
weights and batches), over seeds, and a verdict: `helps` when every seed's ratio is below 1, `hurts` when
every one is above, `unclear` otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.bench_learning import (  # before trainer: it makes torchvision importable (ensure_torchvision)
    FPS,
    RENDER_H,
    RENDER_W,
    add_family_arguments,
    add_training_arguments,
    evaluate,
    family_dataset,
    manifests,
    pick,
    pose_check,
    run_fit,
    spread,
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


def verdict(ratios: Sequence[float]) -> str:
    """Paired per-seed AbsRel ratios (variant / baseline) -> helps, hurts or unclear."""
    if all(r < 1 for r in ratios):
        return "helps"
    if all(r > 1 for r in ratios):
        return "hurts"
    return "unclear"


def versus_baseline(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Each variant's per-seed AbsRel over the baseline's (same seed) per region, over seeds, with a verdict."""
    out: dict[str, Any] = {}
    for name, per_seed in runs.items():
        if name == "baseline":
            continue
        out[name] = {}
        for region in (*REGIONS, "held_out_family"):
            pairs = [(v[region].get("abs_rel"), b[region].get("abs_rel")) for v, b in zip(per_seed, runs["baseline"])]
            ratios = [v / b for v, b in pairs if v is not None and b is not None and v == v and b == b and b > 0]
            if ratios:
                out[name][region] = {**spread(ratios), "verdict": verdict(ratios)}
        out[name]["seeds"] = len(per_seed)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=500, help="optimiser steps of every variant's run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="one run of each variant per seed")
    add_training_arguments(parser)
    parser.set_defaults(seconds=20.0, val_seconds=8.0, height=64, width=96)
    add_family_arguments(parser)
    parser.set_defaults(val_per_family=1, held_out_videos=1)
    parser.add_argument("--video-only", action="store_true", help="train on the video batches alone")
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
        args.steps, args.seconds, args.val_seconds, args.stereo_seconds = 10, 6.0, 4.0, 4.0
        args.videos_per_family, args.stereo_scenes = 1, 2
    names = [n for n in VARIANTS if n in set(args.only or VARIANTS) | {"baseline"}]
    if "spimo" in names and "positional" not in names:
        names.insert(names.index("spimo"), "positional")  # its first stage
    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "2"))))
    started = Stopwatch()
    with work_directory(args.workdir, prefix="bench-variants-") as work:
        build = Stopwatch()
        dataset = family_dataset(work, args, objects=True)
        data_root = Path(dataset["root"])
        trained_on = ("synth",) if args.video_only else ("synth", "synth3d")
        out: dict[str, Any] = {
            "setup": {
                "render": f"{RENDER_W}x{RENDER_H} @ {FPS:g} fps",
                "train_families": args.train_families,
                "held_out_family": args.held_out_family,
                "trained_on": list(trained_on),
                "sample_max_height": args.max_height,
                "train_size": f"{args.height}x{args.width}",
                "batch_size": args.batch_size,
                "encoder": args.encoder,
                "pose_encoder": args.pose_encoder,
                "lr": args.lr,
                "logit_penalty": args.logit_penalty,
                "steps_per_variant": args.steps,
                "seeds": args.seeds,
                "photometric_resolution": "scale",
                "resize_prob_of_zoom": args.resize_prob,
                "eval_alignment": "lsq_disparity",
                "videos": dataset["videos"],
                "build_s": round(build.s, 1),
                "threads": torch.get_num_threads(),
            },
        }
        cfg = train_config(args, work / "untrained")
        out["untrained"] = evaluate_regions(untrained(cfg), cfg, data_root)
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
        for seed in args.seeds:
            first_stage: str | None = None
            for name in names:
                cfg = train_config(
                    args,
                    work / f"run_{name}_seed{seed}",
                    **merge({"data": {"seed": seed}}, variant_overrides(name, args, first_stage)),
                )
                model, info = run_fit(cfg, manifests(data_root, *trained_on))
                if name == "positional":
                    first_stage = str(Path(cfg.run.out_dir) / "checkpoints" / LAST)
                heldout = evaluate(model, cfg, data_root, ["synth_heldout"])
                runs[name].append(
                    {
                        **evaluate_regions(model, cfg, data_root),
                        "held_out_family": pick(heldout, "synth_heldout/video"),
                        "pose": pose_check(model, cfg, data_root),
                        "train": {k: info[k] for k in ("steps", "wall_s", "median_step_s", "loss_first", "loss_last")},
                    }
                )
                progress = {name: {"seed": seed, **{r: runs[name][-1][r] for r in (*REGIONS, "held_out_family")}}}
                print(json.dumps(progress), file=sys.stderr, flush=True)
        out["variants"] = {name: summarise(per_seed) for name, per_seed in runs.items()}
        out["vs_baseline"] = versus_baseline(runs)
        out["wall_s"] = round(started.s, 1)
        emit(out, args.out, run_meta)


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Config sections of `extra` merged over `base`'s, one level deep."""
    return {**base, **{k: {**base.get(k, {}), **v} for k, v in extra.items()}}


def summarise(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    """A variant's runs over seeds: each region's and the pose's metrics as spreads, and each run's training."""
    out: dict[str, Any] = {}
    for key in (*REGIONS, "held_out_family", "pose"):
        rows = [{k: v for k, v in run[key].items() if v == v} for run in per_seed]  # NaN: no such pixels
        common = set.intersection(*(set(r) for r in rows))
        out[key] = {k: spread([r[k] for r in rows]) for k in sorted(common)}
    out["pixel_share"] = per_seed[0]["pixel_share"]
    out["train"] = [run["train"] for run in per_seed]
    return out


if __name__ == "__main__":
    main()
