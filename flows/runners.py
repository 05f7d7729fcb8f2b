"""Where the flows' tasks run: the flow's own bounded thread pool, or an existing Ray cluster (`run.executor`).

The flow submits through `task_submitter(cfg)` and never names Ray. Under Ray each task is a Ray task on some
node: a task whose torch stages run on CUDA asks Ray for a GPU (`ray_resources`), the others ask for none, and
downloads are bounded across the whole cluster by one slot actor per flow run (a thread semaphore bounds only
the threads of one process).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Callable, Iterator
from typing import Any

from prefect import get_run_logger
from prefect.futures import PrefectFuture
from prefect.runtime import flow_run
from prefect.tasks import Task

from pipeline.config import CurateConfig, RayConfig
from pipeline.driver import local_download_slot

Submit = Callable[[Task, dict[str, Any], tuple[str, ...]], PrefectFuture]


def torch_devices(cfg: CurateConfig, layout: str | None) -> tuple[str, ...]:
    """The `device` settings of the torch stages a video task runs (layout None: an embedding-only task)."""
    devices: list[str] = []
    if layout is not None and layout != "mono":  # "auto" may turn out stereo
        if cfg.stereo.flow.backend == "raft":
            devices.append(cfg.stereo.flow.device)
        if cfg.stereo.sky.backend == "torchscript":
            devices.append("auto")  # the segmenter takes the GPU when it sees one
    if cfg.clip.enabled:
        devices.append(cfg.clip.device)
    return tuple(devices)


def ray_resources(devices: tuple[str, ...], cluster_gpus: float, gpus_per_task: float) -> dict[str, Any]:
    """Ray options of a task whose torch stages use `devices`: a GPU share when one of them runs on CUDA.

    "cuda..." must get a GPU, so a cluster without one is an error (Ray would queue the task forever);
    "auto" takes one when the cluster has any; "cpu" and CPU-only stages ask for none.
    """
    explicit = [d for d in devices if d.startswith("cuda")]
    if explicit and cluster_gpus <= 0:
        raise RuntimeError(f"device {explicit[0]!r} is configured but the Ray cluster has no GPU")
    wants_gpu = bool(explicit) or ("auto" in devices and cluster_gpus > 0)
    return {"num_gpus": gpus_per_task} if wants_gpu else {}


@contextlib.contextmanager
def task_submitter(cfg: CurateConfig) -> Iterator[Submit]:
    """`submit(task, parameters, devices)` onto the configured executor, open for the duration."""
    if cfg.run.executor == "local":
        yield lambda task, parameters, devices: task.submit(**parameters)  # the flow's ThreadPoolTaskRunner
        return
    import ray
    from prefect_ray import RayTaskRunner
    from prefect_ray.context import remote_options

    with RayTaskRunner(**ray_runner_settings(cfg.run.ray)) as runner, cluster_download_slots(cfg):
        gpus = float(ray.cluster_resources().get("GPU", 0))
        get_run_logger().info(
            "tasks run on the Ray cluster at %s (%d CPUs, %g GPUs)",
            cfg.run.ray.address,
            ray.cluster_resources().get("CPU", 0),
            gpus,
        )

        def submit(task: Task, parameters: dict[str, Any], devices: tuple[str, ...]) -> PrefectFuture:
            _ship_path_loaded_modules(task)
            with remote_options(**ray_resources(devices, gpus, cfg.run.ray.gpus_per_task)):
                return runner.submit(task, parameters)

        yield submit


def _ship_path_loaded_modules(task: Task) -> None:
    """Pickle by value the modules the flow's process loaded from their file path: the task's and the flow's.

    A deployment loads its entrypoint (flows/curate.py) as a module named `curate`, which Ray workers cannot
    import. The run context Prefect ships with every task carries the flow, so the flow's module must travel
    by value even when the task itself lives in an importable module (flows.tasks); a package module
    (`flows.curate`) has a dot in its name, and workers import it like any other.
    """
    import ray.cloudpickle
    from prefect.context import FlowRunContext

    names = {task.fn.__module__}
    context = FlowRunContext.get()
    if context is not None and context.flow is not None:
        names.add(context.flow.fn.__module__)
    for name in names:
        if "." not in name and name in sys.modules:
            ray.cloudpickle.register_pickle_by_value(sys.modules[name])


def ray_runner_settings(ray_cfg: RayConfig) -> dict[str, Any]:
    """RayTaskRunner arguments that join an existing cluster and never start one."""
    # prefect-ray reads address "auto" as "no address" (start a local instance when none is found);
    # ray.init(address="auto") instead fails when there is no cluster to join.
    if ray_cfg.address == "auto":
        return {"address": None, "init_kwargs": {"address": "auto"}}
    return {"address": ray_cfg.address, "init_kwargs": {}}


@contextlib.contextmanager
def download_slot(cfg: CurateConfig) -> Iterator[None]:
    """Hold one of the run's `download.parallel` download slots while the block runs."""
    if cfg.run.executor == "local":
        with local_download_slot(cfg):
            yield
        return
    import ray

    actor = ray.get_actor(_slots_actor_name())
    ray.get(actor.acquire.remote())
    try:
        yield
    finally:  # a worker killed here leaks its slot: the rest of the run downloads with one fewer
        ray.get(actor.release.remote())


class _Slots:
    """A counting semaphore that lives in a Ray actor, so tasks in any process on any node share it."""

    def __init__(self, count: int) -> None:
        self._free = asyncio.Semaphore(count)

    async def acquire(self) -> None:
        await self._free.acquire()

    async def release(self) -> None:
        self._free.release()


@contextlib.contextmanager
def cluster_download_slots(cfg: CurateConfig) -> Iterator[None]:
    """The run's `download.parallel` slots as a named actor, which `download_slot` finds from any Ray worker."""
    import ray

    # num_cpus=0: the actor only waits; it must not take a CPU from the video tasks.
    actor = ray.remote(num_cpus=0)(_Slots).options(name=_slots_actor_name()).remote(cfg.download.parallel)
    try:
        yield
    finally:
        # Ray types .remote() as ActorHandle | type[_Slots] (so the class's methods type-check); it is a handle.
        ray.kill(actor)  # type: ignore[arg-type]


def _slots_actor_name() -> str:
    return f"depthcurate-download-slots-{flow_run.id}"
