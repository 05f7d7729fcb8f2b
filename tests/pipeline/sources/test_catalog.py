"""Tests for the video catalog (pipeline/sources/catalog.py, manifests/sources/slowtv.csv)."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pytest

from pipeline.sources.catalog import (
    CATALOG_COLUMNS,
    LAYOUTS,
    CatalogEntry,
    CatalogError,
    import_slowtv,
    read_catalog,
    write_catalog,
    youtube_id,
)

SLOWTV_CSV = Path(__file__).resolve().parents[3] / "manifests" / "sources" / "slowtv.csv"
HEADER = ",".join(CATALOG_COLUMNS)
GOOD_ROW = "00000,good1,https://example.com/a.mp4,demo,natural,,mono,,,,,,,,,"
SLOWTV_FIRST = [
    ("oSmUI3m2kLk", "Natural"),
    ("XCeeGLx_zX4", "Natural"),
    ("hSgCSuluLxs", "Natural"),
]


def write_lines(path: Path, lines: list[str]) -> Path:
    """Write lines to a file with a trailing newline."""
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def row(
    video_id: str = "v1",
    url: str = "https://example.com/v.mp4",
    dataset: str = "demo",
    category: str = "natural",
    layout: str = "",
    trim_start: str = "",
    intrinsics: str = ",,,",
    seq: str = "",
) -> str:
    """One csv row in CATALOG_COLUMNS order."""
    return f"{seq},{video_id},{url},{dataset},{category},,{layout},{trim_start},,{intrinsics},,,"


# --- slowtv.csv ------------------------------------------------------------------------


def test_slowtv_csv_reads_cleanly():
    entries, problems = read_catalog(SLOWTV_CSV)
    assert problems == []
    assert len(entries) == 40
    assert [e.seq for e in entries] == list(range(40))
    assert Counter(e.category for e in entries) == {"natural": 28, "driving": 9, "underwater": 3}
    assert {e.dataset for e in entries} == {"slowtv"}
    assert {e.layout for e in entries} == {"mono"}
    assert all(e.trim_start_s is None and e.trim_end_s is None for e in entries)


def test_slowtv_csv_keeps_subcategories_and_odd_ids():
    entries, _ = read_catalog(SLOWTV_CSV)
    by_id = {e.video_id: e for e in entries}
    assert Counter(e.subcategory for e in entries) == {None: 29, "snow": 5, "tropical": 4, "rain": 1, "beach": 1}
    assert by_id["APlmTDb5lC8"].subcategory == "rain"
    assert by_id["-tMVBF78RMU"].seq == 7
    assert by_id["-tMVBF78RMU"].url == "https://www.youtube.com/watch?v=-tMVBF78RMU"
    assert all(youtube_id(e.url) == e.video_id for e in entries)
    assert entries[0].line == 2 and entries[-1].line == 41


def test_slowtv_csv_is_written_in_canonical_form(tmp_path):
    # Regenerating it with write_catalog must not change a byte, so diffs stay meaningful.
    entries, _ = read_catalog(SLOWTV_CSV)
    copy = write_catalog(entries, tmp_path / "slowtv.csv")
    assert copy.read_text(encoding="utf-8") == SLOWTV_CSV.read_text(encoding="utf-8")
    assert SLOWTV_CSV.read_text(encoding="utf-8").splitlines()[1].startswith("00000,oSmUI3m2kLk,")


# --- bad rows ---------------------------------------------------------------------------

BAD_ROWS = [
    ("duplicate_id", row(video_id="good1"), "good1"),
    ("bad_url", row(url="htp:/x"), "v1"),
    ("bad_url", row(url="not a url"), "v1"),
    ("bad_url", row(url="relative/path.mp4"), "v1"),
    ("bad_url", row(url="https:///no-host"), "v1"),
    ("bad_url", row(url="file:relative.mp4"), "v1"),
    ("unknown_layout", row(layout="stereo"), "v1"),
    ("bad_video_id", row(video_id="a/b"), None),
    ("bad_video_id", row(video_id=".."), None),
    ("bad_video_id", row(video_id="../etc"), None),
    ("bad_video_id", row(video_id="a\\b"), None),
    ("bad_dataset", row(dataset="../x"), "v1"),
    ("bad_video_id", row(video_id="x" * 65), None),
    ("missing_field", row(url=""), "v1"),
    ("missing_field", row(video_id=""), None),
    ("missing_field", row(dataset=""), "v1"),
    ("bad_number", row(trim_start="ten"), "v1"),
    ("bad_number", row(trim_start="-1"), "v1"),
    ("bad_number", row(trim_start="nan"), "v1"),
    ("bad_number", row(seq="7a"), "v1"),
    ("bad_number", row(intrinsics="0.8,x,0.5,0.5"), "v1"),
    ("bad_intrinsics", row(intrinsics="0.8,1.4,,"), "v1"),
    ("bad_intrinsics", row(intrinsics="0.8,1.4,1.5,0.5"), "v1"),
    ("bad_dataset", row(dataset="Slow TV"), "v1"),
    ("bad_category", row(category="Natural"), "v1"),
]


@pytest.mark.parametrize("reason,bad,video_id", BAD_ROWS)
def test_bad_row_is_reported_and_good_rows_load(tmp_path, reason, bad, video_id):
    path = write_lines(tmp_path / "c.csv", [HEADER, GOOD_ROW, bad, row(video_id="good2")])
    entries, problems = read_catalog(path)
    assert [e.video_id for e in entries] == ["good1", "good2"]
    assert [e.line for e in entries] == [2, 4]
    assert len(problems) == 1
    problem = problems[0]
    assert (problem.reason, problem.line, problem.video_id) == (reason, 3, video_id)
    assert "line 3" in problem.message
    assert problem.dataset is None  # catalog errors have always been tabled without a dataset


def test_problem_message_names_the_offending_value(tmp_path):
    path = write_lines(tmp_path / "c.csv", [HEADER, row(url="htp:/x"), row(video_id="v2", layout="3d")])
    _, problems = read_catalog(path)
    assert "'htp:/x'" in problems[0].message
    assert "'3d'" in problems[1].message


def test_duplicate_keeps_first_and_names_its_line(tmp_path):
    path = write_lines(
        tmp_path / "c.csv",
        [
            HEADER,
            row(video_id="a", url="https://example.com/first"),
            row(video_id="b"),
            row(video_id="a", url="https://example.com/second"),
            row(video_id="a"),
        ],
    )
    entries, problems = read_catalog(path)
    assert [(e.video_id, e.url) for e in entries] == [
        ("a", "https://example.com/first"),
        ("b", "https://example.com/v.mp4"),
    ]
    assert [(p.line, p.reason) for p in problems] == [(4, "duplicate_id"), (5, "duplicate_id")]
    assert all("line 2" in p.message for p in problems)


def test_blank_and_comment_lines_are_ignored_but_counted(tmp_path):
    path = write_lines(
        tmp_path / "c.csv",
        [
            "# catalog of test videos",
            HEADER,
            "",
            "  # indented comment",
            row(video_id="a"),
            ",,,,",
            row(video_id="b", layout="bogus"),
        ],
    )
    entries, problems = read_catalog(path)
    assert [(e.video_id, e.line) for e in entries] == [("a", 5)]
    assert [(p.line, p.reason) for p in problems] == [(7, "unknown_layout")]


def test_cells_are_stripped_and_optional_columns_may_be_absent(tmp_path):
    path = write_lines(
        tmp_path / "c.csv",
        [
            " url , video_id , dataset , category , trim_end_s ",
            " file:///data/a.mp4 , a , demo , driving , 12.5 ",
            "/data/b.mp4,b,demo,driving,",
        ],
    )
    entries, problems = read_catalog(path)
    assert problems == []
    assert entries[0] == CatalogEntry(
        video_id="a", url="file:///data/a.mp4", dataset="demo", category="driving", trim_end_s=12.5
    )
    assert entries[1].layout == "mono" and entries[1].trim_end_s is None


def test_extra_cells_beyond_header_are_a_problem(tmp_path):
    path = write_lines(
        tmp_path / "c.csv",
        ["video_id,url,dataset,category", "a,/x.mp4,demo,natural,surprise", "b,/y.mp4,demo,natural,,"],
    )
    entries, problems = read_catalog(path)
    assert [e.video_id for e in entries] == ["b"]
    assert [(p.line, p.reason, p.video_id) for p in problems] == [(2, "too_many_fields", "a")]


def test_every_layout_is_accepted(tmp_path):
    lines = [HEADER] + [row(video_id=f"v{i}", layout=layout) for i, layout in enumerate(LAYOUTS)]
    entries, problems = read_catalog(write_lines(tmp_path / "c.csv", lines))
    assert problems == []
    assert tuple(e.layout for e in entries) == LAYOUTS


# --- file-level errors ------------------------------------------------------------------


def test_unknown_header_column_is_an_error(tmp_path):
    path = write_lines(tmp_path / "c.csv", [HEADER + ",colour,fps", GOOD_ROW + ",red,30"])
    with pytest.raises(CatalogError, match="colour.*fps") as info:
        read_catalog(path)
    assert "c.csv" in str(info.value)


def test_missing_required_header_column_is_an_error(tmp_path):
    path = write_lines(tmp_path / "c.csv", ["seq,video_id,dataset,category", "0,a,demo,natural"])
    with pytest.raises(CatalogError, match="url") as info:
        read_catalog(path)
    assert "c.csv" in str(info.value)


def test_repeated_header_column_is_an_error(tmp_path):
    path = write_lines(tmp_path / "c.csv", ["video_id,url,dataset,category,url"])
    with pytest.raises(CatalogError, match="repeated"):
        read_catalog(path)


@pytest.mark.parametrize("content", ["", "\n\n# only a comment\n"])
def test_file_without_header_is_an_error(tmp_path, content):
    path = tmp_path / "c.csv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(CatalogError, match="header"):
        read_catalog(path)


def test_missing_file_is_an_error(tmp_path):
    with pytest.raises(CatalogError, match="nope.csv"):
        read_catalog(tmp_path / "nope.csv")


# --- write_catalog ----------------------------------------------------------------------


def full_entries() -> list[CatalogEntry]:
    """Entries that exercise every column, quoting and float formatting."""
    return [
        CatalogEntry(
            video_id="a_1",
            url="https://example.com/a?x=1&y=2",
            dataset="demo",
            category="natural",
            seq=3,
            subcategory="snow",
            layout="sbs_half",
            trim_start_s=30.0,
            trim_end_s=0.1,
            fx=0.82,
            fy=1.4583333333333333,
            cx=0.5,
            cy=0.49,
            license="CC-BY 4.0",
            title='Say "hi", world',
            notes="two\nlines",
        ),
        CatalogEntry(video_id="b-2", url="/data/b.mp4", dataset="demo", category="driving"),
    ]


def test_write_then_read_round_trips(tmp_path):
    entries = full_entries()
    path = write_catalog(entries, tmp_path / "sub" / "out.csv")
    assert path == tmp_path / "sub" / "out.csv"
    got, problems = read_catalog(path)
    assert problems == []
    assert got == entries
    assert [e.line for e in got] == [2, 4]  # the quoted two-line note spans lines 2-3
    text = path.read_text(encoding="utf-8")
    assert text.splitlines()[0] == ",".join(CATALOG_COLUMNS)
    assert text.splitlines()[1].startswith("00003,a_1,")


def test_write_is_atomic_and_leaves_no_temp_files(tmp_path):
    path = tmp_path / "out.csv"
    write_catalog(full_entries(), path)
    write_catalog(full_entries()[1:], path)
    assert [p.name for p in tmp_path.iterdir()] == ["out.csv"]
    assert oct(os.stat(path).st_mode & 0o777) == oct(0o644)
    assert [e.video_id for e in read_catalog(path)[0]] == ["b-2"]


def test_write_refuses_invalid_entries_and_keeps_old_file(tmp_path):
    path = write_catalog(full_entries(), tmp_path / "out.csv")
    before = path.read_text(encoding="utf-8")
    bad = CatalogEntry(video_id="ab", url="relative.mp4", dataset="demo", category="natural")
    with pytest.raises(CatalogError, match="relative.mp4"):
        write_catalog([bad], path)
    dup = full_entries()[1]
    with pytest.raises(CatalogError, match="duplicate"):
        write_catalog([dup, dup], path)
    assert path.read_text(encoding="utf-8") == before


# --- youtube_id / import_slowtv --------------------------------------------------------


@pytest.mark.parametrize(
    "url,expected",
    [
        ("https://www.youtube.com/watch?v=-tMVBF78RMU", "-tMVBF78RMU"),
        ("https://youtube.com/watch?feature=share&v=0_1PVGSF_BM", "0_1PVGSF_BM"),
        ("https://youtu.be/KZsYLAy-qJI?t=30", "KZsYLAy-qJI"),
        ("https://www.youtube.com/shorts/qkJMR-KSdic", "qkJMR-KSdic"),
        ("youtu.be/oSmUI3m2kLk", "oSmUI3m2kLk"),
        ("https://example.com/watch?v=oSmUI3m2kLk", None),
        ("https://www.youtube.com/watch?v=short", None),
        ("https://www.youtube.com/channel/UC123", None),
        ("not a url", None),
    ],
)
def test_youtube_id(url, expected):
    assert youtube_id(url) == expected


def slowtv_files(tmp_path: Path, pairs: list[tuple[str, str]]) -> tuple[Path, Path]:
    """urls.txt and categories.txt in SlowTV's published format."""
    urls = write_lines(tmp_path / "urls.txt", [f"https://www.youtube.com/watch?v={vid}" for vid, _ in pairs])
    cats = write_lines(tmp_path / "categories.txt", [cat for _, cat in pairs])
    return urls, cats


