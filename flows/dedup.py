"""The `dedup` Prefect flow: the corpus-level CLIP pass again, over an existing dataset, with new settings.

Nothing is downloaded or decoded: embeddings that are current are reused, missing ones are computed from the
shards' JPEGs, and publish rewrites the manifests, stats tables and dataset.json (only files whose bytes change).
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.task_runners import ThreadPoolTaskRunner

from flows.curate import with_ray_address
from flows.runners import task_submitter, torch_devices
from flows.tasks import MAX_WORKERS, audit_artifacts, bounded_map, embed_task, publish_task
from pipeline.config import CurateConfig, load_config, with_overrides
from pipeline.corpus.description import dedup_config
from pipeline.corpus.publish import previous_catalog_problems
from pipeline.driver import check_clip_model
from pipeline.io.data_root import DataRoot
from pipeline.video.record import load_records


@flow(name="dedup", task_runner=ThreadPoolTaskRunner(max_workers=MAX_WORKERS), log_prints=True)  # type: ignore[arg-type]
def dedup(
    data_root: str = "data/demo",
    epsilon: float | None = None,
    config: str | None = None,
    ray_address: str | None = None,
) -> dict[str, Any]:
    """Re-run tags, junk and SemDeDup on `data_root` (epsilon overrides; `config` supplies the clip section and
    where tasks run, `run.executor` and `run.ray`; `ray_address` set: the embedding tasks run on that Ray cluster)."""
    logger = get_run_logger()
    root = DataRoot(data_root)
    cfg = with_ray_address(placed(dedup_config(root, config, epsilon), config), ray_address)
    check_clip_model(cfg, logger)
    records = [r for r in load_records(root) if r.ok]
    logger.info("corpus pass over %d videos in %s, epsilon %s", len(records), root.name, cfg.clip.semdedup.epsilon)
    with task_submitter(cfg) as submit:
        outcomes = bounded_map(
            lambda record: submit(embed_task, {"record": record, "root": root, "cfg": cfg}, torch_devices(cfg, None)),
            records,
            cfg.run.workers,
        )
    description = publish_task(root, cfg, previous_catalog_problems(root))
    audit_artifacts(root)
    clip = {k: v for k, v in description["clip"].items() if k != "embeddings"}
    return {
        "data_root": root.name,
        "counts": description["counts"],
        "clip": clip,
        "embedded": outcomes.count("embedded"),
        "failed": outcomes.count("failed"),
    }


def placed(cfg: CurateConfig, config: str | None) -> CurateConfig:
    """`cfg` with the executor settings of the YAML `config` (where tasks run is never in dataset.json)."""
    if config is None:
        return cfg
    run = load_config(config).run
    return with_overrides(cfg, {"run": {"executor": run.executor, "ray": run.ray.model_dump()}})
