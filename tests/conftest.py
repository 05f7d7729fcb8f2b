"""Shared fixtures: synthetic videos encoded on the fly, a loopback HTTP server, one demo flow run."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pipeline.catalog import CatalogEntry  # noqa: E402
from pipeline.config import CurateConfig, load_config  # noqa: E402
from pipeline.demo import CONFIG_PATH, build_demo_sources, serve_directory  # noqa: E402
from pipeline.synthetic import SceneSpec, render_video  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def video_dir(tmp_path_factory) -> Path:
    """Small synthetic videos shared by the whole session (rendered once)."""
    directory = tmp_path_factory.mktemp("videos")
    spec = SceneSpec(width=160, height=96, fps=20.0, duration_s=6.0, seed=1)
    render_video(spec, directory / "walk.mp4", codec="h264")
    render_video(SceneSpec(width=160, height=96, fps=20.0, duration_s=4.0, seed=2), directory / "walk.mkv",
                 codec="mpeg4")
    render_video(SceneSpec(width=160, height=96, fps=20.0, duration_s=3.0, seed=3), directory / "cut.mp4",
                 cut_to=SceneSpec(width=160, height=96, fps=20.0, duration_s=3.0, seed=4))
    return directory


@pytest.fixture(scope="session")
def http_root(video_dir) -> str:
    """Base URL of a loopback HTTP server over `video_dir`."""
    with serve_directory(video_dir) as url:
        yield url


@pytest.fixture
def entry() -> CatalogEntry:
    return CatalogEntry(video_id="walk", url="http://127.0.0.1/walk.mp4", dataset="test", category="natural")


@pytest.fixture
def small_config() -> CurateConfig:
    """Settings sized for 6-second test videos: short trims, no decimation, a small split gap."""
    return load_config(overrides={
        "sample": {"fps": 10, "max_height": 96, "trim": {"head_s": 0.5, "tail_s": 0.5}, "decimate": None},
        "split": {"train_fraction": 0.8, "gap_frames": 2},
        "download": {"attempts": 1, "backoff_s": 0},
    })


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
    curate(catalog="demo", data_root=str(root))
    return root


@pytest.fixture(scope="session")
def demo_config() -> CurateConfig:
    return load_config(CONFIG_PATH)


@pytest.fixture(scope="session")
def clip_settings(tmp_path_factory) -> dict:
    """`clip` config section for a tiny random open_clip model, loaded from a local checkpoint like a real one."""
    import json

    from pipeline.clip import TINY_ARCHITECTURE, save_random_checkpoint

    directory = tmp_path_factory.mktemp("clip")
    architecture = directory / "tiny-clip-test.json"
    architecture.write_text(json.dumps(TINY_ARCHITECTURE))
    checkpoint = save_random_checkpoint("tiny-clip-test", directory / "tiny.pt", architecture=architecture)
    return {"enabled": True, "model": "tiny-clip-test", "architecture": str(architecture),
            "checkpoint": str(checkpoint), "batch_size": 16}
