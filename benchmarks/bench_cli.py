"""The whole `depthcurate curate` command against ffmpeg decode-only on one long clip. Prints JSON.

    python -m benchmarks.bench_cli [--seconds 180] [--workdir DIR] [--out FILE]

A user's view of speed: one 1280x720 30 fps H.264 clip (the synthetic scene looped, as bench_sampling), in a
one-row catalog of a local file, curated by the CLI as a user runs it, start-up, probe, sampling, publish and
exit included. Back to back on the same file:
  - decode-only: `ffmpeg -i clip -f null -` (the system's ffmpeg);
  - the CLI with the Prefect-free driver (what `depthcurate curate` runs without a server);
  - the CLI with `--prefect` (a temporary Prefect server, the flow and its tasks), when --with-prefect is given;
  - the command's fixed cost: the same CLI on a 2-second clip, most of which is start-up and publish.
Reported as wall seconds and as ratios to decode-only (higher is faster; 1.0 would be as fast as decoding).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.bench_sampling import decode_only, make_video
from benchmarks.common import REPO, Stopwatch, add_out_argument, add_workdir_argument, emit, meta
from pipeline.sources.catalog import CatalogEntry, write_catalog

DEPTHCURATE = str(Path(sys.executable).with_name("depthcurate"))


def curate_command(video: Path, work: Path, *extra: str) -> dict[str, Any]:
    """Run `depthcurate curate` on a one-row catalog of `video`; its wall time and exit code."""
    work.mkdir(parents=True, exist_ok=True)
    catalog = write_catalog(
        [CatalogEntry(video_id=video.stem, url=str(video), dataset="bench", category="natural")],
        work / "catalog.csv",
    )
    config = work / "config.yaml"
    config.write_text(f"download: {{local_roots: ['{video.parent}']}}\n")
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    command = [DEPTHCURATE, "curate", "--catalog", str(catalog), "--data-root", str(work / "data")]
    with Stopwatch() as watch:
        done = subprocess.run(
            [*command, "--config", str(config), *extra], cwd=REPO, env=env, capture_output=True, text=True
        )
    if done.returncode != 0:
        raise RuntimeError(f"depthcurate curate exited {done.returncode}: {done.stderr[-2000:]}")
    return {"wall_s": round(watch.s, 2), "exit_code": done.returncode}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=180.0, help="length of the clip (default: 3 minutes)")
    parser.add_argument("--with-prefect", action="store_true", help="also time `depthcurate curate --prefect`")
    add_workdir_argument(parser, "the rendered clips")
    add_out_argument(parser)
    args = parser.parse_args()
    run_meta = meta("prefect")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        clip = make_video(workdir, f"cli_{int(args.seconds)}s", 1280, 720, args.seconds)
        short = make_video(workdir, "cli_2s", 1280, 720, 2.0)
        decode_s = decode_only(clip)
        driver = curate_command(clip, Path(tmp) / "driver")
        fixed = curate_command(short, Path(tmp) / "fixed")
        result: dict[str, Any] = {
            "video": f"1280x720 H.264 30 fps synthetic, {args.seconds:g} s",
            "decode_only_s": round(decode_s, 2),
            "cli_driver": driver,
            "ratio_cli_driver_to_decode": round(decode_s / driver["wall_s"], 3),
            "cli_on_2s_clip_s": fixed["wall_s"],
        }
        if args.with_prefect:
            flow = curate_command(clip, Path(tmp) / "prefect", "--prefect")
            result["cli_prefect"] = flow
            result["ratio_cli_prefect_to_decode"] = round(decode_s / flow["wall_s"], 3)
    emit({"benchmark": "cli", "result": result}, args.out, run_meta)


if __name__ == "__main__":
    main()
