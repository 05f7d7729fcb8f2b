"""Video catalog: the manifests/sources/*.csv files that list source videos."""

from __future__ import annotations

import csv
import difflib
import io
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlparse

from pipeline.errors import redact_secrets
from pipeline.io.storage import write_bytes_atomic

LAYOUTS: tuple[str, ...] = ("mono", "sbs_full", "sbs_half", "tab_full", "tab_half", "auto")

CATALOG_COLUMNS: tuple[str, ...] = (
    "seq",
    "video_id",
    "url",
    "dataset",
    "category",
    "subcategory",
    "layout",
    "trim_start_s",
    "trim_end_s",
    "fx",
    "fy",
    "cx",
    "cy",
    "license",
    "title",
    "notes",
)
REQUIRED_COLUMNS: tuple[str, ...] = ("video_id", "url", "dataset", "category")
INTRINSICS: tuple[str, ...] = ("fx", "fy", "cx", "cy")

VIDEO_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
DATASET_RE = re.compile(r"^[a-z0-9_]+$")
# Same shape as dataset: the trainer uses categories as dict keys and in file names.
CATEGORY_RE = DATASET_RE
# Stricter than float(): rejects "nan", "inf" and "1_0", which float() accepts.
NUMBER_RE = re.compile(r"^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?$")
SEQ_RE = re.compile(r"^[0-9]+$")
YOUTUBE_ID_RE = re.compile(r"^[A-Za-z0-9_-]{11}$")
YOUTUBE_HOSTS = frozenset({"youtube.com", "www.youtube.com", "m.youtube.com", "music.youtube.com"})
SEQ_WIDTH = 5
SLOWTV_LICENSE = "YouTube (see source)"


@dataclass(frozen=True)
class CatalogEntry:
    """One source video listed in a catalog csv."""

    video_id: str
    url: str
    dataset: str
    category: str
    seq: int | None = None
    subcategory: str | None = None
    layout: str = "mono"
    trim_start_s: float | None = None
    trim_end_s: float | None = None
    fx: float | None = None
    fy: float | None = None
    cx: float | None = None
    cy: float | None = None
    license: str | None = None
    title: str | None = None
    notes: str | None = None
    # Where the row came from, for messages only; two entries with the same data are equal.
    line: int = field(default=0, compare=False)

    def __post_init__(self) -> None:
        # These three become path components (videos/<dataset>/<video_id>.*, shards/...): whoever builds an
        # entry, from a catalog or in code, cannot make one that escapes the data root.
        for name, pattern in (("video_id", VIDEO_ID_RE), ("dataset", DATASET_RE), ("category", CATEGORY_RE)):
            value = getattr(self, name)
            if not isinstance(value, str) or not pattern.fullmatch(value):
                raise ValueError(f"{name} {value!r} must match {pattern.pattern}")


@dataclass(frozen=True)
class CatalogProblem:
    """A catalog row that could not be turned into an entry."""

    line: int
    video_id: str | None
    reason: str
    message: str
    # Null from the parser (the stats tables have always shown catalog errors without one); a problem read back
    # from stats/videos.parquet keeps what the table holds.
    dataset: str | None = None


class CatalogError(ValueError):
    """A problem with a whole catalog file (missing file, bad header, bad import input)."""


class _RowError(Exception):
    """Internal: first problem found in one row."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def youtube_id(url: str) -> str | None:
    """Return the 11-character YouTube id in a watch?v=, youtu.be/, shorts/ or embed/ URL, else None."""
    text = url.strip()
    if "://" not in text:
        text = "https://" + text  # people paste "youtu.be/abc" without a scheme
    try:
        parsed = urlparse(text)
    except ValueError:
        return None
    host = (parsed.hostname or "").lower()
    parts = [p for p in parsed.path.split("/") if p]
    candidate: str | None = None
    if host == "youtu.be" and parts:
        candidate = parts[0]
    elif host in YOUTUBE_HOSTS:
        if parts == ["watch"]:
            values = parse_qs(parsed.query).get("v")
            candidate = values[0] if values else None
        elif len(parts) >= 2 and parts[0] in ("shorts", "embed", "live", "v"):
            candidate = parts[1]
    if candidate and YOUTUBE_ID_RE.fullmatch(candidate):
        return candidate
    return None


def is_valid_url(url: str) -> bool:
    """True for an http(s) URL with a host, a file:// URL with a path, or an absolute local path."""
    if url.startswith("/"):
        return True
    try:
        parsed = urlparse(url)
    except ValueError:
        return False
    if parsed.scheme in ("http", "https"):
        return bool(parsed.hostname) and " " not in url
    if parsed.scheme == "file":
        return parsed.path.startswith("/")
    return False


