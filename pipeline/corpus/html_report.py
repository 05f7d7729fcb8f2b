"""`depthcurate report`: one self-contained HTML page about a published dataset, to look at rather than read.

The drop funnel per dataset, tables per video and category, histograms of the frame measures, and each video's
contact sheet (previews/) with captions drawn over it in SVG, a strip of what happened to every decoded frame and,
for stereo, a colour bar in pixels. Everything is read through DataRoot from the published tables, previews and
shards, and inlined (CSS, SVG, base64 JPEGs): no script, no external resource. The page holds nothing that names
where the data root is, so two roots with the same data give the same bytes (a rerun writes nothing).
"""

from __future__ import annotations

import base64
import html
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.corpus.report import audit_tables, summarize
from pipeline.io.data_root import DataRoot
from pipeline.io.storage import write_bytes_atomic
from pipeline.media.codecs import decode_disparity_png, decode_mask_png
from pipeline.schema import DROP_REASONS, FRAME_STATS_SCHEMA, PUBLISH_DROP_REASONS
from pipeline.video.previews import COLORMAP_FLOOR, GAP_PX, PREVIEW_CLIPS, colour_range

REPORT_NAME = "report.html"  # at the top of the data root
MAX_SHEETS = 24  # videos shown with their contact sheet: a big corpus still gives a page of a few MB
HISTOGRAM_BINS = 30
STRIP_BINS = 240  # a longer video's frame strip shows bins of consecutive frames
KEPT = "kept"
_FRAME_COLUMNS = ["dataset", "video_id", "frame_index", "timestamp_s", "clip_id", "kept", "drop_reason"]
# (column of stats/frames.parquet, title, what it measures)
HISTOGRAMS: tuple[tuple[str, str, str], ...] = (
    ("sharpness", "Sharpness", "variance of the Laplacian"),
    ("motion", "Motion", "median optical flow, fraction of the width"),
    ("lr_pass_fraction", "LR pass fraction", "stereo: pixels passing the left-right check"),
    ("disp_range_px", "Disparity range", "stereo: 1st to 99th percentile, px"),
)


@dataclass(frozen=True)
class VideoSummary:
    dataset: str | None  # None on a catalog row that named none
    video_id: str | None
    category: str | None
    status: str
    error: str | None
    frames_decoded: int
    frames_kept: int
    drops: dict[str, int]  # drop reason -> frames, reasons that dropped something


@dataclass(frozen=True)
class CategorySummary:
    dataset: str
    category: str
    videos: int
    videos_ok: int
    frames_decoded: int
    frames_kept: int
    drops: dict[str, int]


@dataclass(frozen=True)
class Histogram:
    column: str
    title: str
    measures: str
    low: float  # the bins span [low, high]; values beyond fall in the end bins
    high: float
    measured: tuple[int, ...]  # every frame with a value
    kept: tuple[int, ...]


@dataclass(frozen=True)
class SheetRow:
    """One row of a contact sheet: the first frame ingest kept in a clip."""

    clip_id: int
    frame_index: int
    timestamp_s: float
    outcome: str  # "kept", or the publish-time reason that dropped it since
    disp_range_px: float | None
    colour_range_px: tuple[float, float] | None  # stereo: the disparities at the colour map's ends


@dataclass(frozen=True)
class StripBin:
    """Consecutive decoded frames of a video and what became of them."""

    first: int  # frame indices
    last: int
    outcomes: tuple[tuple[str, int], ...]  # ("kept" or a drop reason, frames)


@dataclass(frozen=True)
class VideoSheet:
    dataset: str
    video_id: str
    jpeg: bytes | None  # the preview, when one was written
    size: tuple[int, int]  # its width and height
    rows: tuple[SheetRow, ...]
    stereo: bool
    strip: tuple[StripBin, ...]


