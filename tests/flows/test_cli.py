"""The depthcurate command line: help, catalog import, stats, verify, and curate in a real subprocess."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from flows.cli import main
from pipeline.corpus.verify import verify_dataset
from pipeline.io.data_root import DataRoot
from pipeline.sources.catalog import CatalogEntry, read_catalog, write_catalog

REPO = Path(__file__).resolve().parents[2]
DEPTHCURATE = str(Path(sys.executable).with_name("depthcurate"))


@pytest.mark.parametrize(
    "argv",
    [[], ["demo"], ["curate"], ["catalog", "import-slowtv"], ["stats"], ["verify"], ["recipe", "export"]]
    + [["recipe", "build"]],
)
def test_help_is_available_everywhere(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--help"])
    assert exit_.value.code == 0
    assert "usage: depthcurate" in capsys.readouterr().out


def test_import_slowtv_reproduces_the_shipped_catalog(tmp_path, capsys):
    shipped, _ = read_catalog(REPO / "manifests" / "sources" / "slowtv.csv")
    (tmp_path / "urls.txt").write_text("".join(f"{e.url}\n" for e in shipped))
    (tmp_path / "categories.txt").write_text(
        "".join(f"{e.category.title()}{'-' + e.subcategory.title() if e.subcategory else ''}\n" for e in shipped)
    )
    out = tmp_path / "slowtv.csv"
    code = main(
        [
            "catalog",
            "import-slowtv",
            "--urls",
            str(tmp_path / "urls.txt"),
            "--categories",
            str(tmp_path / "categories.txt"),
            "-o",
            str(out),
        ]
    )
    assert code == 0 and "wrote 40 entries" in capsys.readouterr().out
    assert out.read_bytes() == (REPO / "manifests" / "sources" / "slowtv.csv").read_bytes()


def test_import_slowtv_rejects_mismatched_files(tmp_path, capsys):
    (tmp_path / "urls.txt").write_text("https://www.youtube.com/watch?v=oSmUI3m2kLk\n")
    (tmp_path / "categories.txt").write_text("Natural\nDriving\n")
    code = main(
        [
            "catalog",
            "import-slowtv",
            "--urls",
            str(tmp_path / "urls.txt"),
            "--categories",
            str(tmp_path / "categories.txt"),
            "-o",
            str(tmp_path / "x.csv"),
        ]
    )
    assert code == 1 and "categories.txt" in capsys.readouterr().err


def test_stats_and_verify_on_the_demo_dataset(demo_run, capsys):
    assert main(["stats", "--data-root", str(demo_run)]) == 0
    out = capsys.readouterr().out
    assert "videos: 6 ok, 9 failed" in out and "duplicate_cross_video" in out and "demo/missing" in out
    assert main(["stats", "--data-root", str(demo_run), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["counts"]["videos"]["ok"] == 6
    assert main(["verify", "--data-root", str(demo_run)]) == 0


def test_verify_names_a_corrupted_shard(demo_run, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(demo_run, copy, ignore=shutil.ignore_patterns("demo_sources", "videos"))
    shard = copy / "shards" / "demo" / "tripod" / "part-00000.parquet"
    shard.write_bytes(shard.read_bytes()[:-100] + b"\0" * 100)
    assert main(["verify", "--data-root", str(copy)]) == 1
    assert "shards/demo/tripod/part-00000.parquet" in capsys.readouterr().out


def test_stats_on_a_non_dataset_is_a_clear_error(tmp_path, capsys):
    assert main(["stats", "--data-root", str(tmp_path)]) == 1
    assert "no dataset.json" in capsys.readouterr().err


def _catalog(path: Path, base_url: str, n: int) -> Path:
    entries = [
        CatalogEntry(video_id=f"walk{i}", url=f"{base_url}/walk.mp4", dataset="cli", category="natural")
        for i in range(n)
    ]
    entries.append(CatalogEntry(video_id="gone", url=f"{base_url}/gone.mp4", dataset="cli", category="natural"))
    return write_catalog(entries, path)


def _curate(catalog: Path, root: Path, config: Path, api_url: str | None = None) -> subprocess.Popen:
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    if api_url:
        env["PREFECT_API_URL"] = api_url  # the session's test server: no ephemeral server start per run
    # A session of its own, so a SIGKILL of the group takes the flow and its ffmpeg children, like a crash.
    return subprocess.Popen(
        [DEPTHCURATE, "curate", "--catalog", str(catalog), "--data-root", str(root), "--config", str(config)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


@pytest.fixture
def cli_config(tmp_path) -> Path:
    path = tmp_path / "config.yaml"
    # Small row groups and parts: a video is written as several row groups, so a kill can land mid-shard.
    path.write_text(
        "sample: {fps: 10, max_height: 96, trim: {head_s: 0.5, tail_s: 0.5}, decimate: null}\n"
        "split: {gap_frames: 2}\nrun: {workers: 1}\ndownload: {attempts: 1}\n"
        "write: {row_group_bytes: 65536, part_bytes: 1048576}\n"
    )
    return path


@pytest.fixture
def api_url(prefect_harness) -> str:
    import prefect.settings

    return prefect.settings.PREFECT_API_URL.value()


def _records(root: Path) -> list[Path]:
    return sorted((root / "stats" / "videos" / "cli").glob("*.json"))


def _shard_temporary(root: Path) -> bool:
    return any("tmp-" in p.name for p in (root / "shards").rglob(".*"))


def _kill_when(proc: subprocess.Popen, condition) -> None:
    """SIGKILL the run's process group once `condition()` holds (or when it ends by itself first)."""
    deadline = time.monotonic() + 240
    while proc.poll() is None and time.monotonic() < deadline and not condition():
        time.sleep(0.01)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()


