"""Tests for pipeline.sources.download against loopback HTTP servers (no network)."""

from __future__ import annotations

import contextlib
import http.server
import json
import shutil
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yt_dlp

import pipeline.sources.download as download
from pipeline.config import DownloadConfig
from pipeline.errors import VideoError
from pipeline.sources.catalog import CatalogEntry
from pipeline.sources.download import DownloadArchive, DownloadResult, _classify, download_video
from pipeline.synthetic.demo import serve_directory, serve_handler

CFG = DownloadConfig()


def _entry(video_id: str, url: str) -> CatalogEntry:
    return CatalogEntry(video_id=video_id, url=url, dataset="test", category="natural")


@contextlib.contextmanager
def _server(respond: Callable[[http.server.BaseHTTPRequestHandler], None]) -> Iterator[tuple[str, list[dict]]]:
    """A loopback server whose GET/HEAD answers come from `respond`; yields (base URL, request log)."""
    log: list[dict] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            log.append({"method": self.command, "path": self.path, "cookie": self.headers.get("Cookie")})
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                respond(self)

        do_HEAD = do_GET

        def log_message(self, format, *args) -> None:  # noqa: A002
            pass

    with serve_handler(Handler) as url:
        yield url, log


def _send(handler, status: int, body: bytes = b"", content_type: str = "video/mp4") -> None:
    handler.send_response(status)
    handler.send_header("Content-Type", content_type)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    if handler.command == "GET":
        handler.wfile.write(body)


def _video_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.suffix in (".mp4", ".mkv", ".part"))


# ------------------------------------------------------------------ successful downloads


def test_downloads_into_videos_dir_named_by_catalog_id(http_root, video_dir, tmp_path):
    entry = _entry("walk_01", f"{http_root}/walk.mp4")
    result = download_video(entry, tmp_path / "videos", CFG)
    assert isinstance(result, DownloadResult)
    assert result.cached is False
    assert result.path == tmp_path / "videos" / "walk_01.mp4"
    assert result.path.read_bytes() == (video_dir / "walk.mp4").read_bytes()
    assert result.info_path == tmp_path / "videos" / "walk_01.info.json"
    info = json.loads(result.info_path.read_text())
    assert info["webpage_url"] == entry.url
    assert (tmp_path / "videos" / "archive.tsv").read_text() == "walk_01\twalk_01.mp4\n"
    assert _video_files(tmp_path / "videos") == ["walk_01.mp4"]  # no .part left over


def test_container_extension_follows_the_source(http_root, video_dir, tmp_path):
    result = download_video(_entry("other", f"{http_root}/walk.mkv"), tmp_path, CFG)
    assert result.path == tmp_path / "other.mkv"
    assert result.path.read_bytes() == (video_dir / "walk.mkv").read_bytes()


