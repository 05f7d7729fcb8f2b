"""`depthcurate`: the command line for people who do not run a Prefect server."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from pathlib import Path
from typing import NoReturn

from flows.outcomes import EXIT_CODES_HELP, EXIT_RETRYABLE, EXIT_STRICT, EXIT_USAGE, run_outcome
from pipeline import package_version
from pipeline.config import ConfigError, CurateConfig, load_config
from pipeline.corpus.report import format_summary, recipe_report, summarize
from pipeline.corpus.verify import verify_dataset
from pipeline.errors import DiskFull
from pipeline.io import objectstore
from pipeline.io.data_root import DataRoot
from pipeline.sources.catalog import CatalogError, import_slowtv, read_catalog, write_catalog

PREFECT_HELP = "run the Prefect flow (a temporary Prefect server when PREFECT_API_URL is not set)"
STRICT_HELP = f"exit with code {EXIT_STRICT} when any video failed, permanent failures and catalog errors included"
DEBUG_HELP = "show the traceback of an error instead of one line"


class _HelpFormatter(argparse.HelpFormatter):
    """Wraps descriptions as usual; text with line breaks of its own (the exit codes epilog) keeps them."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" not in text:
            return super()._fill_text(text, width, indent)
        return "\n".join(indent + line for line in text.splitlines())


class _Failed(Exception):
    """An error to report in one line (the whole traceback with --debug), and the exit code it ends with."""

    def __init__(self, error: Exception, code: int) -> None:
        super().__init__(str(error))
        self.error, self.code = error, code


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    _add_debug(parser)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    error: Exception
    try:
        return args.func(args)
    except (CatalogError, ConfigError) as exc:  # the user's input: nothing ran
        error, code = exc, EXIT_USAGE
    except _Failed as failed:
        error, code = failed.error, failed.code
    if getattr(args, "debug", False):
        raise error  # outside the except blocks, so the traceback is the error's own
    for line in str(error).splitlines():  # one line per problem (a config may have several)
        print(f"depthcurate: {line}", file=sys.stderr)
    return code