def _published(root: Path) -> dict[str, bytes]:
    """Every file's bytes except yt-dlp's .info.json (it stamps the extraction time); archive lines as a set."""
    files = {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.name.endswith(".info.json")
    }
    for key in [k for k in files if k.endswith("archive.tsv")]:
        lines = files[key].decode().splitlines()
        assert len(lines) == len(set(lines)), f"a download was done twice: {lines}"
        files[key] = "\n".join(sorted(lines)).encode()
    return files


@pytest.mark.slow
def test_killed_at_three_points_then_rerun_matches_an_uninterrupted_run(http_root, tmp_path, cli_config, api_url):
    """kill -9 mid shard write, between videos and during publish; the rerun redoes only what was unfinished.

    The 20-point version with downloads interrupted too is benchmarks/bench_crash_safety.py.
    """
    catalog = _catalog(tmp_path / "catalog.csv", http_root, 4)
    uninterrupted = _curate(catalog, tmp_path / "clean", cli_config, api_url)
    out, _ = uninterrupted.communicate(timeout=300)
    assert uninterrupted.returncode == 0, out
    assert "videos: 4 ok, 1 failed" in out

    crashed = tmp_path / "crashed"
    for condition in (
        lambda: _shard_temporary(crashed),  # mid shard write of the first video
        lambda: len(_records(crashed)) >= 3,  # between videos
        lambda: len(_records(crashed)) == 5,
    ):  # every video done: publish is running or next
        finished = {p: p.stat().st_mtime_ns for p in _records(crashed)}
        _kill_when(_curate(catalog, crashed, cli_config, api_url), condition)
        assert all(p.stat().st_mtime_ns == t for p, t in finished.items()), "a finished video was redone"
        for visible in crashed.rglob("*.parquet"):
            pq.read_metadata(visible)  # whatever a reader can see is a whole file
    finished = {
        p: p.stat().st_mtime_ns
        for p in crashed.rglob("*")
        if p.is_file() and (p in _records(crashed) or p.match("shards/*/*/*.parquet"))
    }
    rerun = _curate(catalog, crashed, cli_config, api_url)
    out, _ = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, out
    assert all(p.stat().st_mtime_ns == t for p, t in finished.items()), "a finished video was redone"
    assert _published(crashed) == _published(tmp_path / "clean")
    assert not [p for p in crashed.rglob(".*") if p.is_file() and "tmp-" in p.name]
    assert main(["verify", "--data-root", str(crashed)]) == 0


# ------------------------------------------------------------------ doctor


def test_doctor_json_shape(tmp_path, capsys, monkeypatch):
    import deno

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.setenv("PATH", os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if "venv" not in p))
    code = main(["doctor", "--json", "--data-root", str(tmp_path)])
    report = json.loads(capsys.readouterr().out)
    assert set(report) == {"ok", "checks"} and report["ok"] is True and code == 0
    assert all(set(c) == {"name", "status", "detail"} for c in report["checks"])
    by_name = {c["name"]: c for c in report["checks"]}
    assert by_name["js_runtime"]["status"] == "ok" and deno.find_deno_bin() in by_name["js_runtime"]["detail"]
    assert by_name["data_root"]["detail"].startswith(str(tmp_path))
    assert by_name["pyav"]["status"] == "ok" and "FFmpeg" in by_name["pyav"]["detail"]


def test_doctor_fails_on_an_unwritable_data_root(tmp_path, capsys):
    (tmp_path / "file").write_text("not a directory")
    code = main(["doctor", "--data-root", str(tmp_path / "file" / "data")])
    out = capsys.readouterr().out
    assert code == 1
    assert any(line.startswith("FAIL") and "data_root" in line for line in out.splitlines())


