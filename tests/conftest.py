"""Shared fixtures: synthetic videos encoded on the fly, a loopback HTTP server, one demo flow run."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pipeline.config import CurateConfig, load_config  # noqa: E402
from pipeline.sources.catalog import CatalogEntry  # noqa: E402
from pipeline.synthetic.demo import CONFIG_PATH, build_demo_sources, serve_directory  # noqa: E402
from pipeline.synthetic.renderer import SceneSpec, render_video  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def video_dir(tmp_path_factory) -> Path:
    """Small synthetic videos shared by the whole session (rendered once)."""
    directory = tmp_path_factory.mktemp("videos")
    spec = SceneSpec(width=160, height=96, fps=20.0, duration_s=6.0, seed=1)
    render_video(spec, directory / "walk.mp4", codec="h264")
    render_video(
        SceneSpec(width=160, height=96, fps=20.0, duration_s=4.0, seed=2), directory / "walk.mkv", codec="mpeg4"
    )
    render_video(
        SceneSpec(width=160, height=96, fps=20.0, duration_s=3.0, seed=3),
        directory / "cut.mp4",
        cut_to=SceneSpec(width=160, height=96, fps=20.0, duration_s=3.0, seed=4),
    )
    return directory


def _ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *args], check=True)


@pytest.fixture(scope="session")
def damaged_media(tmp_path_factory) -> dict[str, Path]:
    """One 6 s 320x180 20 fps clip with a keyframe every second, clean and damaged the ways real files are.

    `overwritten`: the middle 5% of its bytes replaced by noise (whole packets lost); `flipped`: one byte in 2 KiB
    inverted over the middle 10% (the decoder conceals); `cut`: a streamable MP4 cut at 55% of its bytes (its header
    still says 6 s); `interlaced`: the clip woven into top-field-first fields at 10 frames/s.
    """
    directory = tmp_path_factory.mktemp("damaged")
    rendered = render_video(SceneSpec(width=320, height=180, fps=20.0, duration_s=6.0, seed=5), directory / "r.mp4")
    clean = directory / "clean.mp4"
    _ffmpeg("-i", str(rendered), "-c:v", "libx264", "-g", "20", "-preset", "veryfast", "-crf", "20", str(clean))
    data = clean.read_bytes()
    rng = np.random.default_rng(0)
    overwritten = bytearray(data)
    a, b = int(len(data) * 0.475), int(len(data) * 0.525)
    overwritten[a:b] = rng.bytes(b - a)
    flipped = bytearray(data)
    for position in range(int(len(data) * 0.45), int(len(data) * 0.55), 2048):
        flipped[position] ^= 0xFF
    (directory / "overwritten.mp4").write_bytes(overwritten)
    (directory / "flipped.mp4").write_bytes(flipped)
    _ffmpeg("-i", str(clean), "-c", "copy", "-movflags", "+faststart", str(directory / "faststart.mp4"))
    whole = (directory / "faststart.mp4").read_bytes()
    (directory / "cut.mp4").write_bytes(whole[: int(len(whole) * 0.55)])
    _ffmpeg(
        "-i", str(rendered), "-vf", "tinterlace=mode=interleave_top", "-c:v", "libx264",
        "-flags", "+ilme+ildct", "-top", "1", "-x264-params", "tff=1", str(directory / "interlaced.mp4"),
    )  # fmt: skip
    names = ("clean", "overwritten", "flipped", "cut", "interlaced")
    return {name: directory / f"{name}.mp4" for name in names}


@pytest.fixture(scope="session")
def http_root(video_dir) -> str:
    """Base URL of a loopback HTTP server over `video_dir`."""
    with serve_directory(video_dir) as url:
        yield url


def _published_bytes(root: Path, *paths: Path | str) -> dict[str, bytes]:
    found = {}
    for path in paths:
        path = root / path
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        found.update({f.relative_to(root).as_posix(): f.read_bytes() for f in files})
    return found


@pytest.fixture(scope="session")
def published_bytes():
    """(root, *paths) -> the bytes of those published outputs by path relative to the root; a table that is a
    directory of per-video parts (the frames table, a manifest) gives each part."""
    return _published_bytes


@pytest.fixture
def entry() -> CatalogEntry:
    return CatalogEntry(video_id="walk", url="http://127.0.0.1/walk.mp4", dataset="test", category="natural")


@pytest.fixture
def small_config() -> CurateConfig:
    """Settings sized for 6-second test videos: short trims, no decimation, a small split gap."""
    return load_config(
        overrides={
            "sample": {"fps": 10, "max_height": 96, "trim": {"head_s": 0.5, "tail_s": 0.5}, "decimate": None},
            "split": {"train_fraction": 0.8, "gap_frames": 2},
            "download": {"attempts": 1, "backoff_s": 0},
        }
    )


@pytest.fixture(scope="session")
def demo_sources(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("demo_sources")
    build_demo_sources(directory)
    return directory


@pytest.fixture(scope="session")
def prefect_harness():
    """One temporary Prefect backend for every flow test of the session (starting one costs ~15 s)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def demo_run(prefect_harness, demo_sources, tmp_path_factory) -> Path:
    """The data root of one complete demo flow run (sources pre-rendered, copied in)."""
    from flows.curate import curate

    root = tmp_path_factory.mktemp("demo_run")
    shutil.copytree(demo_sources, root / "demo_sources")
    curate(demo=True, data_root=str(root))
    return root