def _optional_text(cells: dict[str, str], name: str) -> str | None:
    value = cells.get(name, "")
    return value or None


def _number(cells: dict[str, str], name: str, line: int) -> float | None:
    value = cells.get(name, "")
    if not value:
        return None
    if not NUMBER_RE.fullmatch(value):
        raise _RowError("bad_number", f"line {line}: {name} {value!r} is not a number")
    return float(value)


def _non_negative(cells: dict[str, str], name: str, line: int) -> float | None:
    value = _number(cells, name, line)
    if value is not None and value < 0:
        raise _RowError("bad_number", f"line {line}: {name} {cells[name]!r} must not be negative")
    return value


def _seq(cells: dict[str, str], line: int) -> int | None:
    value = cells.get("seq", "")
    if not value:
        return None
    if not SEQ_RE.fullmatch(value):
        raise _RowError("bad_number", f"line {line}: seq {value!r} is not a non-negative integer")
    return int(value)


def _intrinsics(cells: dict[str, str], line: int) -> dict[str, float | None]:
    values = {name: _number(cells, name, line) for name in INTRINSICS}
    given = [name for name, v in values.items() if v is not None]
    if given and len(given) != len(INTRINSICS):
        missing = [name for name in INTRINSICS if values[name] is None]
        raise _RowError(
            "bad_intrinsics",
            f"line {line}: intrinsics need all of fx, fy, cx, cy or none; "
            f"got {', '.join(given)} without {', '.join(missing)}",
        )
    if given:
        fx, fy, cx, cy = (v for v in values.values() if v is not None)  # all four, in INTRINSICS order
        # Normalised by image size: focal lengths are positive, the principal point lies in the image.
        if not (fx > 0 and fy > 0 and 0 <= cx <= 1 and 0 <= cy <= 1):
            shown = ", ".join(f"{n}={cells[n]}" for n in INTRINSICS)
            raise _RowError(
                "bad_intrinsics", f"line {line}: intrinsics {shown} must be normalised (fx, fy > 0; cx, cy in [0, 1])"
            )
    return values


def _check_required(cells: dict[str, str], line: int) -> None:
    missing = [name for name in REQUIRED_COLUMNS if not cells.get(name)]
    if missing:
        raise _RowError("missing_field", f"line {line}: required field(s) empty: {', '.join(missing)}")


def _entry_from_cells(cells: dict[str, str], line: int) -> CatalogEntry:
    """Validate one row's stripped cells; raise _RowError on the first problem."""
    video_id = cells.get("video_id", "")
    if video_id and not VIDEO_ID_RE.fullmatch(video_id):
        raise _RowError("bad_video_id", f"line {line}: video_id {video_id!r} must match {VIDEO_ID_RE.pattern}")
    _check_required(cells, line)
    url, dataset, category = cells["url"], cells["dataset"], cells["category"]
    if not is_valid_url(url):
        raise _RowError(
            "bad_url", f"line {line}: url {redact_secrets(url)!r} is not an http(s)/file URL or an absolute path"
        )
    if not DATASET_RE.fullmatch(dataset):
        raise _RowError("bad_dataset", f"line {line}: dataset {dataset!r} must match {DATASET_RE.pattern}")
    if not CATEGORY_RE.fullmatch(category):
        raise _RowError("bad_category", f"line {line}: category {category!r} must match {CATEGORY_RE.pattern}")
    layout = cells.get("layout") or "mono"
    if layout not in LAYOUTS:
        raise _RowError("unknown_layout", f"line {line}: layout {layout!r} is not one of {', '.join(LAYOUTS)}")
    return CatalogEntry(
        video_id=video_id,
        url=url,
        dataset=dataset,
        category=category,
        seq=_seq(cells, line),
        subcategory=_optional_text(cells, "subcategory"),
        layout=layout,
        trim_start_s=_non_negative(cells, "trim_start_s", line),
        trim_end_s=_non_negative(cells, "trim_end_s", line),
        **_intrinsics(cells, line),
        license=_optional_text(cells, "license"),
        title=_optional_text(cells, "title"),
        notes=_optional_text(cells, "notes"),
        line=line,
    )