def test_import_slowtv_matches_catalog(tmp_path):
    pairs = SLOWTV_FIRST + [
        ("-tMVBF78RMU", "natural"),
        ("APlmTDb5lC8", "Natural-Rain"),
        ("GtPj1MpM_PE", "NATURAL-snow"),
    ]
    urls, cats = slowtv_files(tmp_path, pairs)
    imported = import_slowtv(urls, cats)
    expected = read_catalog(SLOWTV_CSV)[0][:3]
    assert imported[:3] == expected
    assert [(e.seq, e.category, e.subcategory) for e in imported[3:]] == [
        (3, "natural", None),
        (4, "natural", "rain"),
        (5, "natural", "snow"),
    ]


def test_import_slowtv_skips_blank_lines_and_falls_back_to_seq_ids(tmp_path):
    urls = write_lines(tmp_path / "urls.txt", ["", "https://youtu.be/oSmUI3m2kLk", "", "https://example.com/clip.mp4"])
    cats = write_lines(tmp_path / "categories.txt", ["Natural", "Underwater"])
    entries = import_slowtv(urls, cats, dataset="mine")
    assert [(e.seq, e.video_id, e.category) for e in entries] == [
        (0, "oSmUI3m2kLk", "natural"),
        (1, "mine_00001", "underwater"),
    ]
    assert entries[1].license is None
    out = write_catalog(entries, tmp_path / "mine.csv")
    assert read_catalog(out) == (entries, [])


