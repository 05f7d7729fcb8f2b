"""`depthcurate doctor`: what this machine has and lacks for the pipeline, one named check at a time.

Every check is a plain function returning a `Check` (ok / warn / fail plus a readable detail); `run_checks`
runs them all. A `fail` is a blocker (nothing can be curated: no ffmpeg, an unwritable data root, a Prefect
server that PREFECT_API_URL names but that does not answer); a `warn` is something that limits part of the
work (no JS runtime: YouTube formats go missing; an old yt-dlp; no torch for the trainer).
"""

from __future__ import annotations

import datetime as dt
import importlib
import importlib.metadata
import importlib.util
import os
import re
import shutil
import subprocess
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from pipeline.config import DownloadConfig

Status = Literal["ok", "warn", "fail"]

YT_DLP_MAX_AGE_DAYS = 90  # YouTube changes often; a yt-dlp older than this is likely to be broken there
MIN_FREE_BYTES = 10 * 1024**3  # below this a data root fills up within a few SlowTV videos
OPTIONAL_MODULES = {
    "pycolmap": "per-video intrinsics (intrinsics.enabled)",
    "open_clip": "CLIP curation (clip.enabled)",
    "ray": "run.executor: ray",
}


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def run_checks(
    data_root: str | Path = "data",
    download: DownloadConfig | None = None,
    env: Mapping[str, str] | None = None,
    today: dt.date | None = None,
) -> list[Check]:
    """All checks, in a stable order."""
    env = os.environ if env is None else env
    download = download or DownloadConfig()
    checks: list[Callable[[], Check | list[Check]]] = [
        lambda: check_executable("ffmpeg"),
        lambda: check_executable("ffprobe"),
        check_ffmpeg_codecs,
        check_pyav,
        check_image_codecs,
        lambda: check_yt_dlp(today),
        check_ejs,
        lambda: check_js_runtime(download),
        check_po_token_provider,
        check_torch,
        lambda: check_prefect_api(env.get("PREFECT_API_URL")),
        lambda: check_data_root(data_root),
        lambda: [check_optional(module, used_for) for module, used_for in OPTIONAL_MODULES.items()],
    ]
    results: list[Check] = []
    for check in checks:
        outcome = check()
        results.extend(outcome if isinstance(outcome, list) else [outcome])
    return results


def has_blocker(checks: list[Check]) -> bool:
    return any(c.status == "fail" for c in checks)


def _run(argv: list[str], timeout: float = 15) -> subprocess.CompletedProcess[str] | None:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return None


# ------------------------------------------------------------------ media tools


def check_executable(name: str) -> Check:
    path = shutil.which(name)
    if path is None:
        return Check(name, "fail", f"{name} not found on PATH (Debian/Ubuntu: apt-get install ffmpeg)")
    done = _run([path, "-hide_banner", "-version"])
    if done is None or done.returncode != 0:
        return Check(name, "fail", f"{path} does not run")
    first = done.stdout.splitlines()[0] if done.stdout else "version unknown"
    return Check(name, "ok", f"{first.split(' Copyright')[0]} ({path})")


# What the pipeline asks of ffmpeg: decode H.264 (SlowTV's format 136) into raw bgr24 through a pipe. YouTube's
# fallbacks when H.264 is gone are VP9 and AV1; the demo and the synthetic test videos are encoded with libx264.
_REQUIRED = {("decoder", "h264"), ("encoder", "rawvideo")}
_WANTED = {("decoder", "vp9"), ("decoder", "av1"), ("encoder", "libx264")}


def check_ffmpeg_codecs() -> Check:
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        return Check("ffmpeg_codecs", "fail", "ffmpeg not found")
    present: set[tuple[str, str]] = set()
    for kind in ("decoder", "encoder"):
        done = _run([ffmpeg, "-hide_banner", f"-{kind}s"])
        for line in done.stdout.splitlines() if done else []:
            parts = line.split()
            if len(parts) >= 2 and re.fullmatch(r"[VAS][A-Z.]{5}", parts[0]):
                present.add((kind, parts[1]))
                # A library decoder names its codec: "libdav1d ... (codec av1)"
                if match := re.search(r"\(codec (\w+)\)", line):
                    present.add((kind, match.group(1)))
    missing = sorted(f"{name} {kind}" for kind, name in _REQUIRED - present)
    if missing:
        return Check("ffmpeg_codecs", "fail", f"missing: {', '.join(missing)}")
    lacking = sorted(f"{name} {kind}" for kind, name in _WANTED - present)
    have = ", ".join(sorted(f"{name} {kind}" for kind, name in (_REQUIRED | _WANTED) & present))
    if lacking:
        return Check("ffmpeg_codecs", "warn", f"{have}; missing: {', '.join(lacking)}")
    return Check("ffmpeg_codecs", "ok", have)


