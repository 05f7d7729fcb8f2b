"""What a user watches while `depthcurate curate` runs with stderr not a terminal (a pipe, a log file)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from pipeline.sources.catalog import CatalogEntry, write_catalog

DEPTHCURATE = str(Path(sys.executable).with_name("depthcurate"))
LINE = re.compile(r"\[(\d+)/(\d+) videos, (\d+) failed\] (\d+) frames decoded, (\d+) kept so far, ETA \d+:\d\d:\d\d$")


def test_curate_prints_a_progress_line_per_video_on_stderr(http_root, tmp_path):
    catalog = write_catalog(
        [
            CatalogEntry(video_id=video_id, url=f"{http_root}/{name}", dataset="cli", category="natural")
            for video_id, name in [("walk", "walk.mp4"), ("gone", "gone.mp4"), ("cut", "cut.mp4")]
        ],
        tmp_path / "catalog.csv",
    )
    config = tmp_path / "config.yaml"
    config.write_text("sample: {fps: 10, max_height: 96, trim: {head_s: 0.5, tail_s: 0.5}}\ndownload: {attempts: 1}\n")
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}  # the Prefect-free driver
    run = subprocess.run(
        [
            DEPTHCURATE,
            "curate",
            "--catalog",
            str(catalog),
            "--data-root",
            str(tmp_path / "root"),
            "--config",
            str(config),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    found = [LINE.search(line) for line in run.stderr.splitlines()]
    progress = [tuple(int(g) for g in m.groups()) for m in found if m]
    assert [(done, total, failed) for done, total, failed, _, _ in progress][-1] == (3, 3, 1)
    assert [done for done, *_ in progress] == [1, 2, 3]
    decoded = re.search(r"frames: (\d+) decoded", run.stdout)
    assert decoded and progress[-1][3] == int(decoded.group(1))  # the summary's count
    assert not LINE.search(run.stdout)  # stdout keeps only the summary