@pytest.fixture(scope="session")
def demo_config() -> CurateConfig:
    return load_config(CONFIG_PATH)


@pytest.fixture(scope="session")
def train_root(tmp_path_factory) -> Path:
    """A small curated dataset for the trainer: two mono videos (one with a cut) and one stereo video.

    Rendered depth of `walk` is saved under <root>/ground_truth for the evaluation tests."""
    from pipeline.driver import curate_entries
    from pipeline.io.data_root import DataRoot
    from pipeline.synthetic.demo import write_demo_catalog  # noqa: F401  (the demo module owns the dataset name)
    from pipeline.synthetic.renderer import normalized_intrinsics, render_stereo_video, save_ground_truth

    sources = tmp_path_factory.mktemp("train_sources")
    root = DataRoot(tmp_path_factory.mktemp("train_root"))
    cfg = load_config(
        overrides={
            "sample": {"fps": 10, "max_height": 96, "trim": {"head_s": 0.2, "tail_s": 0.2}, "decimate": None},
            "split": {"train_fraction": 0.75, "gap_frames": 1},
            "write": {"row_group_bytes": 65536},
            "stereo": {"crop": None, "output_size": None, "jump_s": 1.0},
            "download": {"local_roots": [str(sources)]},  # the renders below, linked in place
        }
    )
    mono = SceneSpec(width=160, height=96, fps=20.0, duration_s=5.0, seed=11)
    fx, fy, cx, cy = normalized_intrinsics(mono)
    videos = [
        ("walk", render_video(mono, sources / "walk.mp4"), "natural", "mono"),
        (
            "drive",
            render_video(
                SceneSpec(width=160, height=96, fps=20.0, duration_s=4.0, seed=12, speed_mps=4.0),
                sources / "drive.mp4",
                cut_to=SceneSpec(width=160, height=96, fps=20.0, duration_s=2.0, seed=13),
            ),
            "driving",
            "mono",
        ),
        (
            "pair",
            render_stereo_video(
                SceneSpec(width=320, height=192, fps=20.0, duration_s=5.0, seed=14, baseline_m=0.3),
                sources / "pair.mp4",
                layout="sbs_full",
                convergence_px=4.0,
            ),
            "natural",
            "sbs_full",
        ),
    ]
    entries = [
        CatalogEntry(
            video_id=video_id,
            url=f"file://{path}",
            dataset="mono" if layout == "mono" else "stereo",
            category=category,
            layout=layout,
            fx=fx,
            fy=fy,
            cx=cx,
            cy=cy,
        )
        for video_id, path, category, layout in videos
    ]
    result = curate_entries(entries, root, cfg)
    assert [video.status for video in result.videos] == ["ok"] * len(entries), result.videos
    (root.root / "ground_truth").mkdir()
    save_ground_truth(mono, root.root / "ground_truth" / "walk.npz")
    return root.root


@pytest.fixture(scope="session")
def clip_settings(tmp_path_factory) -> dict:
    """`clip` config section for a tiny random open_clip model, loaded from a local checkpoint like a real one."""
    import json

    from pipeline.clip.model import TINY_ARCHITECTURE, save_random_checkpoint

    directory = tmp_path_factory.mktemp("clip")
    architecture = directory / "tiny-clip-test.json"
    architecture.write_text(json.dumps(TINY_ARCHITECTURE))
    checkpoint = save_random_checkpoint("tiny-clip-test", directory / "tiny.pt", architecture=architecture)
    return {
        "enabled": True,
        "model": "tiny-clip-test",
        "architecture": str(architecture),
        "checkpoint": str(checkpoint),
        "batch_size": 16,
    }


# Object storage: a moto S3 server on loopback (the server s3fs's own test suite uses).
S3_TEST_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "AKIADEPTHCURATE7Q2X", "AWS_SECRET_ACCESS_KEY": "dc-test-secret-5b8e1f0a9c"}


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory) -> str:
    """Endpoint URL of an S3-compatible server on 127.0.0.1, shared by the session.

    Its request recorder (/moto-api/recorder/) writes to a temporary file: tests read the order of requests there.
    """
    import logging

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MOTO_RECORDER_FILEPATH", str(tmp_path_factory.mktemp("moto") / "recording"))
        import moto.moto_api  # noqa: F401 - its recorder reads the file path on import
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no access-log line per request
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


def _forget_s3_filesystems() -> None:
    # fsspec caches filesystem instances with the credentials and endpoint they were made with.
    from s3fs import S3FileSystem

    S3FileSystem.clear_instance_cache()


