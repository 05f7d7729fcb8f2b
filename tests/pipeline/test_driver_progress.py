"""The driver's progress: one report per finished video, counts that end where the published tables do."""

from __future__ import annotations

import io
import logging
import sys

from pipeline.config import with_overrides
from pipeline.corpus.report import summarize
from pipeline.driver import CurateProgress, console_progress, curate_catalog
from pipeline.io.data_root import DataRoot
from pipeline.schema import PUBLISH_DROP_REASONS
from pipeline.sources.catalog import CatalogEntry, write_catalog


def _catalog(http_root: str, path):
    entries = [
        CatalogEntry(video_id=video_id, url=f"{http_root}/{name}", dataset="test", category="natural")
        for video_id, name in [("walk", "walk.mp4"), ("cut", "cut.mp4"), ("missing", "missing.mp4")]
    ]
    catalog = write_catalog(entries, path)
    with open(catalog, "a", encoding="utf-8") as fh:
        fh.write(f",walk,{http_root}/walk.mp4,test,natural,,mono,,,,,,,,,\n")  # a repeated id: a catalog error
    return catalog


def test_progress_counts_every_video_once_and_ends_at_the_published_counts(http_root, small_config, tmp_path, caplog):
    catalog = _catalog(http_root, tmp_path / "catalog.csv")
    root = DataRoot(tmp_path / "root")
    seen: list[CurateProgress] = []
    result = curate_catalog(catalog, root, with_overrides(small_config, {"run": {"workers": 2}}), progress=seen.append)

    # The catalog error is a failure finished before the run: 4 in all, 1 failed from the start.
    assert [p.done for p in seen] == [2, 3, 4] and {p.total for p in seen} == {4}
    assert [p.frames_decoded for p in seen] == sorted(p.frames_decoded for p in seen)
    last = seen[-1]
    summary = summarize(root)["counts"]
    assert (last.done - last.failed, last.failed) == (summary["videos"]["ok"], summary["videos"]["failed"]) == (2, 2)
    counts = result.description["counts"]
    assert last.frames_decoded == counts["frames_decoded"] > 0
    # Ingest's kept frames: publish's corpus-level drops (cross-video duplicates here) come off them.
    assert last.frames_kept == counts["frames_kept"] + sum(counts["dropped"][r] for r in PUBLISH_DROP_REASONS)
    assert last.eta_s == 0 and last.line().startswith("[4/4 videos, 2 failed] ")

    # A rerun skips every video and ends at the same counts, in log lines when stderr is no terminal.
    with caplog.at_level(logging.INFO, logger="depthcurate"):
        curate_catalog(catalog, root, small_config)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("[")]
    assert len(lines) == 3 and lines[-1].split(" ETA ")[0] == last.line().split(" ETA ")[0]


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_progress_is_a_bar_on_stderr(monkeypatch):
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    with console_progress(videos=2, catalog_errors=1) as show:
        show(CurateProgress(done=2, failed=1, total=3, frames_decoded=40, frames_kept=12, eta_s=5.0))
        show(CurateProgress(done=3, failed=2, total=3, frames_decoded=40, frames_kept=12, eta_s=0.0))
    drawn = terminal.getvalue()
    assert "\r" in drawn and "3/3 videos" in drawn
    assert "2 failed, 40 frames decoded, 12 kept so far, ETA 0:00:00" in drawn
