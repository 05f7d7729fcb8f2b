"""`python -m trainer fit|evaluate|predict|export` (also installed as `depthcurate-train`).

Arguments, files and the config are checked before torch is imported: a mistake is one line on stderr and exit
code 2 in well under a second (the traceback with --debug).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import zipfile
from pathlib import Path
from typing import Any

import yaml

from pipeline import package_version
from pipeline.io import objectstore
from trainer.config import ConfigError, TrainConfig, load_train_config

EXIT_USAGE = 2  # bad arguments, files or config (or data the trainer cannot use): no training ran
DEBUG_HELP = "show the traceback of an error instead of one line"
DEVICE_HELP = "torch device: auto (CUDA when there is one), cpu, cuda, cuda:1, ... (default: auto)"
CHECKPOINT_HELP = "a checkpoint fit wrote (<out-dir>/checkpoints/last.pt) or its weights-only export"
MANIFEST_HELP = "manifest/<dataset>.parquet of a published data root (a path or an s3:// URL); repeatable"
PARQUET_MAGIC = b"PAR1"  # a Parquet file starts and ends with it


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, FileNotFoundError, ValueError) as exc:  # trainer.manifest.ManifestError is a ValueError
        error = exc
    if args.debug:
        raise error  # outside the except block, so the traceback is the error's own
    for line in str(error).splitlines():  # one line per problem (a config may have several)
        print(f"trainer: {line}", file=sys.stderr)
    return EXIT_USAGE


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m trainer", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s (depthcurate {package_version()})")
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    # Also after the command; SUPPRESS, so a subcommand's default does not undo a --debug given before it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    _fit_parser(commands, common)
    _evaluate_parser(commands, common)
    _predict_parser(commands, common)
    _export_parser(commands, common)
    return parser


def _fit_parser(commands: Any, common: argparse.ArgumentParser) -> None:
    fit = commands.add_parser(
        "fit",
        parents=[common],
        help="train on one or more manifests (torchrun for several processes)",
        description="Train the depth model on the shards that manifests list: video batches self-supervised by "
        "view synthesis, stereo batches by their disparity. Writes <out-dir>/checkpoints/last.pt (weights, "
        "optimiser, data position: enough to resume exactly), log.jsonl, TensorBoard events and metrics.json "
        "(the final evaluation). Under torchrun, one process per GPU (or CPU worker).",
    )
    fit.add_argument("--manifest", action="append", required=True, help=MANIFEST_HELP)
    fit.add_argument("--config", help="trainer YAML (trainer/configs/*.yaml); defaults from trainer/config.py")
    fit.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. optim.max_steps=20 (YAML value syntax); repeatable",
    )
    fit.add_argument("--out-dir", help="where checkpoints and logs go (default: the config's run.out_dir)")
    fit.add_argument(
        "--resume",
        action="store_true",
        help="continue from <out-dir>/checkpoints/last.pt when it exists (a fresh start when it does not)",
    )
    fit.set_defaults(func=_fit)


def _evaluate_parser(commands: Any, common: argparse.ArgumentParser) -> None:
    evaluate = commands.add_parser(
        "evaluate",
        parents=[common],
        help="print the metrics table of a checkpoint on a manifest",
        description="Score a checkpoint on a manifest's held-out frames, per source (<dataset>/<kind>): stereo "
        "frames against their disparity, video frames against rendered depth when there is some (synthetic "
        "data). AbsRel, SqRel, RMSE, log-RMSE and delta < 1.25^k, after the alignment of the config's eval section.",
    )
    evaluate.add_argument("--checkpoint", required=True, help=CHECKPOINT_HELP)
    evaluate.add_argument("--manifest", action="append", required=True, help=MANIFEST_HELP)
    evaluate.add_argument("--split", default=None, help="split to score (default: the config's data.val_split)")
    evaluate.add_argument(
        "--ground-truth",
        help="directory of <video_id>.npz rendered depth (synthetic data); default: the checkpoint's eval.ground_truth",
    )
    evaluate.add_argument("--max-batches", type=int, help="score at most this many batches per source (default: all)")
    evaluate.add_argument("--device", default="auto", help=DEVICE_HELP)
    evaluate.add_argument("--json", action="store_true", help="print JSON instead of a table")
    evaluate.set_defaults(func=_evaluate)


def _predict_parser(commands: Any, common: argparse.ArgumentParser) -> None:
    predict = commands.add_parser(
        "predict",
        parents=[common],
        help="depth maps (16-bit PNG and a colour preview) for images/videos",
        description="Write <name>_depth.png (16-bit depth in millimetres of the model's relative scale) and "
        "<name>_depth.jpg (colour-mapped disparity) for every image, and for video frames (<name>_<frame>_...).",
    )
    predict.add_argument("--checkpoint", required=True, help=CHECKPOINT_HELP)
    predict.add_argument("--out", required=True, help="output directory (created when missing)")
    predict.add_argument("--fps", type=float, help="video frames per second to predict (default: every frame)")
    predict.add_argument("--device", default="auto", help=DEVICE_HELP)
    predict.add_argument("inputs", nargs="+", help="images (.jpg .png .bmp .webp) and videos")
    predict.set_defaults(func=_predict)


def _export_parser(commands: Any, common: argparse.ArgumentParser) -> None:
    export = commands.add_parser(
        "export",
        parents=[common],
        help="write a checkpoint's weights alone, for inference",
        description="Write the model weights of a checkpoint and the config that rebuilds the model, without the "
        "optimiser, scheduler and RNG states a resumed run needs (about a third of a training checkpoint). "
        "predict and evaluate take the exported file like a checkpoint; fit --resume does not.",
    )
    export.add_argument("--checkpoint", required=True, help="a checkpoint fit wrote (<out-dir>/checkpoints/last.pt)")
    export.add_argument("--out", required=True, help="file to write (atomically), e.g. model.pt")
    export.set_defaults(func=_export)


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
        try:
            node[leaf] = _scalar(yaml.safe_load(value))
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {pair}: the value is not YAML ({getattr(exc, 'problem', exc)})") from exc
    return result


def _scalar(value: Any) -> Any:
    """YAML 1.1 reads 1e-3 as a string; people mean the number."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