@pytest.fixture
def s3_env(s3_server, monkeypatch, tmp_path_factory) -> dict[str, str]:
    """AWS_* variables pointing boto at the loopback server, for this test only; returns them (to look for leaks)."""
    nowhere = tmp_path_factory.mktemp("aws") / "none"  # no ~/.aws config or profile of the machine applies
    env = {
        **S3_TEST_CREDENTIALS,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": s3_server,
        "AWS_CONFIG_FILE": str(nowhere),
        "AWS_SHARED_CREDENTIALS_FILE": str(nowhere),
    }
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    _forget_s3_filesystems()
    yield env
    _forget_s3_filesystems()


@pytest.fixture
def s3_bucket(s3_env) -> str:
    """A new, empty bucket on the loopback server, as s3://<name>."""
    import uuid

    import fsspec.core

    name = f"test-{uuid.uuid4().hex[:12]}"
    fs, _ = fsspec.core.url_to_fs(f"s3://{name}")
    fs.mkdir(name)
    return f"s3://{name}"


@pytest.fixture(scope="session")
def postgres():
    """A throw-away PostgreSQL on 127.0.0.1 for the session, installed by scripts/setup_postgres.sh when missing."""
    from flows.local_services import install_postgres, postgres_bin_dir, postgres_server

    if postgres_bin_dir() is None and shutil.which("apt-get") is None:
        pytest.skip("PostgreSQL is not installed and there is no apt-get to install it (scripts/setup_postgres.sh)")
    with postgres_server(install_postgres()) as running:
        yield running


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def ray_cluster() -> str:
    """GCS address of a Ray head on loopback (2 CPUs, no GPU, a 200 MB object store) for the session.

    Started as `ray start --head --block` in a session of its own and stopped by signalling that process group
    (never `ray stop`, which would stop every Ray on the machine). Its workers import this checkout.
    """
    import signal
    import subprocess
    import sys
    import tempfile

    # Ray swaps a loopback --node-ip-address for the machine's routable address unless told that this is a
    # single-machine cluster; the driver (this process) must agree on the address to find its raylet.
    mp = pytest.MonkeyPatch()
    mp.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    mp.setenv("RAY_USAGE_STATS_ENABLED", "0")
    temp_dir = Path(tempfile.mkdtemp(prefix="ray-"))  # short: Ray's socket paths must stay under 107 bytes
    port = _free_port()
    command = [
        str(Path(sys.executable).parent / "ray"),
        "start",
        "--head",
        "--block",
        "--disable-usage-stats",
        "--node-ip-address",
        "127.0.0.1",
        "--port",
        str(port),
        "--num-cpus",
        "2",
        "--num-gpus",
        "0",
        "--object-store-memory",
        str(200 * 2**20),
        "--include-dashboard",
        "false",
        "--temp-dir",
        str(temp_dir),
    ]
    for option in ("--ray-client-server-port", "--dashboard-port", "--dashboard-agent-listen-port"):
        command += [option, str(_free_port())]  # Ray's fixed defaults would collide with another Ray here
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    log = (temp_dir / "head.log").open("wb")
    head = subprocess.Popen(
        command, env=env, cwd=temp_dir, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        _wait_for_ray(head, temp_dir / "head.log")
        yield f"127.0.0.1:{port}"
    finally:
        head.send_signal(signal.SIGTERM)  # --block tears its processes down on SIGTERM
        with contextlib.suppress(subprocess.TimeoutExpired):
            head.wait(timeout=60)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(head.pid, signal.SIGKILL)  # whatever of its group is left
        log.close()
        mp.undo()
        shutil.rmtree(temp_dir, ignore_errors=True)


def _wait_for_ray(head, log_path: Path) -> None:
    """Return once the head says it is up (`ray start` prints that after the GCS and raylet are)."""
    import time

    deadline = time.monotonic() + 120
    while "Ray runtime started" not in log_path.read_text(errors="replace"):
        if head.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"ray head did not start ({head.poll()}):\n{log_path.read_text(errors='replace')}")
        time.sleep(0.5)


@pytest.fixture
def small_flow(prefect_harness, small_config, tmp_path):
    """Run the curate flow in-process on catalog entries with the small test settings (plus overrides).

    Returns run(entries, overrides=None, root=..., extra_rows="") -> (data root, flow result); the same root
    by default, so a second call is a rerun. `extra_rows` are raw CSV lines appended to the catalog (rows that
    write_catalog would refuse).
    """
    import yaml

    from flows.curate import curate
    from pipeline.config import with_overrides
    from pipeline.sources.catalog import write_catalog

    def run(entries: list[CatalogEntry], overrides: dict | None = None, root: Path | None = None, extra_rows: str = ""):
        root = root or tmp_path / "root"
        cfg = with_overrides(small_config, overrides or {})
        config = tmp_path / "small.yaml"
        config.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
        catalog = write_catalog(entries, tmp_path / "catalog.csv")
        with open(catalog, "a", encoding="utf-8") as fh:
            fh.write(extra_rows)
        return root, curate(catalog=str(catalog), data_root=str(root), config=str(config))

    return run
