"""dataset.json: reading it back, and the configuration a corpus-only rerun (the dedup flow) takes from it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipeline.config import CurateConfig, load_config, with_overrides
from pipeline.io.data_root import DataRoot
from pipeline.schema import check_version_string


def read_description(root: DataRoot) -> dict[str, Any]:
    """dataset.json, after checking its schema version is one this code reads."""
    if not root.exists(root.dataset_json):
        raise FileNotFoundError(f"no dataset.json under {root.name}: not a depthcurate dataset, or never published")
    description = json.loads(root.read_bytes(root.dataset_json))
    check_version_string(str(description.get("schema_version", "none")), "dataset.json")
    return description


def dedup_config(root: DataRoot, config: str | Path | None = None, epsilon: float | None = None) -> CurateConfig:
    """The dataset's own configuration (dataset.json), CLIP on, with the clip section of `config` and `epsilon`.

    Only the clip section is taken from `config`: everything else describes how the shards were made.
    """
    description = read_description(root)
    cfg = CurateConfig.model_validate(description["config"])
    clip = cfg.clip.model_dump()
    if config is not None:
        clip = load_config(config).clip.model_dump()
    clip["enabled"] = True
    if epsilon is not None:
        clip["semdedup"] = {**clip["semdedup"], "epsilon": epsilon, "enabled": True}
    return with_overrides(cfg, {"clip": clip})
