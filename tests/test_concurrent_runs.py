"""Two `depthcurate curate` runs on one data root, overlapping: nothing lost, nothing damaged (leases)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline.sources.catalog import CatalogEntry, write_catalog
from pipeline.synthetic.demo import demo_digest

DEPTHCURATE = str(Path(sys.executable).with_name("depthcurate"))
REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def inputs(video_dir, tmp_path_factory) -> tuple[Path, Path]:
    """A catalog of eight local videos long enough (18 s, 640x384) that two runs meet on the same video."""
    work = tmp_path_factory.mktemp("concurrent")
    sources = work / "sources"
    sources.mkdir()
    names = []
    for name in ("walk.mp4", "cut.mp4"):
        long = sources / f"long_{name}"
        subprocess.run(
            ["ffmpeg", "-loglevel", "error", "-stream_loop", "2", "-i", str(video_dir / name), "-vf", "scale=640:384",
             "-c:v", "libx264", "-preset", "ultrafast", str(long)],
            check=True,
        )  # fmt: skip
        names.append(long)
    entries = [
        CatalogEntry(video_id=f"v{i}", url=str(names[i % 2]), dataset="test", category="natural") for i in range(8)
    ]
    catalog = write_catalog(entries, work / "catalog.csv")
    config = work / "config.yaml"
    config.write_text(
        "sample: {fps: 10, max_height: 384, trim: {head_s: 0.5, tail_s: 0.5}, decimate: null}\n"
        "split: {gap_frames: 2}\nrun: {workers: 1, lease_heartbeat_s: 0.5, lease_stale_s: 3}\n"
        f"download: {{attempts: 1, local_roots: ['{sources}']}}\n"
        # Small row groups: a shard's temporary exists for most of a video's work, where the other run can meet it.
        "write: {row_group_bytes: 65536, part_bytes: 1048576}\n"
    )
    return catalog, config


def _start(catalog: Path, config: Path, root: Path) -> subprocess.Popen:
    env = {**os.environ, "PREFECT_API_URL": ""}  # the Prefect-free driver
    env.pop("PREFECT_API_URL")
    return subprocess.Popen(
        [DEPTHCURATE, "curate", "--catalog", str(catalog), "--data-root", str(root), "--config", str(config)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _finish(process: subprocess.Popen) -> str:
    out, _ = process.communicate(timeout=300)
    assert process.returncode == 0, out
    return out


@pytest.fixture(scope="module")
def clean(inputs, tmp_path_factory) -> dict[str, str]:
    """The digest of one run alone."""
    root = tmp_path_factory.mktemp("clean") / "root"
    _finish(_start(*inputs, root))
    return _masked(demo_digest(root))


def _masked(digest: dict[str, str]) -> dict[str, str]:
    return {name: value for name, value in digest.items() if not name.startswith("state/")}


def _all_ok(root: Path) -> None:
    videos = pq.read_table(root / "stats" / "videos.parquet").to_pylist()
    assert sorted(v["video_id"] for v in videos) == [f"v{i}" for i in range(8)]
    assert {v["status"] for v in videos} == {"ok"}


@pytest.mark.parametrize("offset_s", [0, 1, 3, 5])
def test_two_runs_started_apart_end_as_one_clean_run(inputs, clean, tmp_path, offset_s):
    root = tmp_path / "root"
    first = _start(*inputs, root)
    time.sleep(offset_s)
    second = _start(*inputs, root)
    outputs = [_finish(first), _finish(second)]
    _all_ok(root)
    assert demo_digest(root) == clean, outputs
    assert not list(root.rglob(".*.tmp-*")), "temporaries left behind"
    assert not list((root / "state" / "leases").rglob("*.lease")), "leases left behind"


def test_a_run_killed_mid_way_is_finished_by_the_next_one(inputs, clean, tmp_path):
    root = tmp_path / "root"
    first = _start(*inputs, root)
    second = _start(*inputs, root)
    deadline = time.monotonic() + 120
    while not list((root / "shards" / "test").glob("*/*.parquet")) and time.monotonic() < deadline:
        time.sleep(0.1)  # the first shard is being written: both runs are mid-way
    first.send_signal(signal.SIGKILL)
    first.wait()
    _finish(second)
    # The killed run's leases go stale after run.lease_stale_s; a rerun then takes over what it held.
    time.sleep(4)
    _finish(_start(*inputs, root))
    _all_ok(root)
    assert demo_digest(root) == clean