def _check_header(header: list[str], path: Path) -> None:
    unknown = [name for name in header if name not in CATALOG_COLUMNS]
    if unknown:
        raise CatalogError(f"{path}: unknown column(s) in header: {_unknown_columns(unknown)}")
    repeated = sorted({name for name in header if header.count(name) > 1})
    if repeated:
        raise CatalogError(f"{path}: column(s) repeated in header: {', '.join(repeated)}")
    missing = [name for name in REQUIRED_COLUMNS if name not in header]
    if missing:
        raise CatalogError(f"{path}: header lacks required column(s): {', '.join(missing)}")


def _unknown_columns(names: list[str]) -> str:
    """'datset' (did you mean 'dataset'?) for each name, and the allowed columns when some name is close to none."""
    shown, unmatched = [], False
    for name in names:
        close = difflib.get_close_matches(name.lower(), CATALOG_COLUMNS, n=1)
        shown.append(f"{name!r} (did you mean {close[0]!r}?)" if close else repr(name))
        unmatched = unmatched or not close
    return ", ".join(shown) + (f"; allowed: {', '.join(CATALOG_COLUMNS)}" if unmatched else "")


def _is_skipped(row: list[str]) -> bool:
    return not any(cell.strip() for cell in row) or row[0].lstrip().startswith("#")


def _numbered_rows(handle: Iterable[str]) -> Iterator[tuple[int, list[str]]]:
    """Yield (first physical line, cells) for rows that are not blank or comments."""
    reader = csv.reader(handle)
    start = 1
    for row in reader:
        # line_num counts physical lines, so quoted newlines don't shift later numbers.
        line, start = start, reader.line_num + 1
        if not _is_skipped(row):
            yield line, [cell.strip() for cell in row]


def _parse_row(header: list[str], cells: list[str], line: int) -> CatalogEntry:
    extra = [c for c in cells[len(header) :] if c]
    if extra:
        raise _RowError(
            "too_many_fields",
            f"line {line}: {len(cells)} fields for {len(header)} columns (extra: {', '.join(map(repr, extra))})",
        )
    return _entry_from_cells(dict(zip(header, cells)), line)


def read_catalog(path: str | Path) -> tuple[list[CatalogEntry], list[CatalogProblem]]:
    """Read a catalog csv into good entries and one problem per bad row."""
    path = Path(path)
    try:
        handle = path.open(encoding="utf-8-sig", newline="")
    except OSError as exc:
        raise CatalogError(f"{path}: cannot open catalog: {exc.strerror or exc}") from exc
    with handle:
        try:
            return _read_rows(_numbered_rows(handle), path)
        except (csv.Error, UnicodeDecodeError) as exc:
            raise CatalogError(f"{path}: not a readable utf-8 csv: {exc}") from exc


def _read_rows(rows: Iterable[tuple[int, list[str]]], path: Path) -> tuple[list[CatalogEntry], list[CatalogProblem]]:
    """Check the header, then sort each row into entries or problems."""
    rows = iter(rows)
    header_row = next(rows, None)
    if header_row is None:
        raise CatalogError(f"{path}: no header row (file is empty or only comments)")
    header = header_row[1]
    _check_header(header, path)
    entries: list[CatalogEntry] = []
    problems: list[CatalogProblem] = []
    first_line: dict[str, int] = {}
    for line, cells in rows:
        raw_id = dict(zip(header, cells)).get("video_id", "")
        usable_id = raw_id if VIDEO_ID_RE.fullmatch(raw_id) else None
        # The first row to use an id owns it even if that row is bad, so fixing it never moves the winner.
        if usable_id is not None and usable_id in first_line:
            problems.append(
                CatalogProblem(
                    line,
                    usable_id,
                    "duplicate_id",
                    f"line {line}: video_id {usable_id!r} already used on line {first_line[usable_id]}",
                )
            )
            continue
        if usable_id is not None:
            first_line[usable_id] = line
        try:
            entries.append(_parse_row(header, cells, line))
        except _RowError as err:
            problems.append(CatalogProblem(line, usable_id, err.reason, err.message))
    return entries, problems


def _format_number(value: float | None) -> str:
    if value is None:
        return ""
    return repr(float(value))  # repr round-trips exactly