@dataclass(frozen=True)
class DatasetReport:
    videos_ok: int
    videos_failed: int
    frames_decoded: int
    frames_kept: int
    samples: dict[str, int]  # per dataset
    videos: list[VideoSummary]
    categories: list[CategorySummary]
    histograms: list[Histogram]
    sheets: list[VideoSheet]
    sheets_left_out: int  # ok videos beyond MAX_SHEETS


# ------------------------------------------------------------------ reading


def build_report(root: DataRoot, max_sheets: int = MAX_SHEETS) -> DatasetReport:
    """Everything the page shows, read from a published data root."""
    summary = summarize(root)
    video_rows, category_rows = audit_tables(root)
    audited = {(v["dataset"], v["video_id"]): v for v in video_rows}
    videos = [_video_summary(v, audited.get((v["dataset"], v["video_id"]))) for v in summary["videos"]]
    categories = [
        CategorySummary(
            c["dataset"], c["category"], c["videos"], c["videos_ok"], c["frames_decoded"], c["frames_kept"], _drops(c)
        )
        for c in category_rows
    ]
    measures = [name for name, _, _ in HISTOGRAMS]
    frames = root.read_table(
        root.frames_table, [*_FRAME_COLUMNS, *measures], FRAME_STATS_SCHEMA
    )  # the measures include the stereo ones
    ok = [(str(v.dataset), str(v.video_id)) for v in videos if v.status == "ok" and v.dataset and v.video_id]
    per_video = _frame_tables(frames, ok[:max_sheets])
    counts = summary["counts"]
    return DatasetReport(
        videos_ok=counts["videos"]["ok"],
        videos_failed=counts["videos"]["failed"],
        frames_decoded=counts["frames_decoded"],
        frames_kept=counts["frames_kept"],
        samples=dict(counts["samples"]),
        videos=videos,
        categories=categories,
        histograms=[histogram(frames, *spec) for spec in HISTOGRAMS],
        sheets=[_sheet(root, dataset, video_id, per_video[dataset, video_id]) for dataset, video_id in ok[:max_sheets]],
        sheets_left_out=max(0, len(ok) - max_sheets),
    )


def _video_summary(row: dict[str, Any], audited: dict[str, Any] | None) -> VideoSummary:
    return VideoSummary(
        dataset=row["dataset"],
        video_id=row["video_id"],
        category=audited["category"] if audited else None,
        status=row["status"],
        error=row["error"],
        frames_decoded=row["frames_decoded"] or 0,
        frames_kept=row["frames_kept"] or 0,
        drops=_drops(audited) if audited else {},
    )


def _drops(row: dict[str, Any]) -> dict[str, int]:
    return {r: row[f"dropped_{r}"] for r in DROP_REASONS if row.get(f"dropped_{r}")}


def histogram(frames: pa.Table, column: str, title: str, measures: str, bins: int = HISTOGRAM_BINS) -> Histogram:
    """Counts of `column` over every frame that has a value, and over the kept ones, in `bins` equal bins from its
    0.5th to 99.5th percentile (an outlier does not squeeze the rest into one bar)."""
    values = frames[column].to_numpy(zero_copy_only=False).astype(np.float64)
    kept = frames["kept"].to_numpy(zero_copy_only=False).astype(bool)
    measured = np.isfinite(values)
    if not measured.any():
        return Histogram(column, title, measures, 0.0, 0.0, (), ())
    low, high = (float(v) for v in np.percentile(values[measured], [0.5, 99.5]))
    high = high if high > low else low + 1.0
    edges = np.linspace(low, high, bins + 1)

    def count(mask: np.ndarray) -> tuple[int, ...]:
        clipped = np.clip(values[mask], low, high)
        return tuple(int(n) for n in np.histogram(clipped, edges)[0])

    return Histogram(column, title, measures, low, high, count(measured), count(measured & kept))