def test_doctor_reads_the_js_runtime_from_the_config(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("download:\n  js_runtime: null\n")
    assert main(["doctor", "--json", "--config", str(config), "--data-root", str(tmp_path)]) == 0
    checks = {c["name"]: c for c in json.loads(capsys.readouterr().out)["checks"]}
    assert checks["js_runtime"]["status"] == "warn"
    config.write_text("download:\n  js_runtimes: {}\n")  # unknown key
    assert main(["doctor", "--config", str(config)]) == 1


def test_curate_without_a_server_runs_the_driver_without_importing_prefect(http_root, tmp_path, cli_config):
    """No PREFECT_API_URL: the Prefect-free driver, so no temporary server start; the dataset is complete."""
    catalog = write_catalog(
        [CatalogEntry(video_id="walk", url=f"{http_root}/walk.mp4", dataset="cli", category="natural")],
        tmp_path / "catalog.csv",
    )
    code = (
        "import sys; from flows.cli import main; "
        f"rc = main(['curate', '--catalog', {str(catalog)!r}, '--data-root', {str(tmp_path / 'root')!r}, "
        f"'--config', {str(cli_config)!r}]); print('prefect' in sys.modules); sys.exit(rc)"
    )
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().splitlines()[-1] == "False"
    assert "videos: 1 ok" in run.stdout and verify_dataset(DataRoot(tmp_path / "root")) == []


def test_a_bad_config_is_one_clear_line_before_anything_runs(tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text("sample: {fpss: 10}\n")
    catalog = tmp_path / "catalog.csv"
    catalog.write_text("video_id,url,dataset,category\n")
    assert main(["curate", "--catalog", str(catalog), "--data-root", str(tmp_path / "r"), "--config", str(config)]) == 2
    assert "fpss" in capsys.readouterr().err and not (tmp_path / "r").exists()


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.startswith("depthcurate ")


def test_recipe_export_then_build_from_the_command_line(video_dir, tmp_path, capsys):
    sources = tmp_path / "sources"
    sources.mkdir()
    shutil.copy(video_dir / "walk.mp4", sources / "walk.mp4")
    catalog = write_catalog(
        [CatalogEntry(video_id="walk", url=str(sources / "walk.mp4"), dataset="test", category="natural")],
        tmp_path / "catalog.csv",
    )
    config = tmp_path / "config.yaml"
    config.write_text(
        f"download: {{local_roots: ['{sources}']}}\nsample: {{max_height: 96, trim: {{head_s: 0.5, tail_s: 0.5}}}}\n"
    )
    original = tmp_path / "original"
    assert main(["curate", "--catalog", str(catalog), "--data-root", str(original), "--config", str(config)]) == 0
    recipe = tmp_path / "walk.recipe.json.gz"
    assert main(["recipe", "export", "--data-root", str(original), "--catalog", str(catalog), "-o", str(recipe)]) == 0
    assert "wrote" in capsys.readouterr().out
    assert main(["recipe", "build", str(recipe), "--data-root", str(tmp_path / "rebuilt")]) == 0
    out = capsys.readouterr().out
    assert "every frame of the recipe was rebuilt" in out and "test/walk:" in out
    # Another source behind the same catalog row: exit code 1 and the frames named.
    subprocess.run(
        ["ffmpeg", "-loglevel", "error", "-y", "-i", str(video_dir / "cut.mp4"), "-t", "6", str(sources / "walk.mp4")],
        check=True,
    )
    assert main(["recipe", "build", str(recipe), "--data-root", str(tmp_path / "other")]) == 1
    assert "changed:" in capsys.readouterr().out


# ------------------------------------------------------------------ exit codes


def _refused_url() -> str:
    """A loopback URL nothing listens on: connection refused, a transient download error."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v.mp4"


def _exit_catalog(path: Path, http_root: str, *ids: str) -> Path:
    """A catalog of named rows: walk (ok), gone (HTTP 404, permanent), refused (transient), broken (ok until
    ingest is made to raise), bad_row (a catalog error: a URL scheme the catalog refuses)."""
    urls = {"walk": f"{http_root}/walk.mp4", "gone": f"{http_root}/gone.mp4", "broken": f"{http_root}/walk.mkv"}
    entries = [
        CatalogEntry(video_id=i, url=urls.get(i) or _refused_url(), dataset="cli", category="natural")
        for i in ids
        if i != "bad_row"
    ]
    write_catalog(entries, path)
    if "bad_row" in ids:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(",bad_row,ftp://127.0.0.1/x.mp4,cli,natural,,,,,,,,,,,\n")
    return path


def _break_ingest(monkeypatch, video_id: str = "broken") -> None:
    """Ingest raises an unexpected exception for `video_id`: the video ends as internal_error."""
    import pipeline.driver

    ingest = pipeline.driver.ingest_video

    def failing(entry, *args, **kwargs):
        if entry.video_id == video_id:
            raise RuntimeError("a bug in ingest")
        return ingest(entry, *args, **kwargs)

    monkeypatch.setattr(pipeline.driver, "ingest_video", failing)


def _curate_main(catalog: Path, root: Path, config: Path, *extra: str) -> int:
    return main(["curate", "--catalog", str(catalog), "--data-root", str(root), "--config", str(config), *extra])


@pytest.fixture
def driver_path(monkeypatch) -> None:
    monkeypatch.delenv("PREFECT_API_URL", raising=False)  # the Prefect-free driver


@pytest.mark.parametrize(
    "ids, code, strict_code",
    [
        (("walk",), 0, 0),
        (("walk", "gone"), 0, 4),  # a permanent failure: only --strict fails the run
        (("walk", "bad_row"), 0, 4),  # a catalog error counts as a failure under --strict
        (("walk", "refused"), 3, 3),  # a transient download error: 3, with --strict too
    ],
    ids=["all-ok", "permanent", "catalog-error", "transient"],
)
def test_curate_exit_codes(driver_path, http_root, tmp_path, cli_config, capsys, ids, code, strict_code):
    catalog = _exit_catalog(tmp_path / "catalog.csv", http_root, *ids)
    assert _curate_main(catalog, tmp_path / "root", cli_config) == code
    err = capsys.readouterr().err
    assert ("exit code 3" in err) == (code == 3) and ("cli/refused (download_failed)" in err) == (code == 3)
    assert _curate_main(catalog, tmp_path / "root", cli_config, "--strict") == strict_code  # a rerun
    err = capsys.readouterr().err
    assert ("exit code 4 (--strict)" in err) == (strict_code == 4)


def test_an_internal_error_exits_3_and_the_rest_is_published(
    driver_path, http_root, tmp_path, cli_config, monkeypatch, capsys
):
    _break_ingest(monkeypatch)
    catalog = _exit_catalog(tmp_path / "catalog.csv", http_root, "walk", "broken")
    assert _curate_main(catalog, tmp_path / "root", cli_config) == 3
    captured = capsys.readouterr()
    assert "videos: 1 ok, 1 failed" in captured.out and "cli/broken (internal_error)" in captured.err
    table = {r["video_id"]: r["status"] for r in pq.read_table(DataRoot(tmp_path / "root").videos_table).to_pylist()}
    assert table == {"walk": "ok", "broken": "internal_error"}
    assert verify_dataset(DataRoot(tmp_path / "root")) == []


def test_exit_codes_are_documented(capsys):
    with pytest.raises(SystemExit):
        main(["curate", "--help"])
    out = capsys.readouterr().out
    assert "--strict" in out and "exit status:" in out
    assert all(f"\n  {code}  " in out for code in (0, 1, 2, 3, 4))


def test_the_demo_fails_only_for_good_so_it_exits_0_or_4_under_strict(demo_run):
    from flows.outcomes import run_outcome

    outcome = run_outcome(DataRoot(demo_run))
    assert (outcome.exit_code(), outcome.exit_code(strict=True)) == (0, 4)
    assert outcome.message == "6 ok, 9 failed (0 retryable, 1 catalog error)"


@pytest.mark.slow
def test_the_flow_and_the_driver_give_the_same_exit_codes(
    prefect_harness, http_root, tmp_path, cli_config, monkeypatch, capsys
):
    """`--prefect` runs the curate flow in this process (on the session's server): the same codes as the driver."""
    _break_ingest(monkeypatch)
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    cases = {
        "permanent": (("walk", "gone", "bad_row"), False, 0),
        "strict": (("walk", "gone", "bad_row"), True, 4),
        "internal-error": (("walk", "broken"), False, 3),
    }
    for name, (ids, strict, code) in cases.items():
        catalog = _exit_catalog(tmp_path / f"{name}.csv", http_root, *ids)
        flags = ["--strict"] if strict else []
        codes = [
            _curate_main(catalog, tmp_path / f"{name}-{path}", cli_config, *flags, *extra)
            for path, extra in (("driver", []), ("flow", ["--prefect"]))
        ]
        assert codes == [code, code], name
        out = capsys.readouterr().out
        assert out.count(f"videos: 1 ok, {len(ids) - 1} failed") == 2, out


def test_report_writes_one_html_page_and_names_a_missing_dataset(train_root, tmp_path, capsys):
    out = tmp_path / "report.html"
    assert main(["report", "--data-root", str(train_root), "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {out.as_uri()}"
    page = out.read_text()
    assert page.startswith("<!DOCTYPE html>") and '<section id="sheets">' in page
    assert main(["report", "--data-root", str(tmp_path / "nothing")]) == 1
    assert "no dataset.json under" in capsys.readouterr().err
    assert not (tmp_path / "nothing").exists()
