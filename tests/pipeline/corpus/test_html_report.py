"""`depthcurate report`'s page: its numbers against the stats tables, and the page as headless Chromium renders it."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.config import CurateConfig
from pipeline.corpus.description import read_description
from pipeline.corpus.html_report import (
    KEPT,
    DatasetReport,
    VideoSummary,
    build_report,
    funnel_steps,
    preview_frames,
    render_html,
    write_report,
)
from pipeline.driver import curate_entries
from pipeline.io.data_root import WORK_DIR_ENV, DataRoot
from pipeline.schema import DROP_REASONS, PUBLISH_DROP_REASONS
from pipeline.sources.catalog import CatalogEntry
from pipeline.video.previews import GAP_PX

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium on PATH (scripts/setup.sh installs Debian's chromium package)"
)
TILE_HEIGHT = 192  # train_root's views are 160x96 (mono) and 320x192 (stereo): sheet tiles of 320x192

# Injected before the page's own content: every script error and every resource that fails to load or decode
# (an <img> or an SVG <image> with broken data) is written into the DOM once the page has loaded.
ERROR_HOOK = """<script>
window.__errors = [];
addEventListener('error', function (e) {
  var t = e.target;
  window.__errors.push(t && t !== window ? 'resource ' + t.tagName : 'script ' + e.message);
}, true);
addEventListener('load', function () {
  var p = document.createElement('pre');
  p.id = 'page-errors';
  p.textContent = JSON.stringify(window.__errors);
  document.body.appendChild(p);
});
</script>"""


@pytest.fixture(scope="module")
def report_root(train_root, http_root, tmp_path_factory) -> DataRoot:
    """The trainer's small dataset (two mono videos, one stereo) plus a video whose download fails (HTTP 404),
    published with the dataset's own config."""
    root = DataRoot(tmp_path_factory.mktemp("report") / "root")
    shutil.copytree(train_root, root.root)
    cfg = CurateConfig.model_validate(read_description(root)["config"])
    missing = CatalogEntry(video_id="gone", url=f"{http_root}/gone.mp4", dataset="mono", category="driving")
    (outcome,) = curate_entries([missing], root, cfg).videos
    assert outcome.status == "download_failed"
    return root


def _videos(root: DataRoot) -> list[dict]:
    return pq.read_table(root.videos_table).to_pylist()


def test_numbers_are_those_of_the_stats_tables(report_root):
    report = build_report(report_root)
    videos = _videos(report_root)
    assert report.frames_kept == sum(v["frames_kept"] or 0 for v in videos) > 0
    assert report.frames_decoded == sum(v["frames_decoded"] or 0 for v in videos)
    assert (report.videos_ok, report.videos_failed) == (3, 1)
    assert [(v.video_id, v.status, v.error, v.frames_decoded, v.frames_kept) for v in report.videos] == [
        (v["video_id"], v["status"], v["error"], v["frames_decoded"] or 0, v["frames_kept"] or 0) for v in videos
    ]
    categories = pq.read_table(report_root.categories_table).to_pylist()
    for dataset in ("mono", "stereo"):
        steps = dict(funnel_steps(report.videos, dataset))
        mine = [c for c in categories if c["dataset"] == dataset]
        assert steps["decoded"] == sum(c["frames_decoded"] for c in mine)
        assert steps[KEPT] == sum(c["frames_kept"] for c in mine) > 0
        drops = {r: sum(c[f"dropped_{r}"] for c in mine) for r in DROP_REASONS}
        assert {k: n for k, n in steps.items() if k not in ("decoded", KEPT)} == {r: n for r, n in drops.items() if n}
        assert steps["decoded"] - sum(drops.values()) == steps[KEPT]  # every dropped frame has its reason


def test_histograms_count_every_measured_frame(report_root):
    frames = pq.read_table(report_root.frames_table).to_pylist()
    for histogram in build_report(report_root).histograms:
        measured = [f for f in frames if f[histogram.column] is not None]
        assert sum(histogram.measured) == len(measured) > 0, histogram.column
        assert sum(histogram.kept) == sum(f["kept"] for f in measured)
        assert all(k <= m for k, m in zip(histogram.kept, histogram.measured))