def _frame_tables(frames: pa.Table, videos: Sequence[tuple[str, str]]) -> dict[tuple[str, str], pa.Table]:
    """(dataset, video_id) -> the frame rows of each of `videos`, in frame order."""
    ids = pa.array(sorted({video_id for _, video_id in videos}), pa.string())
    picked = frames.filter(pc.is_in(frames["video_id"], value_set=ids)).sort_by("frame_index")
    return {
        (dataset, video_id): picked.filter(
            pc.and_(pc.equal(picked["dataset"], dataset), pc.equal(picked["video_id"], video_id))
        )
        for dataset, video_id in videos
    }


def _sheet(root: DataRoot, dataset: str, video_id: str, frames: pa.Table) -> VideoSheet:
    chosen = preview_frames(frames)
    stereo = any(row["lr_pass_fraction"] is not None for row in chosen)
    ranges = _colour_ranges(root, dataset, video_id, {row["frame_index"] for row in chosen}) if stereo else {}
    preview = root.preview(dataset, video_id)
    jpeg = root.read_bytes(preview) if chosen and root.exists(preview) else None
    size = _jpeg_size(jpeg) if jpeg else (0, 0)
    sheet_rows = tuple(
        SheetRow(
            clip_id=row["clip_id"],
            frame_index=row["frame_index"],
            timestamp_s=row["timestamp_s"],
            outcome=KEPT if row["kept"] else row["drop_reason"],
            disp_range_px=row["disp_range_px"],
            colour_range_px=ranges.get(row["frame_index"]),
        )
        for row in chosen
    )
    return VideoSheet(dataset, video_id, jpeg, size, sheet_rows, stereo, frame_strip(frames))


def preview_frames(frames: pa.Table, max_rows: int = PREVIEW_CLIPS) -> list[dict[str, Any]]:
    """The rows of the frames on a video's contact sheet, from its frame rows in frame order: as video/sampling
    chose them, the first frame ingest kept in each clip, for the first `max_rows` clips that kept one. Frames that
    publish dropped since (cross-video and CLIP drops) were kept by ingest, so they are on the sheet too."""
    dropped_later = pc.is_in(frames["drop_reason"], value_set=pa.array(PUBLISH_DROP_REASONS)).fill_null(False)
    by_ingest = np.flatnonzero(pc.or_(frames["kept"], dropped_later).to_numpy(zero_copy_only=False))
    clips = frames["clip_id"].to_numpy()[by_ingest]
    first = by_ingest[np.r_[True, clips[1:] != clips[:-1]]] if by_ingest.size else by_ingest
    return frames.take(first[:max_rows]).to_pylist()


def frame_strip(frames: pa.Table, bins: int = STRIP_BINS) -> tuple[StripBin, ...]:
    """What became of each decoded frame (rows in frame order), in at most `bins` runs of consecutive frames."""
    n = frames.num_rows
    if n == 0:
        return ()
    outcome = pc.if_else(frames["kept"], KEPT, pc.coalesce(frames["drop_reason"], "unknown"))
    encoded = outcome.combine_chunks().dictionary_encode()
    names, codes = encoded.dictionary.to_pylist(), encoded.indices.to_numpy()
    index = frames["frame_index"].to_numpy()
    edges = np.arange(min(n, bins) + 1) * n // min(n, bins)
    strip = []
    for a, b in zip(edges[:-1], edges[1:]):
        counts = np.bincount(codes[a:b], minlength=len(names))
        outcomes = sorted(((names[k], int(counts[k])) for k in np.flatnonzero(counts)), key=_rule_order)
        strip.append(StripBin(int(index[a]), int(index[b - 1]), tuple(outcomes)))
    return tuple(strip)


def _rule_order(item: tuple[str, int]) -> int:
    """Kept first, then the drop reasons in the order of DROP_REASONS."""
    return -1 if item[0] == KEPT else DROP_REASONS.index(item[0]) if item[0] in DROP_REASONS else len(DROP_REASONS)