def check_pyav() -> Check:
    """Frames are decoded in process by PyAV, with the FFmpeg libraries its wheel bundles (not the ffmpeg above)."""
    try:
        import av
    except ImportError as exc:
        return Check("pyav", "fail", f"PyAV not importable: {exc}")
    missing = [name for name in ("h264", "hevc", "vp9", "av1") if not _has_decoder(av, name)]
    detail = f"PyAV {av.__version__} (FFmpeg {getattr(av, 'ffmpeg_version_info', '?')})"
    if "h264" in missing:
        return Check("pyav", "fail", f"{detail}: no h264 decoder")
    return Check("pyav", "warn" if missing else "ok", detail + (f"; missing: {', '.join(missing)}" if missing else ""))


def _has_decoder(av: Any, name: str) -> bool:
    try:
        av.Codec(name, "r")
    except (ValueError, av.error.FFmpegError):  # UnknownCodecError is a ValueError
        return False
    return True


def check_image_codecs() -> Check:
    """Frames are written as JPEG, depth and masks as PNG, both through OpenCV."""
    try:
        import cv2
        import numpy as np
    except ImportError as exc:
        return Check("image_codecs", "fail", f"OpenCV not importable: {exc}")
    image = np.zeros((8, 8, 3), np.uint8)
    results = {ext: cv2.imencode(ext, image)[0] for ext in (".jpg", ".png")}
    if not all(results.values()):
        return Check("image_codecs", "fail", f"OpenCV {cv2.__version__} cannot encode: {results}")
    return Check("image_codecs", "ok", f"OpenCV {cv2.__version__}: JPEG and PNG encoders")


# ------------------------------------------------------------------ yt-dlp and YouTube


def yt_dlp_release_date(version: str) -> dt.date | None:
    """yt-dlp versions are release dates: 2026.11.23 (or 2026.11.23.1, 2026.11.23.123456.dev0)."""
    match = re.match(r"(\d{4})\.(\d{1,2})\.(\d{1,2})", version)
    if not match:
        return None
    try:
        return dt.date(*map(int, match.groups()))
    except ValueError:
        return None


def check_yt_dlp(today: dt.date | None = None) -> Check:
    try:
        from yt_dlp.version import __version__ as version
    except ImportError:
        return Check("yt_dlp", "fail", "yt-dlp not importable: pip install 'yt-dlp[default]'")
    released = yt_dlp_release_date(version)
    if released is None:
        return Check("yt_dlp", "warn", f"yt-dlp {version}: release date unknown")
    age = ((today or dt.date.today()) - released).days
    detail = f"yt-dlp {version}, {age} days old"
    if age > YT_DLP_MAX_AGE_DAYS:
        return Check("yt_dlp", "warn", f"{detail}: YouTube breaks old releases, pip install -U 'yt-dlp[default]'")
    return Check("yt_dlp", "ok", detail)


def check_ejs() -> Check:
    """The challenge-solver scripts YouTube extraction runs in the JS runtime (yt-dlp-ejs, from yt-dlp[default])."""
    try:
        ejs = importlib.import_module("yt_dlp_ejs")
    except ImportError:
        return Check(
            "yt_dlp_ejs",
            "warn",
            "yt_dlp_ejs not importable: YouTube formats go missing (pip install 'yt-dlp[default]')",
        )
    version = str(getattr(ejs, "version", "unknown"))
    try:
        from yt_dlp.extractor.youtube.jsc._builtin.vendor import VERSION as wanted
    except ImportError:
        return Check("yt_dlp_ejs", "ok", f"yt-dlp-ejs {version}")
    if version.split(".")[:2] != str(wanted).split(".")[:2]:
        return Check(
            "yt_dlp_ejs", "warn", f"yt-dlp-ejs {version}, but this yt-dlp expects {wanted}: reinstall 'yt-dlp[default]'"
        )
    return Check("yt_dlp_ejs", "ok", f"yt-dlp-ejs {version}")


_BINARIES = {"deno": "deno", "node": "node", "bun": "bun", "quickjs": "qjs"}
_MIN_VERSIONS = {"deno": (2, 3, 0), "node": (22, 0, 0), "bun": (1, 2, 11)}