def test_import_slowtv_rejects_mismatched_lengths(tmp_path):
    urls, cats = slowtv_files(tmp_path, SLOWTV_FIRST)
    write_lines(cats, ["Natural", "Natural"])
    with pytest.raises(CatalogError, match=r"urls\.txt: line 3"):
        import_slowtv(urls, cats)
    write_lines(cats, ["Natural"] * 4)
    with pytest.raises(CatalogError, match=r"categories\.txt: line 4"):
        import_slowtv(urls, cats)


@pytest.mark.parametrize(
    "url,category,where",
    [
        ("htp:/x", "Natural", r"urls\.txt: line 2"),
        ("https://www.youtube.com/watch?v=oSmUI3m2kLk", "Natural-Snow-Deep", r"categories\.txt: line 2"),
        ("https://www.youtube.com/watch?v=oSmUI3m2kLk", "Natural Snow", r"categories\.txt: line 2"),
    ],
)
def test_import_slowtv_rejects_unparsable_lines(tmp_path, url, category, where):
    urls = write_lines(tmp_path / "urls.txt", ["https://youtu.be/XCeeGLx_zX4", url])
    cats = write_lines(tmp_path / "categories.txt", ["Natural", category])
    with pytest.raises(CatalogError, match=where):
        import_slowtv(urls, cats)