def _add_debug(parser: argparse.ArgumentParser, default: object = False) -> None:
    """--debug before the command or after it: on the top parser and every command's (whose default must not
    overwrite a --debug given before the command, hence SUPPRESS there)."""
    parser.add_argument("--debug", action="store_true", default=default, help=DEBUG_HELP)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for command in action.choices.values():
                _add_debug(command, argparse.SUPPRESS)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="depthcurate", description=__doc__.split(":", 1)[1].strip())
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    demo = commands.add_parser(
        "demo",
        help="render a demo catalog, serve it on loopback, curate it",
        description="Render a small catalog of synthetic videos (good and deliberately "
        "broken ones), serve it from a loopback HTTP server and curate it for real: "
        "yt-dlp downloads, ffmpeg decodes, Parquet comes out. Its broken videos fail for good, "
        f"so it exits 0 (or {EXIT_STRICT} with --strict).",
        epilog=EXIT_CODES_HELP,
        formatter_class=_HelpFormatter,
    )
    demo.add_argument("--data-root", default="data/demo", help="output directory (default: data/demo)")
    demo.add_argument("--prefect", action="store_true", help=PREFECT_HELP)
    demo.add_argument("--strict", action="store_true", help=STRICT_HELP)
    demo.set_defaults(func=_demo)

    curate = commands.add_parser(
        "curate",
        help="curate a catalog into a data root",
        description="Curate a catalog: with the Prefect-free driver (a local thread pool, "
        "no server start), or as the curate flow when PREFECT_API_URL names a server, the "
        "config runs on Ray, or --prefect is given. Both write the same bytes, and both exit with the "
        "codes below.",
        epilog=EXIT_CODES_HELP,
        formatter_class=_HelpFormatter,
    )
    curate.add_argument("--catalog", required=True, help="catalog CSV (see manifests/sources/README.md)")
    curate.add_argument("--data-root", required=True, help="output directory")
    curate.add_argument("--config", help="YAML config (see configs/); defaults from pipeline/config.py")
    curate.add_argument("--limit", type=_positive_int, help="only the first N catalog entries")
    curate.add_argument(
        "--prefect", action="store_true", help="run the Prefect flow (a temporary server if none is set)"
    )
    curate.add_argument("--strict", action="store_true", help=STRICT_HELP)
    curate.set_defaults(func=_curate)

    dedup = commands.add_parser(
        "dedup",
        help="re-run the corpus CLIP pass (tags, junk, SemDeDup) on a dataset",
        description="Re-run the corpus-level CLIP curation over an existing dataset with a "
        "new threshold: embeddings are reused or computed from the shards "
        "(nothing is downloaded or decoded), then the manifests, stats and "
        "dataset.json are rewritten. Settings come from the dataset's "
        "dataset.json; --config supplies only its clip section.",
    )
    dedup.add_argument("--data-root", required=True, help="a published dataset")
    dedup.add_argument(
        "--epsilon",
        type=float,
        help="SemDeDup: duplicates have cosine similarity > 1 - epsilon (default: the config's)",
    )
    dedup.add_argument("--config", help="YAML whose clip section (model, checkpoint, prompts, thresholds) is used")
    dedup.set_defaults(func=_dedup)

    catalog = commands.add_parser("catalog", help="catalog tools").add_subparsers(
        title="catalog commands", metavar="COMMAND"
    )
    slowtv = catalog.add_parser("import-slowtv", help="turn SlowTV's urls.txt + categories.txt into a catalog CSV")
    slowtv.add_argument("--urls", required=True, help="SlowTV urls.txt: one URL per line")
    slowtv.add_argument("--categories", required=True, help="SlowTV categories.txt: one category per line")
    slowtv.add_argument("--dataset", default="slowtv", help="dataset name for the rows (default: slowtv)")
    slowtv.add_argument("-o", "--output", required=True, help="catalog CSV to write")
    slowtv.set_defaults(func=_import_slowtv)

    recipe = commands.add_parser("recipe", help="share a dataset as a recipe; rebuild one").add_subparsers(
        title="recipe commands", metavar="COMMAND"
    )
    export = recipe.add_parser(
        "export",
        help="write a dataset's recipe: catalog rows, config, kept frames with their hashes",
        description="Write a small file from which others rebuild this dataset from its sources: the catalog rows "
        "of its videos (trims as applied), the resolved config, and per video the kept frame indices with their "
        "pHash and a digest of the frame as decoded. No frame is in it. A name ending in .gz is compressed.",
    )
    export.add_argument("--data-root", required=True, help="a published data root")
    export.add_argument("--catalog", required=True, help="the catalog CSV the dataset was curated from")
    export.add_argument("-o", "--output", required=True, help="recipe file to write (.json or .json.gz)")
    export.set_defaults(func=_recipe_export)
    build = recipe.add_parser(
        "build",
        help="rebuild a recipe's dataset from its sources and report the frames that changed",
        description="Curate a recipe's catalog with its config, keeping exactly the frames it lists. Per video, "
        "frames that decode to other pixels now (the source was re-encoded, or another format was downloaded) or "
        "were never decoded are counted and listed instead of being replaced. Exit code 1 when any changed "
        "(3 when a video failed in a way that may go away, as for `depthcurate curate`).",
    )
    build.add_argument("recipe", help="a recipe file from `depthcurate recipe export`")
    build.add_argument("--data-root", required=True, help="output directory")
    build.add_argument("--prefect", action="store_true", help=PREFECT_HELP)
    build.set_defaults(func=_recipe_build)

    stats = commands.add_parser(
        "stats",
        help="summary of a dataset: videos by status, frames, drops by reason",
        description="Summarise a published dataset from its stats tables and dataset.json: videos by status, "
        "frames decoded and kept, frames dropped by reason, and every failed video with its message.",
    )
    stats.add_argument("--data-root", required=True, help="a published data root (a directory or an s3:// URL)")
    stats.add_argument("--json", action="store_true", help="print JSON instead of a table")
    stats.set_defaults(func=_stats)

    verify = commands.add_parser(
        "verify",
        help="re-hash every file of a dataset against dataset.json",
        description="Check a published dataset against its dataset.json: every shard, table, frame part, video "
        "record, preview and camera file (size and sha256), schemas, row counts, and each record's counts against "
        "its parts. Prints one FAIL line per problem; exit code 1 when there is one.",
    )
    verify.add_argument("--data-root", required=True, help="a published data root (a directory or an s3:// URL)")
    verify.set_defaults(func=_verify)

    report = commands.add_parser(
        "report",
        help="write one self-contained HTML page about a dataset: funnel, tables, histograms, contact sheets",
        description="Write report.html about a published dataset: the drop funnel by reason per dataset, tables "
        "per video and category, histograms of sharpness, motion, LR pass fraction and disparity range, and each "
        "video's contact sheet with captions (frame, kept or why not) and, for stereo, a colour bar in pixels. "
        "One file with everything inlined: open it in any browser, offline.",
    )
    report.add_argument("--data-root", required=True, help="a published data root (a directory or an s3:// URL)")
    report.add_argument("--out", help="HTML file to write (default: report.html at the top of the data root)")
    report.set_defaults(func=_report)

    doctor = commands.add_parser(
        "doctor",
        help="check this machine: ffmpeg, yt-dlp and its JS runtime, torch, Prefect, the data root",
        description="Check what the pipeline needs here: ffmpeg/ffprobe and codecs, yt-dlp (age, EJS scripts, "
        "JS runtime), torch, the Prefect API in PREFECT_API_URL, the data root, optional parts. "
        "Exits 1 when a blocker fails.",
    )
    doctor.add_argument("--data-root", default="data", help="data root to check (default: data)")
    doctor.add_argument("--config", help="YAML config whose download section is used (JS runtime)")
    doctor.add_argument("--json", action="store_true", help="print JSON instead of a table")
    doctor.set_defaults(func=_doctor)
    return parser


