"""Where tasks run: GPU requests from the config, and the demo on a real Ray cluster on loopback."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from flows.curate import with_ray_address
from flows.runners import ray_resources, ray_runner_settings, torch_devices
from pipeline.config import CurateConfig, RayConfig, load_config
from pipeline.synthetic.demo import CONFIG_PATH, serve_directory, write_demo_catalog

RAFT = {"stereo": {"flow": {"backend": "raft", "device": "cuda"}}}


@pytest.mark.parametrize(
    "overrides, layout, devices",
    [
        ({}, "mono", ()),
        ({}, "sbs_full", ()),  # DIS flow and the gradient sky detector are CPU code
        (RAFT, "mono", ()),  # a mono video never reaches the flow
        (RAFT, "sbs_half", ("cuda",)),
        (RAFT, "auto", ("cuda",)),  # may turn out stereo
        (
            {"stereo": {"flow": {"backend": "raft", "device": "cpu"}, "sky": {"backend": "torchscript"}}},
            "tab_full",
            ("cpu", "auto"),
        ),
        ({"clip": {"enabled": True, "checkpoint": "w.pt", "device": "cuda:0"}}, "mono", ("cuda:0",)),
        ({"clip": {"enabled": True, "checkpoint": "w.pt"}}, None, ("auto",)),  # an embedding task of `dedup`
    ],
)
def test_torch_devices_follow_the_configured_stages(overrides, layout, devices):
    assert torch_devices(load_config(overrides=overrides), layout) == devices


@pytest.mark.parametrize(
    "devices, cluster_gpus, options",
    [
        ((), 4, {}),  # CPU stages ask for no GPU, even where there are some
        (("cpu",), 4, {}),
        (("auto",), 0, {}),  # "auto" on a CPU cluster runs on the CPU
        (("auto",), 2, {"num_gpus": 0.5}),
        (("cpu", "cuda:1"), 1, {"num_gpus": 0.5}),
    ],
)
def test_a_gpu_is_requested_only_for_cuda_stages(devices, cluster_gpus, options):
    assert ray_resources(devices, cluster_gpus, gpus_per_task=0.5) == options


def test_cuda_on_a_cluster_without_gpus_is_an_error_not_a_task_queued_forever():
    with pytest.raises(RuntimeError, match="'cuda' is configured but the Ray cluster has no GPU"):
        ray_resources(("cuda",), 0, gpus_per_task=1.0)


def test_auto_joins_a_cluster_and_never_starts_one():
    assert ray_runner_settings(RayConfig()) == {"address": None, "init_kwargs": {"address": "auto"}}
    assert ray_runner_settings(RayConfig(address="ray://head:10001")) == {
        "address": "ray://head:10001",
        "init_kwargs": {},
    }


def test_ray_address_parameter_switches_the_executor_and_is_not_recorded():
    local = CurateConfig()
    on_ray = with_ray_address(local, "auto")
    assert (on_ray.run.executor, on_ray.run.ray.address) == ("ray", "auto")
    assert with_ray_address(local, None) is local
    assert on_ray.full_hash() == local.full_hash() and "executor" not in on_ray.recorded()["run"]


@pytest.mark.slow
def test_download_slots_bound_downloads_across_ray_worker_processes(ray_cluster, monkeypatch):
    import os
    import time

    import ray

    from flows.runners import cluster_download_slots, download_slot

    class Peak:  # how many holders at once
        def __init__(self) -> None:
            self.now = self.peak = 0
            self.pids: set[int] = set()

        def enter(self, pid: int) -> None:
            self.now += 1
            self.peak = max(self.peak, self.now)
            self.pids.add(pid)

        def leave(self) -> None:
            self.now -= 1

        def result(self) -> tuple[int, int]:
            return self.peak, len(self.pids)

    def hold(cfg: CurateConfig, recorder) -> None:
        with download_slot(cfg):
            ray.get(recorder.enter.remote(os.getpid()))
            time.sleep(0.5)  # long enough for the other worker to try its luck
            ray.get(recorder.leave.remote())

    monkeypatch.setenv("RAY_ADDRESS", ray_cluster)
    ray.init(**ray_runner_settings(RayConfig())["init_kwargs"])  # "auto": the cluster RAY_ADDRESS names
    try:
        assert ray.get_runtime_context().gcs_address == ray_cluster
        cfg = load_config(overrides={"download": {"parallel": 1}, "run": {"executor": "ray"}})
        recorder = ray.remote(num_cpus=0)(Peak).remote()
        with cluster_download_slots(cfg):
            ray.get([ray.remote(hold).remote(cfg, recorder) for _ in range(4)])
        peak, processes = ray.get(recorder.result.remote())
    finally:
        ray.shutdown()
    assert peak == 1 and processes >= 1


@pytest.mark.slow
def test_the_demo_on_a_ray_cluster_writes_the_same_bytes_as_the_default_runner(
    ray_cluster, prefect_harness, demo_sources, tmp_path, monkeypatch
):
    import pipeline.video.ingest
    from flows.curate import curate

    # One catalog, one server and one data root path for both runs: records carry the videos' URLs (the port)
    # and ffprobe's messages the file's absolute path.
    catalog, data_root = tmp_path / "catalog.csv", tmp_path / "data"
    on_ray = yaml.safe_load(CONFIG_PATH.read_text())
    on_ray["run"].update(executor="ray", ray={"address": ray_cluster})
    ray_config = tmp_path / "ray.yaml"
    ray_config.write_text(yaml.safe_dump(on_ray))
    with serve_directory(demo_sources) as base_url:
        write_demo_catalog(catalog, base_url)
        curate(catalog=str(catalog), data_root=str(data_root), config=str(CONFIG_PATH))
        data_root.rename(tmp_path / "local")

        def not_here(*args, **kwargs):
            raise AssertionError("a video was decoded in the flow's process, not on the Ray cluster")

        # Ray workers import pipeline.video.ingest afresh. (Not flows.curate.ingest_video: Prefect's decorator hides the
        # task functions from their module, so cloudpickle ships them by value, with the globals they use.)
        monkeypatch.setattr(pipeline.video.ingest, "sample_video", not_here)
        result = curate(catalog=str(catalog), data_root=str(data_root), config=str(ray_config))

    assert [v["status"] for v in result["videos"]].count("ok") == 6
    local, ray_run = _dataset(tmp_path / "local"), _dataset(data_root)
    assert sorted(ray_run) == sorted(local) and len(local) > 50
    assert [name for name in local if ray_run[name] != local[name]] == []


def _dataset(root: Path) -> dict[str, Any]:
    """Every file under a data root; what yt-dlp writes differently in every process, without it.

    `videos/*/*.info.json` carry the download time (`epoch`) and the User-Agent yt-dlp draws at random per
    process; `videos/*/archive.tsv` lists downloads as they finish, an order two workers do not fix.
    """
    files: dict[str, Any] = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        name = path.relative_to(root).as_posix()
        if name.endswith(".info.json"):
            files[name] = _without(json.loads(path.read_bytes()), {"epoch", "User-Agent"})
        elif name.endswith("archive.tsv"):
            files[name] = sorted(path.read_text().splitlines())
        else:
            files[name] = path.read_bytes()
    return files


def _without(value: Any, keys: set[str]) -> Any:
    """`value` (parsed JSON) with `keys` dropped from every mapping in it."""
    if isinstance(value, dict):
        return {k: _without(v, keys) for k, v in value.items() if k not in keys}
    if isinstance(value, list):
        return [_without(v, keys) for v in value]
    return value