# Checks before torch: files that are missing or of the wrong kind fail here, not after seconds of imports.


def check_manifests(manifests: list[str]) -> None:
    """Each local manifest exists and is Parquet: a directory of per-video parts, or one file (an object-store
    one is checked when it is read)."""
    from pipeline.io.parquet_tables import table_files  # pyarrow: after the cheap checks of the command line

    for manifest in manifests:
        if objectstore.is_remote(manifest):
            continue
        path = Path(manifest)
        if not path.exists():
            raise FileNotFoundError(f"manifest {path} does not exist")
        for part in table_files(path):
            if not _has_magic(Path(part), PARQUET_MAGIC, at_end=True):
                where = "" if part == path else f" (its part {Path(part).name})"
                raise ValueError(f"manifest {path} is not a Parquet file{where}")


def check_checkpoint(path: str | Path) -> None:
    """The file exists and is a torch archive (torch.save's zip format); its contents are checked on loading."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if not zipfile.is_zipfile(path):
        raise ValueError(f"checkpoint {path} is not a torch checkpoint file")


def _has_magic(path: Path, magic: bytes, at_end: bool = False) -> bool:
    with path.open("rb") as handle:
        if handle.read(len(magic)) != magic:
            return False
        if at_end:
            handle.seek(0, os.SEEK_END)
            if handle.tell() < 2 * len(magic):
                return False
            handle.seek(-len(magic), os.SEEK_END)
            return handle.read(len(magic)) == magic
    return True


def _check_inputs(inputs: list[str]) -> None:
    for name in inputs:
        if not Path(name).is_file():
            raise FileNotFoundError(f"input {name} does not exist")


def _check_positive(value: float | None, option: str) -> None:
    if value is not None and value <= 0:
        raise ValueError(f"{option} must be positive, got {value}")


def _fit(args: argparse.Namespace) -> int:
    overrides = overrides_from(args.set)
    if args.out_dir:
        overrides.setdefault("run", {})["out_dir"] = args.out_dir
    cfg = load_train_config(args.config, overrides)
    check_manifests(args.manifest)
    if args.resume and _last_checkpoint(cfg).exists():
        check_checkpoint(_last_checkpoint(cfg))
    from trainer.train import fit  # torch and timm load here, after the arguments are known to be sane

    result = fit(args.manifest, cfg, resume=args.resume)
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(result, indent=2))
    return 0


def _last_checkpoint(cfg: TrainConfig) -> Path:
    return Path(cfg.run.out_dir) / "checkpoints" / "last.pt"  # where trainer.train.fit keeps it


def _evaluate(args: argparse.Namespace) -> int:
    check_checkpoint(args.checkpoint)
    check_manifests(args.manifest)
    if args.ground_truth and not Path(args.ground_truth).is_dir():
        raise FileNotFoundError(f"ground truth directory {args.ground_truth} does not exist")
    _check_positive(args.max_batches, "--max-batches")
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
    check_checkpoint(args.checkpoint)
    _check_inputs(args.inputs)
    _check_positive(args.fps, "--fps")
    from pipeline.torch_compat import resolve_device
    from trainer.predict import predict_paths

    written = predict_paths(args.checkpoint, args.inputs, args.out, resolve_device(args.device), args.fps)
    print(f"wrote {len(written)} depth maps (+ colour previews) to {args.out}")
    return 0


def _export(args: argparse.Namespace) -> int:
    check_checkpoint(args.checkpoint)
    if Path(args.out).resolve() == Path(args.checkpoint).resolve():
        raise ValueError(f"--out {args.out} is the checkpoint itself: exporting over it would lose the optimiser state")
    from trainer.checkpoint import export_weights

    out = export_weights(args.checkpoint, args.out)
    before, after = Path(args.checkpoint).stat().st_size, out.stat().st_size
    mib = 2**20
    print(f"wrote {out}: the model's weights and config, {after / mib:.1f} MiB (the checkpoint: {before / mib:.1f})")
    return 0