def _colour_ranges(root: DataRoot, dataset: str, video_id: str, wanted: set[int]) -> dict[int, tuple[float, float]]:
    """frame_index -> the disparities at the ends of its preview's colour map, recomputed as the preview did
    (previews.colour_range over the valid pixels) from the 16-bit disparity in the shard. Only the row groups that
    hold a wanted frame have their pixel columns read."""
    found: dict[int, tuple[float, float]] = {}
    columns = ["frame_index", "disparity", "valid_mask", "disp_scale", "disp_offset"]
    for shard in root.glob(root.shard_dir(dataset, video_id), "*.parquet"):
        with root.open(shard) as source:
            file = pq.ParquetFile(source)
            for group in range(file.num_row_groups):
                indices = file.read_row_group(group, columns=["frame_index"]).column(0).to_pylist()
                if wanted.isdisjoint(indices):
                    continue
                for row in file.read_row_group(group, columns=columns).to_pylist():
                    if row["frame_index"] in wanted and row["disparity"] is not None:
                        disparity = decode_disparity_png(row["disparity"], row["disp_scale"], row["disp_offset"])
                        valid = decode_mask_png(row["valid_mask"]) & np.isfinite(disparity)
                        found[row["frame_index"]] = colour_range(disparity, valid)
    return found


def _jpeg_size(data: bytes) -> tuple[int, int]:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError("a preview is not a JPEG")
    return image.shape[1], image.shape[0]


# ------------------------------------------------------------------ writing


def write_report(root: DataRoot, out: str | Path | None = None, max_sheets: int = MAX_SHEETS) -> str:
    """Render the report of `root` into `out` (a local file), or by default into the data root's report.html
    (uploaded there under an object-store root); returns a link to it. An unchanged report is not rewritten."""
    page = render_html(build_report(root, max_sheets)).encode()
    if out is not None:
        path = Path(out).resolve()
        write_bytes_atomic(path, page)
        return path.as_uri()
    root.write_bytes(root.root / REPORT_NAME, page)
    return root.uri(root.root / REPORT_NAME)


def render_html(report: DatasetReport) -> str:
    datasets = sorted({v.dataset for v in report.videos if v.dataset} | set(report.samples))
    reasons = [r for r in DROP_REASONS if any(r in v.drops for v in report.videos)]
    body = [
        "<h1>Dataset report</h1>",
        _overview(report, datasets),
        _section("funnel", "Where the frames went", [_funnel(report.videos, d) for d in datasets], _legend(reasons)),
        _section("videos", "Videos", [_video_table(report.videos)]),
        _section("categories", "Categories", [_category_table(report.categories)]),
        _section("histograms", "Frame measures", [_histogram_svg(h) for h in report.histograms]),
        _section("sheets", "Contact sheets", _sheet_blocks(report)),
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_e('depthcurate report: ' + ', '.join(datasets))}</title>\n<style>{_CSS}</style>\n</head>\n"
        f"<body>\n{_GRADIENTS}\n" + "\n".join(body) + "\n</body>\n</html>\n"
    )


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _section(key: str, title: str, parts: Iterable[str], note: str = "") -> str:
    return f'<section id="{key}"><h2>{_e(title)}</h2>{note}\n' + "\n".join(parts) + "</section>"


def _overview(report: DatasetReport, datasets: list[str]) -> str:
    cards = [
        ("videos-ok", "videos ok", report.videos_ok),
        ("videos-failed", "videos failed", report.videos_failed),
        ("frames-decoded", "frames decoded", report.frames_decoded),
        ("frames-kept", "frames kept", report.frames_kept),
        *[(f"samples-{d}", f"samples in {d}", report.samples.get(d, 0)) for d in datasets],
    ]
    return (
        '<div class="cards">'
        + "".join(
            f'<div class="card"><span class="value" data-count="{_e(key)}">{n}</span>'
            f'<span class="label">{_e(label)}</span></div>'
            for key, label, n in cards
        )
        + "</div>"
    )