def _run_flow(
    catalog: str | None,
    data_root: str,
    config: str | None,
    limit: int | None,
    prefect: bool,
    strict: bool = False,
) -> int:
    """Curate `catalog`, or the embedded demo when it is None: through the Prefect flow when a server is set
    (PREFECT_API_URL), the config runs on Ray, or `prefect` asks for it; otherwise with the Prefect-free driver,
    which writes the same bytes without the ~10 s of a temporary Prefect server.

    Returns the exit code (flows.outcomes), from the published stats/videos.parquet: the same whichever ran."""
    cfg = _checked_inputs(catalog, data_root, config)
    from pipeline.driver import curate_catalog
    from pipeline.synthetic.demo import demo_catalog

    try:
        if prefect or os.environ.get("PREFECT_API_URL") or cfg.run.executor != "local":
            os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
            from flows.curate import curate  # Prefect is slow to import; only the flow path needs it

            curate(catalog=catalog, data_root=data_root, limit=limit, config=config, demo=catalog is None)
        else:
            logging.basicConfig(
                level=logging.INFO, format="%(asctime)s %(levelname)-7s %(message)s", datefmt="%H:%M:%S"
            )
            root = DataRoot(data_root)
            with demo_catalog(root) if catalog is None else contextlib.nullcontext(Path(catalog)) as path:
                curate_catalog(path, root, cfg, limit=limit)
    except DiskFull as exc:  # publish found no room: the videos are recorded, a rerun with space publishes
        print(f"depthcurate: {exc}", file=sys.stderr)
        return EXIT_RETRYABLE
    print(format_summary(summarize(DataRoot(data_root))))
    outcome = run_outcome(DataRoot(data_root))
    explanation = outcome.explain(strict)
    if explanation:
        print(explanation, file=sys.stderr)
    return outcome.exit_code(strict)


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")  # argparse's one line, exit 2
    return int(text)


def _checked_inputs(catalog: str | None, data_root: str, config: str | None) -> CurateConfig:
    """The config, after checking what a run needs before the driver or Prefect is imported (a mistake is one line
    and exit code 2): the config's YAML and keys, the catalog as a whole (bad rows are the run's to record), and
    that the data root is not a file."""
    if catalog is None:
        from pipeline.synthetic.demo import CONFIG_PATH as DEMO_CONFIG

        cfg = load_config(config or DEMO_CONFIG)
    else:
        cfg = load_config(config)
        read_catalog(catalog)
    if not objectstore.is_remote(data_root) and Path(data_root).exists() and not Path(data_root).is_dir():
        _error(NotADirectoryError(f"data root {data_root} is a file, not a directory"), EXIT_USAGE)
    return cfg


