"""Tests for pipeline.doctor: each check on this machine and on broken setups (loopback only)."""

from __future__ import annotations

import datetime as dt
import http.server

import pytest

from pipeline import doctor
from pipeline.config import DownloadConfig
from pipeline.synthetic.demo import serve_handler


def test_every_check_has_a_name_a_status_and_a_detail(tmp_path):
    checks = doctor.run_checks(tmp_path, env={})
    names = [c.name for c in checks]
    assert names[:5] == ["ffmpeg", "ffprobe", "ffmpeg_codecs", "pyav", "image_codecs"]
    assert {"yt_dlp", "yt_dlp_ejs", "js_runtime", "torch", "prefect_api", "data_root"} <= set(names)
    assert {"optional:pycolmap", "optional:open_clip", "optional:ray"} <= set(names)
    assert len(names) == len(set(names))
    assert all(c.status in ("ok", "warn", "fail") and c.detail for c in checks)
    assert not doctor.has_blocker(checks), [c for c in checks if c.status == "fail"]


def test_the_js_runtime_is_the_deno_of_this_environment_whatever_path_says(monkeypatch, tmp_path):
    import deno

    monkeypatch.setenv("PATH", str(tmp_path))  # no deno on PATH
    check = doctor.check_js_runtime(DownloadConfig())
    assert check.status == "ok"
    assert check.detail.startswith("deno 2.") and check.detail.endswith(f"at {deno.find_deno_bin()}")


def test_a_missing_or_disabled_js_runtime_is_a_warning(monkeypatch, tmp_path):
    assert doctor.check_js_runtime(DownloadConfig(js_runtime=None)).status == "warn"
    monkeypatch.setenv("PATH", str(tmp_path))
    assert doctor.check_js_runtime(DownloadConfig(js_runtime="node")).status == "warn"  # not installed here
    broken = DownloadConfig(js_runtime_path=str(tmp_path / "no-deno"))
    assert doctor.check_js_runtime(broken).status == "warn"


def test_ffmpeg_missing_is_a_blocker(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert doctor.check_executable("ffmpeg").status == "fail"
    assert doctor.check_ffmpeg_codecs().status == "fail"


def test_yt_dlp_age_comes_from_its_version_date():
    assert doctor.yt_dlp_release_date("2026.11.23") == dt.date(2026, 11, 23)
    assert doctor.yt_dlp_release_date("2025.1.2.1") == dt.date(2025, 1, 2)
    assert doctor.yt_dlp_release_date("nightly") is None
    from yt_dlp.version import __version__

    released = doctor.yt_dlp_release_date(__version__)
    assert released is not None
    fresh = doctor.check_yt_dlp(today=released + dt.timedelta(days=5))
    assert (fresh.status, fresh.detail) == ("ok", f"yt-dlp {__version__}, 5 days old")
    stale = doctor.check_yt_dlp(today=released + dt.timedelta(days=400))
    assert stale.status == "warn" and "400 days old" in stale.detail and "pip install -U" in stale.detail


def test_ejs_scripts_are_present():
    check = doctor.check_ejs()
    assert check.status == "ok" and check.detail.startswith("yt-dlp-ejs ")


def test_data_root_writable_unwritable_and_remote(tmp_path):
    ok = doctor.check_data_root(tmp_path / "new" / "root")
    assert ok.status in ("ok", "warn") and "writable" in ok.detail and "GiB free" in ok.detail
    assert not (tmp_path / "new").exists()  # the doctor creates nothing
    (tmp_path / "file").write_text("x")
    assert doctor.check_data_root(tmp_path / "file" / "root").status == "fail"
    assert doctor.check_data_root("s3://bucket/root").status == "warn"


def test_data_root_low_on_space_is_a_warning(tmp_path, monkeypatch):
    monkeypatch.setattr(doctor, "MIN_FREE_BYTES", 1 << 62)
    assert doctor.check_data_root(tmp_path).status == "warn"


class _Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        code = 200 if self.path == "/api/health" else 404
        self.send_response(code)
        self.send_header("Content-Length", "4")
        self.end_headers()
        self.wfile.write(b"true")

    def log_message(self, format, *args) -> None:  # noqa: A002
        pass


def test_prefect_api_health_is_asked_only_when_set():
    assert doctor.check_prefect_api(None).status == "ok"
    with serve_handler(_Health) as url:
        assert doctor.check_prefect_api(f"{url}/api").status == "ok"
        assert doctor.check_prefect_api(f"{url}/wrong").status == "fail"
    import socket

    with socket.socket() as gone:
        gone.bind(("127.0.0.1", 0))
        port = gone.getsockname()[1]
    down = doctor.check_prefect_api(f"http://127.0.0.1:{port}/api", timeout_s=1)
    assert down.status == "fail" and "does not answer" in down.detail


@pytest.mark.parametrize("module", ["pycolmap", "open_clip", "ray"])
def test_optional_parts(module, monkeypatch):
    check = doctor.check_optional(module, "something")
    assert check.name == f"optional:{module}" and check.status in ("ok", "warn")
    monkeypatch.setattr(doctor.importlib.util, "find_spec", lambda name: None)
    assert doctor.check_optional(module, "something").status == "warn"


def test_torch_absent_is_a_warning_without_importing_it(monkeypatch):
    import sys

    monkeypatch.setattr(doctor.importlib.util, "find_spec", lambda name: None)
    monkeypatch.setitem(sys.modules, "torch", None)  # an import would raise
    assert doctor.check_torch().status == "warn"


def test_pyav_and_its_decoders_are_checked(monkeypatch):
    import av

    assert doctor._has_decoder(av, "h264") and not doctor._has_decoder(av, "no-such-codec")
    check = doctor.check_pyav()
    assert check.status == "ok" and "PyAV" in check.detail and "FFmpeg" in check.detail
    monkeypatch.setattr(doctor, "_has_decoder", lambda module, name: name != "h264")
    assert doctor.check_pyav().status == "fail"  # without h264 nothing decodes
    monkeypatch.setattr(doctor, "_has_decoder", lambda module, name: name != "av1")
    warned = doctor.check_pyav()
    assert warned.status == "warn" and "av1" in warned.detail