def outcome_colour(outcome: str) -> str:
    """Kept green; each drop reason its own hue (the golden angle keeps neighbours in the list apart), outside the
    greens so that no drop looks kept."""
    if outcome == KEPT:
        return "#2e9d4a"
    index = DROP_REASONS.index(outcome) if outcome in DROP_REASONS else len(DROP_REASONS)
    hue = (index * 137.5 + 20) % 360 * 300 / 360
    return f"hsl({hue + 60 if hue >= 100 else hue:.0f},65%,55%)"


def _legend(reasons: Sequence[str]) -> str:
    return (
        '<p class="legend">'
        + "".join(f'<span><i style="background:{outcome_colour(r)}"></i>{_e(r)}</span>' for r in [KEPT, *reasons])
        + "</p>"
    )


def funnel_steps(videos: Sequence[VideoSummary], dataset: str) -> list[tuple[str, int]]:
    """("decoded", n), then (reason, frames it dropped) for each reason that dropped some, in rule order, then
    ("kept", n), summed over the dataset's videos."""
    mine = [v for v in videos if v.dataset == dataset]
    drops = Counter[str]()
    for video in mine:
        drops.update(video.drops)
    steps = [("decoded", sum(v.frames_decoded for v in mine))]
    steps += [(reason, drops[reason]) for reason in DROP_REASONS if drops[reason]]
    return [*steps, (KEPT, sum(v.frames_kept for v in mine))]


def _funnel(videos: Sequence[VideoSummary], dataset: str) -> str:
    """A waterfall: each drop reason's bar spans the frames it removed from what was left."""
    steps = funnel_steps(videos, dataset)
    total = max(steps[0][1], 1)
    label_w, bar_w, row_h = 190, 520, 24
    rows, left = [], steps[0][1]
    for i, (name, n) in enumerate(steps):
        if name in ("decoded", KEPT):
            start, colour = 0, "#7d8797" if name == "decoded" else outcome_colour(KEPT)
        else:
            left -= n
            start, colour = left, outcome_colour(name)
        x, width, y = label_w + bar_w * start / total, max(bar_w * n / total, 1 if n else 0), i * row_h
        rows.append(
            f'<g data-step="{_e(name)}" data-frames="{n}"><title>{_e(name)}: {n} frames</title>'
            f'<text x="{label_w - 8}" y="{y + 16}" text-anchor="end">{_e(name)}</text>'
            f'<rect x="{x:.1f}" y="{y + 4}" width="{width:.1f}" height="{row_h - 8}" fill="{colour}"/>'
            f'<text x="{x + width + 6:.1f}" y="{y + 16}">{n}</text></g>'
        )
    height = len(steps) * row_h
    return (
        f'<figure class="funnel" data-dataset="{_e(dataset)}"><figcaption>{_e(dataset)}</figcaption>'
        f'<svg viewBox="0 0 {label_w + bar_w + 80} {height}" width="{label_w + bar_w + 80}" height="{height}" '
        f'role="img">{"".join(rows)}</svg></figure>'
    )


def _main_drops(drops: dict[str, int], top: int = 3) -> str:
    ranked = sorted(drops.items(), key=lambda item: (-item[1], DROP_REASONS.index(item[0])))[:top]
    return " · ".join(
        f'<span class="drop"><i style="background:{outcome_colour(r)}"></i>{_e(r)} {n}</span>' for r, n in ranked
    )


def _table(headers: Sequence[str], rows: Iterable[Sequence[str]], key: str) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(row) + "</tr>" for row in rows)
    return f'<table id="{key}-table"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _num(n: int, column: str) -> str:
    return f'<td class="n" data-col="{column}">{n}</td>'


