"""`python -m trainer fit|evaluate|predict` (also installed as `depthcurate-train`)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import yaml

from trainer.config import ConfigError, load_train_config
from trainer.manifest import ManifestError


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, ManifestError, FileNotFoundError, ValueError) as exc:
        print(f"trainer: {exc}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m trainer", description=__doc__)
    commands = parser.add_subparsers(title="commands", required=True)
    fit = commands.add_parser("fit", help="train on one or more manifests (torchrun for several processes)")
    fit.add_argument("--manifest", action="append", required=True, help="manifest/<dataset>.parquet; repeatable")
    fit.add_argument("--config", help="trainer YAML (trainer/configs/*.yaml)")
    fit.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. optim.max_steps=20 (YAML value syntax)",
    )
    fit.add_argument("--out-dir", help="where checkpoints and logs go (run.out_dir)")
    fit.add_argument("--resume", action="store_true", help="continue from <out-dir>/checkpoints/last.pt")
    fit.set_defaults(func=_fit)

    evaluate = commands.add_parser("evaluate", help="print the metrics table of a checkpoint on a manifest")
    evaluate.add_argument("--checkpoint", required=True)
    evaluate.add_argument("--manifest", action="append", required=True)
    evaluate.add_argument("--split", default=None, help="default: the config's data.val_split")
    evaluate.add_argument(
        "--ground-truth",
        help="directory of <video_id>.npz rendered depth (synthetic data); default: the checkpoint's eval.ground_truth",
    )
    evaluate.add_argument("--max-batches", type=int)
    evaluate.add_argument("--device", default="auto")
    evaluate.add_argument("--json", action="store_true")
    evaluate.set_defaults(func=_evaluate)

    predict = commands.add_parser("predict", help="depth maps (16-bit PNG and a colour preview) for images/videos")
    predict.add_argument("--checkpoint", required=True)
    predict.add_argument("--out", required=True, help="output directory")
    predict.add_argument("--fps", type=float, help="video frames per second to predict (default: every frame)")
    predict.add_argument("--device", default="auto")
    predict.add_argument("inputs", nargs="+")
    predict.set_defaults(func=_predict)
    return parser


def overrides_from(pairs: list[str]) -> dict[str, Any]:
    """["optim.lr=1e-3", ...] -> {"optim": {"lr": 0.001}}; values are parsed as YAML."""
    result: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set expects KEY=VALUE, got {pair!r}")
        node = result
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = _scalar(yaml.safe_load(value))
    return result


def _scalar(value: Any) -> Any:
    """YAML 1.1 reads 1e-3 as a string; people mean the number."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _fit(args: argparse.Namespace) -> int:
    overrides = overrides_from(args.set)
    if args.out_dir:
        overrides.setdefault("run", {})["out_dir"] = args.out_dir
    cfg = load_train_config(args.config, overrides)
    from trainer.train import fit  # torch and timm load here, after the arguments are known to be sane

    result = fit(args.manifest, cfg, resume=args.resume)
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(result, indent=2))
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from pipeline.torch_compat import resolve_device
    from trainer.evaluate import evaluate_model, format_metrics, open_ground_truth
    from trainer.manifest import load_manifests
    from trainer.objective import DepthTraining
    from trainer.plan import EpochPlan

    device = resolve_device(args.device)
    model, cfg = DepthTraining.from_checkpoint(args.checkpoint, device)
    frame = load_manifests(args.manifest, args.split or cfg.data.val_split, cfg.data.filters)
    # A path given here is the user's (from the working directory); the config's is from the data root.
    truth = open_ground_truth(
        Path(args.ground_truth).resolve() if args.ground_truth else cfg.eval.ground_truth, args.manifest, frame
    )
    metrics = evaluate_model(model, EpochPlan(frame, cfg.data), cfg, device, truth, args.max_batches)
    print(json.dumps(metrics, indent=2) if args.json else format_metrics(metrics))
    return 0


def _predict(args: argparse.Namespace) -> int:
    from pipeline.torch_compat import resolve_device
    from trainer.predict import predict_paths

    written = predict_paths(args.checkpoint, args.inputs, args.out, resolve_device(args.device), args.fps)
    print(f"wrote {len(written)} depth maps (+ colour previews) to {args.out}")
    return 0