def _entry_cells(entry: CatalogEntry) -> dict[str, str]:
    cells = {name: "" if getattr(entry, name) is None else str(getattr(entry, name)) for name in CATALOG_COLUMNS}
    cells["seq"] = "" if entry.seq is None else f"{entry.seq:0{SEQ_WIDTH}d}"
    for name in ("trim_start_s", "trim_end_s", *INTRINSICS):
        cells[name] = _format_number(getattr(entry, name))
    return {name: value.strip() for name, value in cells.items()}


def _checked_rows(entries: Iterable[CatalogEntry]) -> list[dict[str, str]]:
    """Cells for each entry, refusing anything read_catalog would reject."""
    rows: list[dict[str, str]] = []
    seen: set[str] = set()
    for index, entry in enumerate(entries, start=1):
        cells = _entry_cells(entry)
        try:
            _entry_from_cells(cells, index + 1)
        except _RowError as err:
            raise CatalogError(f"entry {entry.video_id!r} cannot be written: {err.message}") from err
        if entry.video_id in seen:
            raise CatalogError(f"entry {entry.video_id!r} cannot be written: duplicate video_id")
        seen.add(entry.video_id)
        rows.append(cells)
    return rows


def write_catalog(entries: Iterable[CatalogEntry], path: str | Path) -> Path:
    """Write entries as a catalog csv atomically and return the path."""
    path = Path(path)
    rows = _checked_rows(entries)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CATALOG_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_bytes_atomic(path, buffer.getvalue().encode("utf-8"))
    return path


def _content_lines(path: Path) -> list[tuple[int, str]]:
    """(physical line number, stripped text) for the non-blank lines of a text file."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise CatalogError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    return [(n, s.strip()) for n, s in enumerate(text.splitlines(), start=1) if s.strip()]


def parse_category(text: str) -> tuple[str, str | None]:
    """Split SlowTV's 'Top' or 'Top-Sub' label into lower-case (category, subcategory)."""
    parts = text.strip().lower().split("-")
    if len(parts) > 2 or not all(CATEGORY_RE.fullmatch(p) for p in parts):
        raise ValueError(f"category {text!r} is not 'Top' or 'Top-Sub'")
    return parts[0], parts[1] if len(parts) == 2 else None


def _check_counts(
    urls_path: Path, urls: list[tuple[int, str]], categories_path: Path, categories: list[tuple[int, str]]
) -> None:
    if len(urls) == len(categories):
        return
    longer_path, longer, shorter_path = (
        (urls_path, urls, categories_path) if len(urls) > len(categories) else (categories_path, categories, urls_path)
    )
    first_extra = longer[min(len(urls), len(categories))][0]
    raise CatalogError(
        f"{longer_path}: line {first_extra} has no counterpart in {shorter_path} "
        f"({len(urls)} urls, {len(categories)} categories)"
    )


def import_slowtv(urls_path: str | Path, categories_path: str | Path, dataset: str = "slowtv") -> list[CatalogEntry]:
    """Build catalog entries from SlowTV's urls.txt and categories.txt split files."""
    urls_path, categories_path = Path(urls_path), Path(categories_path)
    if not DATASET_RE.fullmatch(dataset):
        raise CatalogError(f"dataset {dataset!r} must match {DATASET_RE.pattern}")
    urls, categories = _content_lines(urls_path), _content_lines(categories_path)
    _check_counts(urls_path, urls, categories_path, categories)
    entries: list[CatalogEntry] = []
    first_line: dict[str, int] = {}
    for seq, ((url_line, url), (cat_line, label)) in enumerate(zip(urls, categories)):
        if not is_valid_url(url):
            raise CatalogError(f"{urls_path}: line {url_line}: {redact_secrets(url)!r} is not a URL")
        try:
            category, subcategory = parse_category(label)
        except ValueError as exc:
            raise CatalogError(f"{categories_path}: line {cat_line}: {exc}") from exc
        yt = youtube_id(url)
        video_id = yt or f"{dataset}_{seq:0{SEQ_WIDTH}d}"
        if video_id in first_line:
            raise CatalogError(
                f"{urls_path}: line {url_line}: video {video_id!r} already listed on line {first_line[video_id]}"
            )
        first_line[video_id] = url_line
        entries.append(
            CatalogEntry(
                video_id=video_id,
                url=url,
                dataset=dataset,
                category=category,
                seq=seq,
                subcategory=subcategory,
                license=SLOWTV_LICENSE if yt else None,
            )
        )
    return entries