def _video_table(videos: Sequence[VideoSummary]) -> str:
    headers = ["dataset", "video", "category", "status", "decoded", "kept", "main drop reasons", "error"]
    rows = [
        [
            f"<td>{_e(v.dataset or '-')}</td>",
            f"<td>{_e(v.video_id or '-')}</td>",
            f"<td>{_e(v.category or '-')}</td>",
            f'<td><span class="status {"ok" if v.status == "ok" else "bad"}">{_e(v.status)}</span></td>',
            _num(v.frames_decoded, "decoded"),
            _num(v.frames_kept, "kept"),
            f"<td>{_main_drops(v.drops)}</td>",
            f'<td class="error">{_e(v.error or "")}</td>',
        ]
        for v in videos
    ]
    return _table(headers, rows, "videos")


def _category_table(categories: Sequence[CategorySummary]) -> str:
    headers = ["dataset", "category", "videos", "ok", "decoded", "kept", "kept %", "main drop reasons"]
    rows = [
        [
            f"<td>{_e(c.dataset)}</td>",
            f"<td>{_e(c.category)}</td>",
            _num(c.videos, "videos"),
            _num(c.videos_ok, "ok"),
            _num(c.frames_decoded, "decoded"),
            _num(c.frames_kept, "kept"),
            f'<td class="n">{100 * c.frames_kept / c.frames_decoded:.0f}%</td>' if c.frames_decoded else "<td></td>",
            f"<td>{_main_drops(c.drops)}</td>",
        ]
        for c in categories
    ]
    return _table(headers, rows, "categories")


def _histogram_svg(h: Histogram) -> str:
    width, height, pad = 360, 170, 28
    head = f'<figure class="histogram" data-column="{_e(h.column)}"><figcaption><b>{_e(h.title)}</b> '
    head += f'<span class="muted">{_e(h.measures)}</span></figcaption>'
    if not h.measured:
        return head + '<p class="muted">no frame has this measure</p></figure>'
    top = max(h.measured)
    bar = width / len(h.measured)
    bars = []
    for i, (n_all, n_kept) in enumerate(zip(h.measured, h.kept)):
        x = i * bar
        tip = f"{h.low + i * (h.high - h.low) / len(h.measured):.4g}: {n_all} measured, {n_kept} kept"
        bars.append(
            f"<g><title>{_e(tip)}</title>"
            f'<rect x="{x:.1f}" y="{height - height * n_all / top:.1f}" width="{bar - 1:.1f}" '
            f'height="{height * n_all / top:.1f}" fill="#b9c3d3"/>'
            f'<rect x="{x:.1f}" y="{height - height * n_kept / top:.1f}" width="{bar - 1:.1f}" '
            f'height="{height * n_kept / top:.1f}" fill="{outcome_colour(KEPT)}"/></g>'
        )
    axis = (
        f'<text x="0" y="{height + 18}">{h.low:.4g}</text>'
        f'<text x="{width}" y="{height + 18}" text-anchor="end">{h.high:.4g}</text>'
        f'<text x="0" y="-6">{top} frames</text>'
    )
    return (
        head + f'<svg viewBox="0 {-pad} {width} {height + 2 * pad}" width="{width}" height="{height + 2 * pad}" '
        f'role="img">{"".join(bars)}{axis}</svg>'
        f'<p class="muted">{sum(h.measured)} frames measured (grey), {sum(h.kept)} kept (green)</p></figure>'
    )


def _sheet_blocks(report: DatasetReport) -> list[str]:
    blocks = [_sheet_block(sheet) for sheet in report.sheets]
    if report.sheets_left_out:
        blocks.append(f'<p class="muted">{report.sheets_left_out} more videos have contact sheets under previews/.</p>')
    return blocks or ['<p class="muted">no video was curated</p>']


def _sheet_block(sheet: VideoSheet) -> str:
    name = f"{sheet.dataset}/{sheet.video_id}"
    parts = [f'<article class="sheet" data-video="{_e(name)}"><h3>{_e(name)}</h3>']
    if sheet.jpeg is not None:
        parts.append(_sheet_svg(sheet))
    else:
        parts.append('<p class="muted">no contact sheet in previews/</p>')
    parts.append(_strip_svg(sheet.strip))
    return "".join(parts) + "</article>"


