"""The README's claims about a demo run, checked against one: the summary it prints and the files it writes."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline.corpus.report import format_summary, summarize
from pipeline.io.data_root import DataRoot

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
_PORT = re.compile(r"127\.0\.0\.1:\d+")


def _block(name: str) -> str:
    """The fenced block between `<!-- name ... -->` and `<!-- /name -->`."""
    match = re.search(rf"<!-- {name}[^>]*-->\n```\n(.*?)\n```\n<!-- /{name} -->", README, re.S)
    assert match, f"README.md has no {name} block"
    return match.group(1)


def _layout() -> list[tuple[str, ...]]:
    """The path patterns of README's "What comes out" block, as segments; a trailing "/" covers all below."""
    section = README[README.index("## What comes out") :]
    start = section.index("```\ndata_root/\n") + len("```\ndata_root/\n")
    block = section[start : section.index("\n```", start)]
    paths = [line.split()[0] for line in block.splitlines() if line.startswith("  ") and not line.startswith("   ")]
    return [tuple(path.rstrip("/").split("/")) + (("/",) if path.endswith("/") else ()) for path in paths]


def _segment(pattern: str) -> re.Pattern[str]:
    """`<name>` stands for any text within one path segment, `NNNNN` for digits."""
    parts = re.split(r"(<[^>]+>|NNNNN)", pattern)
    return re.compile(
        "".join("[^/]+" if p.startswith("<") else r"\d+" if p == "NNNNN" else re.escape(p) for p in parts)
    )


def _listed(path: Path, root: Path, layout: list[tuple[str, ...]]) -> bool:
    """Whether `path` is a listed file, a folder on the way to one, or inside a folder listed as a whole."""
    parts = path.relative_to(root).parts
    for pattern in layout:
        whole = pattern[-1] == "/"
        names = pattern[:-1] if whole else pattern
        depth = min(len(parts), len(names))
        if not all(_segment(p).fullmatch(s) for p, s in zip(names[:depth], parts[:depth])):
            continue
        if (whole and len(parts) >= len(names)) or (len(parts) < len(names) and path.is_dir()):
            return True
        if len(parts) == len(names) and path.is_file():
            return True
    return False


@pytest.mark.slow
def test_the_readme_shows_the_demo_summary_a_demo_run_prints(demo_run):
    actual = format_summary(summarize(DataRoot(demo_run))).replace(str(DataRoot(demo_run).root), "data/demo")
    shown = _block("demo-summary")
    assert _PORT.sub("127.0.0.1:PORT", shown) == _PORT.sub("127.0.0.1:PORT", actual), (
        f"README.md's demo summary is out of date; the demo prints (paths shortened):\n{actual}"
    )


@pytest.mark.slow
def test_the_readme_shows_the_metrics_make_demo_prints(demo_run, tmp_path):
    """`make demo`'s training and evaluation (the same commands) on a demo run: the table the README shows."""
    manifest = str(demo_run / "manifest" / "demo.parquet")
    trainer = [sys.executable, "-m", "trainer"]
    config = ["--config", str(REPO / "trainer" / "configs" / "demo.yaml")]
    subprocess.run([*trainer, "fit", "--manifest", manifest, *config, "--out-dir", str(tmp_path)], check=True)
    checkpoint = str(tmp_path / "checkpoints" / "last.pt")
    evaluation = subprocess.run(
        [*trainer, "evaluate", "--checkpoint", checkpoint, "--manifest", manifest],
        check=True,
        capture_output=True,
        text=True,
    )
    printed = "\n".join(line.rstrip() for line in evaluation.stdout.strip().splitlines())
    assert _block("demo-metrics") == printed, f"README.md's demo metrics are out of date; make demo prints:\n{printed}"


@pytest.mark.slow
def test_every_file_and_folder_of_a_demo_run_is_in_the_readme_layout(demo_run):
    layout = _layout()
    unlisted = [
        p.relative_to(demo_run).as_posix() for p in sorted(demo_run.rglob("*")) if not _listed(p, demo_run, layout)
    ]
    assert unlisted == []


@pytest.mark.slow
def test_the_video_counts_differ_by_the_catalog_errors_as_the_readme_says(demo_run):
    """dataset.json counts records; the videos table (and the summary) count catalog errors too."""
    records = json.loads((demo_run / "dataset.json").read_text())["counts"]["videos"]
    statuses = pq.read_table(DataRoot(demo_run).videos_table, columns=["status"])["status"].to_pylist()
    assert sum(records.values()) + statuses.count("catalog_error") == len(statuses)
    assert "catalog_error" not in records
    summary = summarize(DataRoot(demo_run))["counts"]["videos"]
    assert summary["ok"] + summary["failed"] == len(statuses) == 15 and sum(records.values()) == 14
    assert "adds up to 14" in README and "has 15 rows" in README


def test_the_layout_patterns_match_what_they_describe(tmp_path):
    layout = _layout()
    (tmp_path / "shards" / "demo" / "walk").mkdir(parents=True)
    (tmp_path / "shards" / "demo" / "walk" / "part-00000.parquet").write_bytes(b"")
    (tmp_path / "runs" / "demo" / "checkpoints").mkdir(parents=True)
    (tmp_path / "shards" / "stray.txt").write_bytes(b"")
    (tmp_path / "dataset.json").mkdir()  # a folder where the layout has a file
    listed = {p.relative_to(tmp_path).as_posix(): _listed(p, tmp_path, layout) for p in tmp_path.rglob("*")}
    assert listed == {
        "shards": True,
        "shards/demo": True,
        "shards/demo/walk": True,
        "shards/demo/walk/part-00000.parquet": True,
        "runs": True,
        "runs/demo": True,
        "runs/demo/checkpoints": True,
        "shards/stray.txt": False,
        "dataset.json": False,
    }