def test_contact_sheets_are_captioned_with_their_frames_and_every_frame_is_in_the_strip(report_root):
    report = build_report(report_root)
    frames = pq.read_table(report_root.frames_table).to_pylist()
    assert sorted((s.dataset, s.video_id) for s in report.sheets) == [
        ("mono", "drive"),
        ("mono", "walk"),
        ("stereo", "pair"),
    ]
    for sheet in report.sheets:
        width, height = sheet.size
        assert height == GAP_PX + len(sheet.rows) * (TILE_HEIGHT + GAP_PX)  # one caption per row of tiles
        assert width == GAP_PX + (3 if sheet.stereo else 1) * (320 + GAP_PX)
        mine = [f for f in frames if (f["dataset"], f["video_id"]) == (sheet.dataset, sheet.video_id)]
        by_ingest = [f for f in mine if f["kept"] or f["drop_reason"] in PUBLISH_DROP_REASONS]
        first_per_clip = {}
        for frame in sorted(by_ingest, key=lambda f: f["frame_index"]):
            first_per_clip.setdefault(frame["clip_id"], frame["frame_index"])
        assert [(r.clip_id, r.frame_index) for r in sheet.rows] == sorted(first_per_clip.items())[:6]
        assert all(r.outcome == KEPT for r in sheet.rows)
        strip: Counter[str] = Counter()
        for part in sheet.strip:
            strip.update(dict(part.outcomes))
        assert strip == Counter(KEPT if f["kept"] else f["drop_reason"] for f in mine)  # every decoded frame
    (stereo,) = [s for s in report.sheets if s.stereo]
    for row in stereo.rows:
        assert row.colour_range_px is not None and row.disp_range_px is not None
        low, high = row.colour_range_px
        # The colours span the 2nd to 98th percentile of the valid pixels; disp_range_px the 1st to 99th.
        assert 0 < high - low <= row.disp_range_px + 1e-3


def test_a_frame_publish_dropped_since_stays_on_the_sheet_with_its_reason():
    """The sheet holds the first frame ingest kept per clip; a later cross-video drop does not remove it there."""
    rows = pa.Table.from_pylist(
        [
            {"frame_index": 0, "clip_id": 0, "kept": False, "drop_reason": "dark"},
            {"frame_index": 1, "clip_id": 0, "kept": False, "drop_reason": "duplicate_cross_video"},
            {"frame_index": 2, "clip_id": 0, "kept": True, "drop_reason": None},
            {"frame_index": 3, "clip_id": 1, "kept": False, "drop_reason": "decimated"},
            {"frame_index": 4, "clip_id": 2, "kept": True, "drop_reason": None},
            {"frame_index": 5, "clip_id": 2, "kept": True, "drop_reason": None},
        ]
    )
    assert [row["frame_index"] for row in preview_frames(rows)] == [1, 4]
    assert [row["frame_index"] for row in preview_frames(rows, max_rows=1)] == [1]


def test_text_is_escaped():
    video = VideoSummary("mono", "x<y", "natural", "download_failed", '<script>alert("e")</script> & more', 0, 0, {})
    page = render_html(
        DatasetReport(
            videos_ok=0, videos_failed=1, frames_decoded=0, frames_kept=0, samples={}, videos=[video],
            categories=[], histograms=[], sheets=[], sheets_left_out=0,
        )
    )  # fmt: skip
    assert "<script>" not in page and "x<y" not in page
    assert "&lt;script&gt;alert(&quot;e&quot;)&lt;/script&gt; &amp; more" in page and "x&lt;y" in page