def _dedup(args: argparse.Namespace) -> int:
    from pipeline.corpus.description import dedup_config

    root = DataRoot(args.data_root)
    try:
        dedup_config(root, args.config, args.epsilon)  # a clear error here, not a failed flow run
    except ConfigError as exc:
        hint = "" if args.config else "; pass --config with a YAML whose clip section sets one"
        return _error(ConfigError(f"{exc}{hint}"), EXIT_USAGE)
    except (FileNotFoundError, ValueError) as exc:
        return _error(exc, EXIT_USAGE)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from flows.dedup import dedup

    dedup(data_root=args.data_root, epsilon=args.epsilon, config=args.config)
    print(format_summary(summarize(root)))
    return 0


def _demo(args: argparse.Namespace) -> int:
    code = _run_flow(None, args.data_root, None, None, args.prefect, args.strict)
    print(f"\nThe demo dataset is in {DataRoot(args.data_root).name}: shards/, manifest/, stats/, dataset.json.")
    return code


def _curate(args: argparse.Namespace) -> int:
    if not Path(args.catalog).is_file():
        return _error(FileNotFoundError(f"catalog {args.catalog} not found"), EXIT_USAGE)
    return _run_flow(args.catalog, args.data_root, args.config, args.limit, args.prefect, args.strict)


def _recipe_export(args: argparse.Namespace) -> int:
    from pipeline.sources.recipe import export_recipe, write_recipe

    try:
        recipe = export_recipe(DataRoot(args.data_root), args.catalog, package_version())
    except (FileNotFoundError, ValueError, KeyError) as exc:
        return _error(exc)
    write_recipe(recipe, args.output)
    frames = sum(len(v.frame_index) for v in recipe.videos.values())
    print(f"wrote {args.output}: {len(recipe.videos)} videos, {frames} frames")
    return 0


def _recipe_build(args: argparse.Namespace) -> int:
    import tempfile

    import yaml

    from pipeline.sources.recipe import rebuild_inputs

    with tempfile.TemporaryDirectory(prefix="depthcurate-recipe-") as tmp:
        try:
            catalog, config = rebuild_inputs(args.recipe, Path(tmp))
        except (OSError, ValueError) as exc:
            return _error(exc)
        config_path = Path(tmp) / "config.yaml"
        config_path.write_text(yaml.safe_dump(config))
        code = _run_flow(str(catalog), args.data_root, str(config_path), None, args.prefect)
    report = recipe_report(DataRoot(args.data_root))
    print(report.text)
    return code or (1 if report.changed else 0)


def _import_slowtv(args: argparse.Namespace) -> int:
    try:
        entries = import_slowtv(args.urls, args.categories, dataset=args.dataset)
    except CatalogError as exc:
        return _error(exc)
    write_catalog(entries, args.output)
    print(f"wrote {len(entries)} entries to {args.output}")
    return 0


def _doctor(args: argparse.Namespace) -> int:
    from pipeline.doctor import as_json, has_blocker, run_checks

    try:
        download = load_config(args.config).download
    except ConfigError as exc:
        return _error(exc)
    checks = run_checks(args.data_root, download)
    if args.json:
        print(json.dumps(as_json(checks), indent=2))
    else:
        width = max(len(c.name) for c in checks)
        for check in checks:
            print(f"{check.status.upper():<5} {check.name:<{width}}  {check.detail}")
    return 1 if has_blocker(checks) else 0


def _error(exc: Exception, code: int = 1) -> NoReturn:
    """End the command with `exc` as one line on stderr (its traceback with --debug) and exit code `code`."""
    raise _Failed(exc, code) from exc


def _stats(args: argparse.Namespace) -> int:
    try:
        summary = summarize(DataRoot(args.data_root))
    except (FileNotFoundError, ValueError) as exc:
        return _error(exc)
    print(json.dumps(summary, indent=2, default=str) if args.json else format_summary(summary))
    return 0


def _verify(args: argparse.Namespace) -> int:
    try:
        problems = verify_dataset(DataRoot(args.data_root))
    except (FileNotFoundError, ValueError) as exc:
        return _error(exc)
    for problem in problems:
        print(f"FAIL {problem}")
    if problems:
        return 1
    print(f"ok: every file under {DataRoot(args.data_root).name} that dataset.json lists matches it")
    return 0


def _report(args: argparse.Namespace) -> int:
    from pipeline.corpus.html_report import write_report

    try:
        link = write_report(DataRoot(args.data_root), args.out)
    except (FileNotFoundError, ValueError) as exc:
        return _error(exc)
    print(f"wrote {link}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