def test_import_slowtv_rejects_repeated_video(tmp_path):
    urls, cats = slowtv_files(tmp_path, [SLOWTV_FIRST[0], SLOWTV_FIRST[0]])
    with pytest.raises(CatalogError, match="line 1"):
        import_slowtv(urls, cats)


@pytest.mark.parametrize(
    "field, value",
    [
        ("video_id", "../x"),
        ("video_id", "a/b"),
        ("video_id", ".."),
        ("dataset", "../up"),
        ("dataset", "a/b"),
        ("category", "x/../y"),
    ],
)
def test_an_entry_that_would_leave_the_data_root_cannot_be_built(field, value):
    """Not from a catalog row, and not in code either: these names become path components."""
    fields = dict(video_id="v", url="https://example.com/v.mp4", dataset="demo", category="natural")
    with pytest.raises(ValueError, match=field):
        CatalogEntry(**{**fields, field: value})


def test_titles_are_kept_as_text_and_never_become_paths(tmp_path):
    def titled(video_id: str, title: str) -> str:
        cells = dict(
            video_id=video_id, url="https://example.com/v.mp4", dataset="demo", category="natural", title=title
        )
        return ",".join(cells.get(name, "") for name in CATALOG_COLUMNS)

    path = write_lines(tmp_path / "c.csv", [HEADER, titled("v1", "../../etc/passwd"), titled("v2", "a/b")])
    entries, problems = read_catalog(path)
    assert problems == [] and [e.title for e in entries] == ["../../etc/passwd", "a/b"]