def test_the_page_is_self_contained_and_a_rerun_writes_the_same_bytes(report_root):
    link = write_report(report_root)
    path = report_root.root / "report.html"
    assert link == path.as_uri()
    page = path.read_text()
    references = re.findall(r"""(?:src|href)\s*=\s*["']([^"']*)""", page) + re.findall(r"url\(([^)]*)\)", page)
    assert references and all(r.startswith(("data:image/jpeg;base64,", "#")) for r in references), references
    assert "<script" not in page and "@import" not in page
    assert str(report_root.root) not in page  # nothing names where the data root is
    stamp = path.stat().st_mtime_ns
    write_report(report_root)
    assert path.stat().st_mtime_ns == stamp  # unchanged: not rewritten


def test_an_object_store_root_gives_the_same_page(report_root, s3_bucket, tmp_path, monkeypatch):
    """Read through DataRoot from a bucket (tables, previews, the shards' disparity) and written back into it."""
    import fsspec.core

    monkeypatch.setenv(WORK_DIR_ENV, str(tmp_path / "work"))
    url = f"{s3_bucket}/data"
    fs, prefix = fsspec.core.url_to_fs(url)
    for name in ("dataset.json", "stats", "previews", "shards", "manifest"):
        top = report_root.root / name
        for path in [top] if top.is_file() else sorted(p for p in top.rglob("*") if p.is_file()):
            fs.put_file(str(path), f"{prefix}/{path.relative_to(report_root.root).as_posix()}")
    remote = DataRoot(url)
    assert write_report(remote) == f"{url}/report.html"
    write_report(report_root, tmp_path / "local.html")
    assert remote.read_bytes(remote.root / "report.html") == (tmp_path / "local.html").read_bytes()


def _render(page: str, directory: Path) -> tuple[str, list[str]]:
    """The DOM headless Chromium builds from `page` (the error hook injected), and its console log lines."""
    path = directory / "page.html"
    path.write_text(page.replace("<head>", "<head>\n" + ERROR_HOOK, 1))
    result = subprocess.run(
        [
            str(CHROMIUM), "--headless", "--disable-gpu", "--no-sandbox", "--enable-logging=stderr", "--v=0",
            f"--user-data-dir={directory / 'profile'}", "--virtual-time-budget=5000", "--dump-dom", path.as_uri(),
        ],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    return result.stdout, [line for line in result.stderr.splitlines() if ":CONSOLE" in line]


def _page_errors(dom: str) -> list[str]:
    found = re.search(r'<pre id="page-errors">(.*?)</pre>', dom, re.S)
    assert found, "the page never finished loading"
    return json.loads(found.group(1).replace("&quot;", '"'))


@needs_chromium
def test_chromium_renders_the_report_without_an_error(report_root, tmp_path):
    write_report(report_root, tmp_path / "report.html")
    dom, console = _render((tmp_path / "report.html").read_text(), tmp_path)
    assert _page_errors(dom) == [] and console == []
    for section in ("funnel", "videos", "categories", "histograms", "sheets"):
        assert f'<section id="{section}">' in dom
    kept = sum(v["frames_kept"] or 0 for v in _videos(report_root))
    assert f'data-count="frames-kept">{kept}<' in dom
    assert len(re.findall(r"<image ", dom)) == 3  # the three contact sheets, decoded (else an error above)
    (stereo,) = [sheet for sheet in build_report(report_root).sheets if sheet.stereo]
    assert len(re.findall(r'<g class="colour-bar"', dom)) == len(stereo.rows) > 0
    assert "download_failed" in dom and ">gone<" in dom
    for column in ("sharpness", "motion", "lr_pass_fraction", "disp_range_px"):
        assert f'data-column="{column}"' in dom


@needs_chromium
def test_the_browser_check_sees_a_broken_image_and_a_script_error(report_root, tmp_path):
    page = render_html(build_report(report_root))
    broken = page.replace("</body>", '<img src="data:image/jpeg;base64,AAAA"><script>undefinedName()</script></body>')
    dom, console = _render(broken, tmp_path)
    assert sorted(e.split()[0] for e in _page_errors(dom)) == ["resource", "script"]
    assert any("undefinedName" in line for line in console)