_PANEL_W = 260  # caption panel right of the sheet, in the sheet's pixels
_HEADER_H = 24


def _sheet_svg(sheet: VideoSheet) -> str:
    """The preview JPEG with its captions: column titles over it, and per row the frame, what became of it and,
    for stereo, the colour bar of its disparity tile in pixels."""
    width, height = sheet.size
    n = max(len(sheet.rows), 1)
    row_h = (height - GAP_PX) / n - GAP_PX
    tile = (width - GAP_PX) / (3 if sheet.stereo else 1) - GAP_PX
    titles = ["left view", "disparity", "sky mask"] if sheet.stereo else ["frame"]
    parts = [
        f'<text x="{GAP_PX + i * (tile + GAP_PX) + tile / 2:.1f}" y="{_HEADER_H - 8}" text-anchor="middle">'
        f"{_e(t)}</text>"
        for i, t in enumerate(titles)
    ]
    data = base64.b64encode(sheet.jpeg or b"").decode()
    parts.append(
        f'<image x="0" y="{_HEADER_H}" width="{width}" height="{height}" href="data:image/jpeg;base64,{data}"/>'
    )
    for i, row in enumerate(sheet.rows):
        y = _HEADER_H + GAP_PX + i * (row_h + GAP_PX)
        parts.append(_row_caption(row, width + 12, y))
    total_w, total_h = width + _PANEL_W, height + _HEADER_H
    return (
        f'<svg class="contact" viewBox="0 0 {total_w} {total_h}" width="{total_w}" height="{total_h}" '
        f'role="img">{"".join(parts)}</svg>'
    )


def _row_caption(row: SheetRow, x: float, y: float) -> str:
    lines = [
        ("strong", "", f"frame {row.frame_index}"),
        ("", "", f"clip {row.clip_id} · {row.timestamp_s:.2f} s"),
        *(
            [("", outcome_colour(KEPT), KEPT)]
            if row.outcome == KEPT
            else [
                ("", outcome_colour(row.outcome), "dropped at publish:"),
                ("", outcome_colour(row.outcome), row.outcome),
            ]
        ),
    ]
    if row.disp_range_px is not None:
        lines.append(("", "", f"disparity range {row.disp_range_px:.1f} px"))
    parts = [
        f'<text x="{x:.0f}" y="{y + 16 + 18 * i:.1f}"'
        + (f' class="{css}"' if css else "")
        + (f' style="fill:{colour}"' if colour else "")
        + f">{_e(text)}</text>"
        for i, (css, colour, text) in enumerate(lines)
    ]
    if row.colour_range_px is not None:
        parts.append(_colour_bar(row.colour_range_px, x, y + 8 + 18 * len(lines)))
    return f'<g class="caption" data-frame="{row.frame_index}" data-outcome="{_e(row.outcome)}">{"".join(parts)}</g>'


def _turbo_stops(count: int = 16) -> str:
    """Gradient stops of the colour map as previews.colorize_disparity applies it (levels from COLORMAP_FLOOR)."""
    levels = np.maximum(np.linspace(0, 255, count).round().astype(np.uint8), COLORMAP_FLOOR)
    bgr = cv2.applyColorMap(levels.reshape(1, -1), cv2.COLORMAP_TURBO)[0]
    return "".join(
        f'<stop offset="{i / (count - 1):.3f}" stop-color="#{r:02x}{g:02x}{b:02x}"/>'
        for i, (b, g, r) in enumerate(bgr.tolist())
    )