def test_second_call_is_cached_even_when_the_source_is_gone(video_dir, tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    shutil.copy(video_dir / "walk.mp4", served / "walk.mp4")
    videos = tmp_path / "videos"
    with serve_directory(served) as url:
        entry = _entry("walk", f"{url}/walk.mp4")
        first = download_video(entry, videos, CFG)
        (served / "walk.mp4").unlink()
        calls: list[tuple[float, str]] = []
        second = download_video(entry, videos, CFG, progress=lambda f, m: calls.append((f, m)))
        assert second == DownloadResult(first.path, first.info_path, cached=True)
        assert calls == []  # nothing fetched
        assert second.path.read_bytes() == (video_dir / "walk.mp4").read_bytes()

        # The archive only counts files still on disk: once deleted, the video is fetched again (and is gone now).
        first.path.unlink()
        with pytest.raises(VideoError) as caught:
            download_video(entry, videos, CFG)
        assert caught.value.reason == "download_failed" and "404" in caught.value.message


def test_same_file_name_under_different_urls_downloads_both(video_dir, tmp_path):
    """yt-dlp's own archive keys direct links by file name ("clip"); ours keys them by catalog id."""
    served = tmp_path / "served"
    (served / "a").mkdir(parents=True)
    (served / "b").mkdir()
    shutil.copy(video_dir / "walk.mp4", served / "a" / "clip.mp4")
    shutil.copy(video_dir / "cut.mp4", served / "b" / "clip.mp4")
    videos = tmp_path / "videos"
    with serve_directory(served) as url:
        a = download_video(_entry("clip_a", f"{url}/a/clip.mp4"), videos, CFG)
        b = download_video(_entry("clip_b", f"{url}/b/clip.mp4"), videos, CFG)
    assert (a.cached, b.cached) == (False, False)
    assert (a.path.name, b.path.name) == ("clip_a.mp4", "clip_b.mp4")
    assert a.path.read_bytes() == (video_dir / "walk.mp4").read_bytes()
    assert b.path.read_bytes() == (video_dir / "cut.mp4").read_bytes()
    assert DownloadArchive(videos / "archive.tsv").lookup("clip_a") == a.path
    assert DownloadArchive(videos / "archive.tsv").lookup("clip_b") == b.path


def test_progress_ends_at_one(http_root, tmp_path):
    calls: list[tuple[float, str]] = []
    download_video(
        _entry("walk", f"{http_root}/walk.mp4"),
        tmp_path,
        CFG,
        progress=lambda fraction, message: calls.append((fraction, message)),
    )
    assert calls, "progress was never reported"
    assert calls[-1][0] == 1.0
    assert all(0.0 <= f <= 1.0 and isinstance(m, str) and m for f, m in calls)
    assert [f for f, _ in calls] == sorted(f for f, _ in calls)


# ------------------------------------------------------------------ failures


def test_http_404_is_a_final_download_failure(http_root, tmp_path):
    with pytest.raises(VideoError) as caught:
        download_video(_entry("missing", f"{http_root}/missing.mp4"), tmp_path, CFG)
    err = caught.value
    assert err.reason == "download_failed"
    assert err.transient is False
    assert "404" in err.message
    assert not err.message.startswith("ERROR")
    assert _video_files(tmp_path) == []
    assert DownloadArchive(tmp_path / "archive.tsv").lookup("missing") is None


def test_html_page_is_not_a_video(tmp_path):
    page = b"<html><head><title>hello</title></head><body><p>no video here</p></body></html>"
    with _server(lambda h: _send(h, 200, page, "text/html")) as (url, _), pytest.raises(VideoError) as caught:
        download_video(_entry("page", f"{url}/page.html"), tmp_path, CFG)
    assert caught.value.reason == "not_a_video"
    assert caught.value.transient is False
    assert _video_files(tmp_path) == []


def test_http_503_is_transient(tmp_path):
    with _server(lambda h: _send(h, 503, b"")) as (url, log), pytest.raises(VideoError) as caught:
        download_video(_entry("busy", f"{url}/busy.mp4"), tmp_path, CFG)
    assert caught.value.reason == "download_failed"
    assert caught.value.transient is True
    assert "503" in caught.value.message
    assert log  # the server was asked
    assert DownloadArchive(tmp_path / "archive.tsv").lookup("busy") is None


def test_503_during_the_transfer_is_transient(video_dir, tmp_path):
    """The first request (yt-dlp looking at the URL) succeeds, the download itself keeps getting 503."""
    data = (video_dir / "walk.mp4").read_bytes()
    answered: list[int] = []

    def respond(h):
        answered.append(1)
        if len(answered) == 1:
            _send(h, 200, data)
        else:
            _send(h, 503, b"")

    with _server(respond) as (url, log), pytest.raises(VideoError) as caught:
        download_video(_entry("flaky", f"{url}/flaky.mp4"), tmp_path, CFG)
    assert caught.value.transient is True
    assert "503" in caught.value.message
    assert len(log) >= 3  # the transfer was retried before giving up
    assert not (tmp_path / "flaky.mp4").exists()
    assert DownloadArchive(tmp_path / "archive.tsv").lookup("flaky") is None


def test_read_timeout_is_transient(tmp_path):
    with socket.socket() as silent:  # accepts connections (backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/slow.mp4"
        with pytest.raises(VideoError) as caught:
            download_video(_entry("slow", url), tmp_path, DownloadConfig(socket_timeout_s=0.2))
    assert caught.value.reason == "download_failed"
    assert caught.value.transient is True
    assert "timed out" in caught.value.message.lower()


def test_connection_refused_is_transient(tmp_path):
    with socket.socket() as closed:  # a port nobody listens on once this socket is gone
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    with pytest.raises(VideoError) as caught:
        download_video(_entry("refused", f"http://127.0.0.1:{port}/v.mp4"), tmp_path, CFG)
    assert caught.value.reason == "download_failed" and caught.value.transient is True
    assert "refused" in caught.value.message.lower()
    assert DownloadArchive(tmp_path / "archive.tsv").lookup("refused") is None


def test_a_server_that_stalls_mid_transfer_times_out(video_dir, tmp_path):
    """Headers and the first bytes arrive, then nothing: the socket timeout (config) ends it, retryable."""
    data = (video_dir / "walk.mp4").read_bytes()
    release = threading.Event()

    def respond(h):
        h.send_response(200)
        h.send_header("Content-Type", "video/mp4")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        if h.command == "GET":
            h.wfile.write(data[:4096])
            h.wfile.flush()
            release.wait(30)  # stall with the connection open

    try:
        with _server(respond) as (url, log), pytest.raises(VideoError) as caught:
            download_video(_entry("stall", f"{url}/stall.mp4"), tmp_path, DownloadConfig(socket_timeout_s=0.3))
    finally:
        release.set()
    assert caught.value.reason == "download_failed" and caught.value.transient is True
    assert "timed out" in caught.value.message.lower()
    assert not (tmp_path / "stall.mp4").exists() and DownloadArchive(tmp_path / "archive.tsv").lookup("stall") is None


class _Quiet:
    def debug(self, msg: str) -> None:
        pass

    warning = info = error = debug


@pytest.mark.parametrize(
    "reason, expected, transient",
    [
        ("Private video. Sign in if you've been granted access to this video", "private_video", False),
        ("Video unavailable. This video has been removed by the uploader", "video_removed", False),
        (
            "Video unavailable. This video is no longer available because the YouTube account associated with this "
            "video has been terminated.",
            "video_removed",
            False,
        ),
        ("This video has been removed for violating YouTube's Terms of Service", "video_removed", False),
        ("Video unavailable. This video is not available", "video_unavailable", False),
        ("Sign in to confirm your age. This video may be inappropriate for some users.", "age_restricted", False),
        (
            "Join this channel to get access to members-only content like this video, and other exclusive perks.",
            "members_only",
            False,
        ),
        (
            "Sign in to confirm you\u2019re not a bot. Use --cookies-from-browser or --cookies for the authentication.",
            "youtube_bot_check",
            True,
        ),
    ],
)
def test_youtube_refusals_as_yt_dlp_reports_them(reason, expected, transient):
    """The error yt-dlp raises when its YouTube extractor gives up: its own exception classes and formatting."""
    from yt_dlp.utils import DownloadError, ExtractorError

    with yt_dlp.YoutubeDL({"quiet": True, "logger": _Quiet()}) as ydl, pytest.raises(DownloadError) as raised:
        ydl.report_error(str(ExtractorError(reason, expected=True, video_id="oSmUI3m2kLk", ie="youtube")))
    err = _classify(str(raised.value))
    assert (err.reason, err.transient) == (expected, transient)
    assert err.message.startswith("[youtube] oSmUI3m2kLk: ")


# ------------------------------------------------------------------ YouTube, offline: a fake player response

YOUTUBE_URL = "https://www.youtube.com/watch?v=oSmUI3m2kLk"


def _youtube_refuses(reason: str | None = None, geo: str | None = None):
    """YoutubeIE._real_extract ending the way the real one does when the player response has no formats: the
    playability reason, YouTube's cookies hint added to "sign in" reasons, raised by yt-dlp's own helpers."""
    from yt_dlp.utils import remove_end

    def extract(self, url):
        if geo:
            self.raise_geo_restricted(geo, ["NO"], metadata_available=True)
        text = reason or ""
        if "sign in" in text.lower():
            text = remove_end(text, "This helps protect our community. Learn more")
            text = f"{remove_end(text.strip(), '.')}. {self._youtube_login_hint}"
        elif "This content isn't available, try again later" in text:
            text = f"{remove_end(text.strip(), '.')}. The current session has been rate-limited by YouTube"
        self.raise_no_formats(text, expected=True)

    return extract


@pytest.mark.parametrize(
    "reason, geo, expected, transient, advice",
    [
        (
            "Sign in to confirm you\u2019re not a bot. This helps protect our community. Learn more",
            None,
            "youtube_bot_check",
            True,
            "cookies_file",
        ),
        ("This content isn't available, try again later.", None, "http_429", True, "sleep_requests_s"),
        ("Private video. Sign in if you've been granted access to this video", None, "private_video", False, ""),
        ("Video unavailable. This video has been removed by the uploader", None, "video_removed", False, "catalog"),
        (
            "This video is no longer available because the YouTube account associated with this video has been "
            "terminated.",
            None,
            "video_removed",
            False,
            "catalog",
        ),
        (
            "Sign in to confirm your age. This video may be inappropriate for some users.",
            None,
            "age_restricted",
            False,
            "cookies_file",
        ),
        (None, "The uploader has not made this video available in your country", "geo_blocked", False, "proxy"),
        ("This live event will begin in 3 hours.", None, "not_yet_available", True, "later run"),
        ("Premieres in 2 hours", None, "not_yet_available", True, "later run"),
        (
            "Join this channel to get access to members-only content like this video, and other exclusive perks.",
            None,
            "members_only",
            False,
            "cookies_file",
        ),
        ("Video unavailable", None, "video_unavailable", False, ""),
    ],
)
def test_youtube_failures_through_the_download_are_named(
    monkeypatch, tmp_path, reason, geo, expected, transient, advice
):
    from yt_dlp.extractor.youtube import YoutubeIE

    monkeypatch.setattr(YoutubeIE, "_real_extract", _youtube_refuses(reason, geo))
    with pytest.raises(VideoError) as caught:
        download_video(_entry("yt", YOUTUBE_URL), tmp_path / "videos", CFG)
    err = caught.value
    assert (err.reason, err.transient) == (expected, transient)
    assert err.message.startswith("[youtube] oSmUI3m2kLk: ")
    assert advice in err.message
    assert not (tmp_path / "videos").exists() or _video_files(tmp_path / "videos") == []


@pytest.mark.parametrize("status, reason", [(429, "http_429"), (403, "http_403")])
def test_http_429_and_403_are_named_and_transient(tmp_path, status, reason):
    with _server(lambda h: _send(h, status, b"")) as (url, log), pytest.raises(VideoError) as caught:
        download_video(_entry("busy", f"{url}/busy.mp4"), tmp_path, CFG)
    assert (caught.value.reason, caught.value.transient) == (reason, True)
    assert f"HTTP Error {status}" in caught.value.message
    assert ("download.parallel" if status == 429 else "depthcurate doctor") in caught.value.message
    assert log and DownloadArchive(tmp_path / "archive.tsv").lookup("busy") is None


@pytest.mark.parametrize("live_status, reason", [("is_live", "live_stream"), ("is_upcoming", "not_yet_available")])
def test_live_and_upcoming_streams_are_refused_before_any_download(
    monkeypatch, tmp_path, video_dir, live_status, reason
):
    from yt_dlp.extractor.youtube import YoutubeIE

    with _serve_video((video_dir / "walk.mp4").read_bytes()) as (url, log):

        def extract(self, _url):
            return {
                "id": "oSmUI3m2kLk",
                "title": "live",
                "live_status": live_status,
                "is_live": live_status == "is_live",
                "formats": [{"format_id": "hls", "url": f"{url}/live.mp4", "ext": "mp4", "height": 720}],
            }

        monkeypatch.setattr(YoutubeIE, "_real_extract", extract)
        with pytest.raises(VideoError) as caught:
            download_video(_entry("yt", YOUTUBE_URL), tmp_path / "videos", CFG)
    assert (caught.value.reason, caught.value.transient) == (reason, True)
    assert log == []  # the stream was never fetched
    assert _video_files(tmp_path / "videos") == []


def test_youtube_extraction_sees_the_environments_deno(monkeypatch, tmp_path):
    """The YoutubeDL that download_video builds, inside YouTube's own extractor: Deno is an available challenge
    solver at the `deno` package's binary (whatever PATH says), it runs, and the EJS scripts come from the
    yt-dlp-ejs package (no download)."""
    import deno
    from yt_dlp.extractor.youtube import YoutubeIE
    from yt_dlp.extractor.youtube.jsc._builtin.ejs import ScriptSource

    seen: dict = {}

    def extract(self, url):
        providers = self._jsc_director.providers
        seen["available"] = sorted(name for name, p in providers.items() if p.is_available())
        solver = providers["Deno"]
        seen["path"] = solver.runtime_info.path
        seen["output"] = solver._run_js_runtime("console.log(JSON.stringify({answer: 6 * 7}))")
        seen["lib"] = solver._lib_script.source
        self.raise_no_formats("Private video", expected=True)

    monkeypatch.setattr(YoutubeIE, "_real_extract", extract)
    monkeypatch.setenv("PATH", str(tmp_path))  # no deno (nor anything else) on PATH
    with pytest.raises(VideoError):
        download_video(_entry("yt", YOUTUBE_URL), tmp_path / "videos", CFG)
    assert seen["available"] == ["Deno"]
    assert seen["path"] == deno.find_deno_bin() == download.bundled_deno()
    assert json.loads(seen["output"]) == {"answer": 42}
    assert seen["lib"] is ScriptSource.PYPACKAGE


def test_js_runtime_settings_reach_yt_dlp(tmp_path):
    import deno

    link = tmp_path / "my-deno"
    link.symlink_to(deno.find_deno_bin())
    assert download.js_runtimes(CFG) == {"deno": {"path": deno.find_deno_bin()}}
    assert download.js_runtimes(DownloadConfig(js_runtime_path=str(link))) == {"deno": {"path": str(link)}}
    assert download.js_runtimes(DownloadConfig(js_runtime="node")) == {"node": {}}  # yt-dlp's own lookup
    assert download.js_runtimes(DownloadConfig(js_runtime=None)) == {}
    with yt_dlp.YoutubeDL(
        {"quiet": True, "js_runtimes": download.js_runtimes(DownloadConfig(js_runtime_path=str(link)))}
    ) as ydl:
        assert ydl._js_runtimes["deno"].info.path == str(link) and ydl._js_runtimes["deno"].info.supported
    with yt_dlp.YoutubeDL({"quiet": True, "js_runtimes": download.js_runtimes(DownloadConfig(js_runtime=None))}) as ydl:
        assert ydl._js_runtimes == {}


def test_youtube_options_reach_yt_dlp(http_root, tmp_path, monkeypatch):
    seen: list[dict] = []

    class Spy(yt_dlp.YoutubeDL):
        def __init__(self, params=None, *args, **kwargs):
            seen.append(dict(params or {}))
            super().__init__(params, *args, **kwargs)

    monkeypatch.setattr(download.yt_dlp, "YoutubeDL", Spy)
    cfg = DownloadConfig(
        extractor_args={"youtube": {"player_client": ["default", "web_safari"]}},
        sleep_requests_s=1.5,
        js_runtime=None,
    )
    download_video(_entry("walk", f"{http_root}/walk.mp4"), tmp_path, cfg)
    assert seen[0]["extractor_args"] == {"youtube": {"player_client": ["default", "web_safari"]}}
    assert seen[0]["sleep_interval_requests"] == 1.5
    assert seen[0]["js_runtimes"] == {}
    assert seen[0]["enable_file_urls"] is False
    assert "proxy" not in seen[0]


def test_proxy_is_used_and_redacted_where_recorded(video_dir, tmp_path):
    """A loopback "proxy" that serves the file: every request went through it."""
    with _serve_video((video_dir / "walk.mp4").read_bytes()) as (proxy, log):
        cfg = DownloadConfig(proxy=proxy.replace("http://", "http://user:secret@"))
        result = download_video(_entry("walk", "http://video.invalid/walk.mp4"), tmp_path, cfg)
    assert result.path.read_bytes() == (video_dir / "walk.mp4").read_bytes()
    assert log and all(r["path"] == "http://video.invalid/walk.mp4" for r in log)
    assert "secret" not in json.dumps(cfg.model_dump(mode="json")) and cfg.proxy and "secret" in cfg.proxy


def test_host_interval_spaces_download_starts_per_host(monkeypatch):
    waits: list[float] = []
    monkeypatch.setattr(download.time, "sleep", waits.append)
    monkeypatch.setattr(download, "_host_next", {})
    for url in ("https://www.youtube.com/watch?v=a", "https://youtu.be/b", "https://example.com/c.mp4"):
        download._host_pace(url, 10.0)
    assert len(waits) == 1 and 9.0 < waits[0] <= 10.0  # youtu.be is youtube.com; example.com has its own clock
    download._host_pace("https://m.youtube.com/watch?v=c", 0.0)  # off
    assert len(waits) == 1
    assert download.host_key("https://music.youtube.com/x") == "youtube.com"


def test_download_config_rejects_unknown_keys_and_bad_values():
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        DownloadConfig(js_runtimes={"deno": {}})  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        DownloadConfig(js_runtime="spidermonkey")  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        DownloadConfig(extractor_args={"youtube": {"player_client": "web"}})  # type: ignore[dict-item]
    with pytest.raises(ValidationError):
        DownloadConfig(host_interval_s=-1)


# ------------------------------------------------------------------ a full disk


def _leftovers(videos: Path, video_id: str) -> list[str]:
    return sorted(p.name for p in (*videos.glob(f"{video_id}.*"), *videos.glob(f".{video_id}.*")))


@pytest.mark.parametrize("stage", ["video", "info_json"])
def test_a_full_disk_while_downloading_is_a_transient_disk_full_that_leaves_nothing(
    full_disk, http_root, tmp_path, stage
):
    full_disk(stage, "walk_01")  # yt-dlp writing the .part file, or the .info.json
    videos = tmp_path / "videos"
    with pytest.raises(VideoError) as caught:
        download_video(_entry("walk_01", f"{http_root}/walk.mp4"), videos, CFG)
    assert (caught.value.reason, caught.value.transient) == ("disk_full", True)
    assert "No space left on device" in caught.value.message and not caught.value.message.startswith("ERROR")
    assert _leftovers(videos, "walk_01") == []  # the partial download is gone: it frees the space it took
    assert DownloadArchive(videos / "archive.tsv").lookup("walk_01") is None


@pytest.mark.parametrize("step", ["link", "archive"])
def test_a_full_disk_linking_a_local_file_or_writing_the_archive_is_disk_full(video_dir, tmp_path, monkeypatch, step):
    import errno
    import os

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    if step == "link":
        monkeypatch.setattr(download.os, "link", no_space)
    else:
        monkeypatch.setattr(DownloadArchive, "add", no_space)
    videos = tmp_path / "videos"
    with pytest.raises(VideoError) as caught:
        download_video(_entry("walk_01", str(video_dir / "walk.mp4")), videos, _roots(video_dir))
    assert (caught.value.reason, caught.value.transient) == ("disk_full", True)
    assert str(videos) in caught.value.message and "No space left on device" in caught.value.message
    assert _leftovers(videos, "walk_01") == []


# ------------------------------------------------------------------ local sources


def _roots(*roots: Path) -> DownloadConfig:
    return DownloadConfig(local_roots=[str(r) for r in roots])


@pytest.mark.parametrize("as_url", [True, False])
def test_local_file_under_a_root_is_linked_not_copied(video_dir, tmp_path, as_url):
    source = tmp_path / "library" / "walk.mp4"
    source.parent.mkdir()
    shutil.copy(video_dir / "walk.mp4", source)
    url = source.as_uri() if as_url else str(source)
    result = download_video(_entry("walk_01", url), tmp_path / "videos", _roots(tmp_path / "library"))
    assert result.path == tmp_path / "videos" / "walk_01.mp4" and result.cached is False
    assert result.path.stat().st_ino == source.stat().st_ino  # the same file: a hard link
    assert DownloadArchive(tmp_path / "videos" / "archive.tsv").lookup("walk_01") == result.path
    again = download_video(_entry("walk_01", url), tmp_path / "videos", _roots(tmp_path / "library"))
    assert again == DownloadResult(result.path, None, cached=True)
    assert sorted(p.name for p in (tmp_path / "videos").iterdir()) == ["archive.tsv", "walk_01.mp4"]


def test_local_file_on_another_filesystem_is_a_symlink(video_dir, tmp_path, monkeypatch):
    import errno

    def cross_device(src, dst, **kwargs):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(download.os, "link", cross_device)
    result = download_video(_entry("walk", str(video_dir / "walk.mp4")), tmp_path / "videos", _roots(video_dir))
    assert result.path.is_symlink() and result.path.resolve() == (video_dir / "walk.mp4").resolve()


@pytest.mark.parametrize("link", ["hard", "symbolic"])
def test_a_linked_local_file_is_curated_and_the_source_is_left_alone(
    video_dir, tmp_path, monkeypatch, small_config, link
):
    """The later steps (probe, decode, shards) read the returned path, hard link or symlink alike."""
    from pipeline.config import with_overrides
    from pipeline.driver import curate_entries
    from pipeline.io.data_root import DataRoot

    if link == "symbolic":
        monkeypatch.setattr(download.os, "link", lambda *a, **k: (_ for _ in ()).throw(PermissionError(1, "no")))
    source = tmp_path / "library" / "walk.mp4"
    source.parent.mkdir()
    shutil.copy(video_dir / "walk.mp4", source)
    cfg = with_overrides(small_config, {"download": {"local_roots": [str(source.parent)]}})
    root = DataRoot(tmp_path / "root")
    result = curate_entries([_entry("walk", source.as_uri())], root, cfg)
    assert [v.status for v in result.videos] == ["ok"]
    linked = root.videos_dir("test") / "walk.mp4"
    assert linked.is_symlink() == (link == "symbolic") and linked.samefile(source)
    assert source.read_bytes() == (video_dir / "walk.mp4").read_bytes()


def _nothing_under(directory: Path) -> bool:
    return not directory.exists() or not any(p.is_file() or p.is_symlink() for p in directory.rglob("*"))


@pytest.mark.parametrize(
    "make_url",
    [
        lambda allowed, outside: "file:///etc/passwd",
        lambda allowed, outside: "/etc/passwd",
        lambda allowed, outside: str(outside),
        lambda allowed, outside: f"{allowed}/../outside/secret.mp4",  # `..` out of the root
        lambda allowed, outside: f"file://{allowed}/%2E%2E/outside/secret.mp4",
        lambda allowed, outside: str(allowed / "link.mp4"),  # a symlink inside pointing outside
        lambda allowed, outside: (allowed / "dirlink" / "secret.mp4").as_uri(),  # a symlinked directory
        lambda allowed, outside: "file://otherhost/data/a.mp4",
    ],
)
def test_local_paths_outside_the_roots_are_refused_and_nothing_is_written(tmp_path, make_url):
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    outside = tmp_path / "outside" / "secret.mp4"
    outside.parent.mkdir()
    outside.write_bytes(b"not yours")
    (allowed / "link.mp4").symlink_to(outside)
    (allowed / "dirlink").symlink_to(outside.parent)
    data = tmp_path / "data"
    with pytest.raises(VideoError) as caught:
        download_video(_entry("x", make_url(allowed, outside)), data / "videos" / "test", _roots(allowed))
    assert (caught.value.reason, caught.value.transient) == ("local_path_refused", False)
    assert _nothing_under(data)


def test_local_files_are_refused_by_default(video_dir, tmp_path):
    with pytest.raises(VideoError) as caught:
        download_video(_entry("walk", (video_dir / "walk.mp4").as_uri()), tmp_path / "videos", CFG)
    assert caught.value.reason == "local_path_refused" and "download.local_roots" in caught.value.message
    assert _nothing_under(tmp_path / "videos")


def test_missing_or_odd_local_files_under_a_root(tmp_path):
    (tmp_path / "dir.mp4").mkdir()
    with pytest.raises(VideoError) as caught:
        download_video(_entry("gone", str(tmp_path / "gone.mp4")), tmp_path / "videos", _roots(tmp_path))
    assert (caught.value.reason, caught.value.transient) == ("download_failed", False)
    with pytest.raises(VideoError) as caught:
        download_video(_entry("dir", str(tmp_path / "dir.mp4")), tmp_path / "videos", _roots(tmp_path))
    assert caught.value.reason == "not_a_video"
    assert _nothing_under(tmp_path / "videos")


# ------------------------------------------------------------------ options reach yt-dlp


def _serve_video(data: bytes):
    return _server(lambda h: _send(h, 200, data))


def test_cookies_file_is_sent(video_dir, tmp_path):
    cookies = tmp_path / "cookies.txt"
    cookies.write_text("# Netscape HTTP Cookie File\n127.0.0.1\tFALSE\t/\tFALSE\t4102444800\tsession\tabc123\n")
    with _serve_video((video_dir / "walk.mp4").read_bytes()) as (url, log):
        result = download_video(
            _entry("walk", f"{url}/walk.mp4"), tmp_path / "videos", DownloadConfig(cookies_file=str(cookies))
        )
    assert result.path.is_file()
    assert log and all(r["cookie"] == "session=abc123" for r in log)


def test_without_cookies_file_no_cookie_is_sent(video_dir, tmp_path):
    with _serve_video((video_dir / "walk.mp4").read_bytes()) as (url, log):
        download_video(_entry("walk", f"{url}/walk.mp4"), tmp_path, CFG)
    assert log and all(r["cookie"] is None for r in log)


@pytest.mark.parametrize("where", ["missing.txt", "no_such_dir/cookies.txt"])
def test_missing_cookies_file_is_a_clear_error_before_any_request(video_dir, tmp_path, where):
    cookies = tmp_path / where
    with _serve_video((video_dir / "walk.mp4").read_bytes()) as (url, log), pytest.raises(VideoError) as caught:
        download_video(
            _entry("walk", f"{url}/walk.mp4"), tmp_path / "videos", DownloadConfig(cookies_file=str(cookies))
        )
    assert caught.value.reason == "download_failed"
    assert "cookies file" in caught.value.message and str(cookies) in caught.value.message
    assert caught.value.transient is True  # fixing the config makes a rerun succeed
    assert log == []  # nothing fetched only to be thrown away
    assert not cookies.exists()  # and yt-dlp did not create it


def test_rate_limit_reaches_yt_dlp(http_root, tmp_path, monkeypatch):
    seen: list[dict] = []

    class Spy(yt_dlp.YoutubeDL):
        def __init__(self, params=None, *args, **kwargs):
            seen.append(dict(params or {}))
            super().__init__(params, *args, **kwargs)

    monkeypatch.setattr(download.yt_dlp, "YoutubeDL", Spy)
    result = download_video(_entry("walk", f"{http_root}/walk.mp4"), tmp_path, DownloadConfig(rate_limit="4M"))
    assert result.path.is_file()
    assert len(seen) == 1
    assert seen[0]["ratelimit"] == 4 * 1024 * 1024
    assert seen[0]["retries"] == 2
    assert "cookiefile" not in seen[0]

    seen.clear()
    download_video(_entry("walk2", f"{http_root}/walk.mp4"), tmp_path, CFG)
    assert "ratelimit" not in seen[0]


# ------------------------------------------------------------------ pieces


def test_archive_lookup_and_add(tmp_path):
    archive = DownloadArchive(tmp_path / "v" / "archive.tsv")
    assert archive.lookup("a") is None  # no archive yet
    archive.add("a", "a.mp4")
    assert archive.lookup("a") is None  # recorded, but the file is not on disk
    (tmp_path / "v" / "a.mp4").write_bytes(b"x")
    (tmp_path / "v" / "ab.mkv").write_bytes(b"x")
    archive.add("ab", "ab.mkv")
    assert archive.lookup("a") == tmp_path / "v" / "a.mp4"
    assert archive.lookup("ab") == tmp_path / "v" / "ab.mkv"  # ids match whole, not by prefix
    assert archive.lookup("b") is None
    archive.add("d", "../outside.mp4")  # a tampered archive line
    (tmp_path / "outside.mp4").write_bytes(b"x")
    assert archive.lookup("d") is None
    # a re-download under another extension appends a line; the one still on disk wins
    archive.add("c", "c.mp4")
    archive.add("c", "c.webm")
    (tmp_path / "v" / "c.webm").write_bytes(b"x")
    assert archive.lookup("c") == tmp_path / "v" / "c.webm"


def test_archive_add_is_safe_between_threads(tmp_path):
    archive = DownloadArchive(tmp_path / "archive.tsv")
    threads = [
        threading.Thread(target=lambda i=i: [archive.add(f"id{i}_{k}", f"f{i}_{k}.mp4") for k in range(50)])
        for i in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lines = (tmp_path / "archive.tsv").read_text().splitlines()
    assert sorted(lines) == sorted(f"id{i}_{k}\tf{i}_{k}.mp4" for i in range(8) for k in range(50))


@pytest.mark.parametrize(
    "message, reason, transient",
    [
        ("ERROR: [generic] x: Unable to download webpage: HTTP Error 404: Not Found", "download_failed", False),
        ("ERROR: Unsupported URL: http://example.com/page", "not_a_video", False),
        ("ERROR: unable to download video data: HTTP Error 503: Service Unavailable", "download_failed", True),
        ("ERROR: HTTP Error 429: Too Many Requests", "http_429", True),
        ("ERROR: unable to download video data: HTTP Error 403: Forbidden", "http_403", True),
        ("ERROR: [youtube] abc: Requested format is not available", "download_failed", False),
        ("ERROR: Read timed out. (read timeout=30)", "download_failed", True),
        ("ERROR: [Errno 104] Connection reset by peer", "download_failed", True),
        ("ERROR: [youtube] abc: Private video. Sign in if you've been granted access", "private_video", False),
        ("ERROR: [Errno 111] Connection refused", "download_failed", True),
        ("ERROR: unable to write data: [Errno 28] No space left on device", "disk_full", True),
    ],
)
def test_classify(message, reason, transient):
    err = _classify(message)
    assert (err.reason, err.transient) == (reason, transient)
    assert not err.message.startswith("ERROR")