def check_js_runtime(cfg: DownloadConfig) -> Check:
    """The runtime download_video hands to yt-dlp (download.js_runtime / js_runtime_path), run once."""
    from pipeline.sources.download import js_runtimes

    if cfg.js_runtime is None:
        return Check("js_runtime", "warn", "download.js_runtime is null: YouTube formats go missing")
    configured = js_runtimes(cfg).get(cfg.js_runtime, {}).get("path")
    path = configured or shutil.which(_BINARIES[cfg.js_runtime])
    if not path:
        return Check(
            "js_runtime",
            "warn",
            f"{cfg.js_runtime} not found (pip install deno, or set download.js_runtime_path): "
            "YouTube formats go missing",
        )
    done = _run([path, "--help" if cfg.js_runtime == "quickjs" else "--version"])
    if done is None or (done.returncode != 0 and cfg.js_runtime != "quickjs"):
        return Check("js_runtime", "warn", f"{path} does not run")
    output = (done.stdout or done.stderr).strip()
    first = output.splitlines()[0] if output else "version unknown"
    numbers = re.search(r"(\d+)\.(\d+)\.(\d+)", first)
    minimum = _MIN_VERSIONS.get(cfg.js_runtime)
    if numbers and minimum and tuple(map(int, numbers.groups())) < minimum:
        return Check("js_runtime", "warn", f"{first} at {path}: yt-dlp needs {'.'.join(map(str, minimum))} or newer")
    return Check("js_runtime", "ok", f"{first} at {path}")


def check_po_token_provider() -> Check:
    """Optional: a PO-token provider plugin (yt-dlp loads installed plugins by itself)."""
    try:
        version = importlib.metadata.version("bgutil-ytdlp-pot-provider")
    except importlib.metadata.PackageNotFoundError:
        return Check("po_token_provider", "ok", "none installed (optional: bgutil-ytdlp-pot-provider)")
    return Check("po_token_provider", "ok", f"bgutil-ytdlp-pot-provider {version} (needs its own server or script)")


# ------------------------------------------------------------------ compute, orchestration, storage


def check_torch() -> Check:
    if importlib.util.find_spec("torch") is None:
        return Check("torch", "warn", "not installed: the trainer and CLIP curation need it")
    try:
        import torch
    except Exception as exc:  # noqa: BLE001  (a broken install raises anything: report it, do not crash)
        return Check("torch", "fail", f"installed but not importable: {type(exc).__name__}: {exc}")
    cuda = torch.version.cuda
    if not cuda:
        return Check("torch", "ok", f"torch {torch.__version__}, CPU build")
    count = torch.cuda.device_count()
    status: Status = "ok" if count else "warn"
    return Check("torch", status, f"torch {torch.__version__}, CUDA {cuda} build, {count} GPU(s) visible")


def check_prefect_api(url: str | None, timeout_s: float = 3.0) -> Check:
    """A plain GET of <PREFECT_API_URL>/health (no Prefect import)."""
    if not url:
        return Check("prefect_api", "ok", "PREFECT_API_URL not set: flows run an ephemeral server per process")
    health = url.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(health, timeout=timeout_s) as response:
            code = response.status
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return Check("prefect_api", "fail", f"{health} does not answer: {reason}")
    if code != 200:
        return Check("prefect_api", "fail", f"{health} answered HTTP {code}")
    return Check("prefect_api", "ok", f"{health} answered 200")


def check_data_root(data_root: str | Path) -> Check:
    text = str(data_root)
    if "://" in text and not text.startswith("file://"):
        return Check("data_root", "warn", f"{text}: an object store, not checked here")
    path = Path(text.removeprefix("file://")).expanduser().absolute()
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return Check("data_root", "fail", f"{path} cannot be created: {existing} is not a directory")
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".doctor-"):
            pass
    except OSError as exc:
        return Check("data_root", "fail", f"{existing} is not writable: {exc.strerror or exc}")
    free = shutil.disk_usage(existing).free
    where = str(path) if existing == path else f"{path} (to be created under {existing})"
    detail = f"{where} writable, {free / 1024**3:.1f} GiB free"
    if free < MIN_FREE_BYTES:
        return Check("data_root", "warn", f"{detail}: under {MIN_FREE_BYTES // 1024**3} GiB")
    return Check("data_root", "ok", detail)


def check_optional(module: str, used_for: str) -> Check:
    name = f"optional:{module}"
    if importlib.util.find_spec(module) is None:
        return Check(name, "warn", f"not installed: needed for {used_for}")
    version = _version(module)
    return Check(name, "ok", f"{module} {version or '(version unknown)'}, for {used_for}")


def _version(module: str) -> str | None:
    distribution: dict[str, str] = {"open_clip": "open_clip_torch"}
    try:
        return importlib.metadata.version(distribution.get(module, module))
    except importlib.metadata.PackageNotFoundError:
        return None


def as_json(checks: list[Check]) -> dict[str, Any]:
    return {"ok": not has_blocker(checks), "checks": [c.as_dict() for c in checks]}