def _colour_bar(span: tuple[float, float], x: float, y: float) -> str:
    low, high = span
    bar_w, bar_h = _PANEL_W - 40, 12
    return (
        f'<g class="colour-bar" data-low="{low:.2f}" data-high="{high:.2f}">'
        f"<title>disparity colours: {low:.2f} px (far) to {high:.2f} px (near), 2nd to 98th percentile of the "
        "valid pixels; black: invalid, light blue: sky</title>"
        f'<rect x="{x:.0f}" y="{y:.1f}" width="{bar_w}" height="{bar_h}" fill="url(#turbo)"/>'
        f'<text x="{x:.0f}" y="{y + bar_h + 13:.1f}" class="small">{low:.1f} px</text>'
        f'<text x="{x + bar_w:.0f}" y="{y + bar_h + 13:.1f}" class="small" text-anchor="end">{high:.1f} px</text>'
        "</g>"
    )


def _strip_svg(strip: Sequence[StripBin]) -> str:
    """One column per bin of consecutive frames, stacked by what became of them."""
    if not strip:
        return ""
    cells = []
    for i, part in enumerate(strip):
        total, y = sum(n for _, n in part.outcomes), 0.0
        span = f"frame {part.first}" if part.first == part.last else f"frames {part.first}–{part.last}"
        tip = f"{span}: " + ", ".join(f"{o} {n}" for o, n in part.outcomes)
        rects = []
        for outcome, n in part.outcomes:
            rects.append(
                f'<rect x="{i}" y="{y:.3f}" width="1" height="{n / total:.3f}" fill="{outcome_colour(outcome)}"/>'
            )
            y += n / total
        cells.append(f"<g><title>{_e(tip)}</title>{''.join(rects)}</g>")
    return (
        '<p class="muted">every decoded frame, in order (hover for the frames and what became of them)</p>'
        f'<svg class="strip" viewBox="0 0 {len(strip)} 1" preserveAspectRatio="none" shape-rendering="crispEdges" '
        'role="img">'
        f"{''.join(cells)}</svg>"
    )


# The colour bars' gradient, defined once for the page (an id is unique in a document).
_GRADIENTS = (
    '<svg width="0" height="0" style="position:absolute" aria-hidden="true"><defs>'
    f'<linearGradient id="turbo">{_turbo_stops()}</linearGradient></defs></svg>'
)

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px auto;max-width:1280px;
padding:0 16px;color:#1d2330;background:#fafbfc}
h1{font-size:24px;margin:0 0 16px}h2{font-size:19px;margin:32px 0 8px;border-bottom:1px solid #dde2ea}
h3{font-size:15px;margin:18px 0 6px}
.cards{display:flex;flex-wrap:wrap;gap:10px}.card{background:#fff;border:1px solid #dde2ea;border-radius:6px;
padding:8px 14px;min-width:120px}.card .value{display:block;font-size:22px;font-weight:600}
.card .label{color:#5a6475;font-size:12px}
figure{margin:8px 0;display:inline-block;vertical-align:top;margin-right:18px}figcaption{margin-bottom:4px}
svg text{font:12px system-ui,sans-serif;fill:#1d2330}svg text.strong{font-weight:600}svg text.small{font-size:11px}
svg.contact{max-width:100%;height:auto;background:#202020}svg.contact text{fill:#eef0f4}
svg.strip{width:100%;height:18px;display:block;border:1px solid #dde2ea}
table{border-collapse:collapse;background:#fff;font-size:13px;width:100%}
th,td{border:1px solid #dde2ea;padding:3px 8px;text-align:left;vertical-align:top}th{background:#eef1f5}
td.n{text-align:right;font-variant-numeric:tabular-nums}td.error{color:#8a2b2b;max-width:420px;
overflow-wrap:anywhere}
.status{padding:0 6px;border-radius:3px}.status.ok{background:#dcf2e2}.status.bad{background:#f7dcdc}
.legend span,.drop{white-space:nowrap;margin-right:10px}
.legend i,.drop i{display:inline-block;width:10px;height:10px;margin-right:4px;border-radius:2px}
.muted{color:#5a6475;font-size:12px;margin:4px 0}
"""
