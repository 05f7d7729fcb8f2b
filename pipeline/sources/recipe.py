"""Recipes: a dataset as a small file others can rebuild from the sources, never redistributing a frame.

YouTube frames cannot be shared; datasets built from them (SlowTV, Stereo4D) are shared as ids and timestamps.
A recipe holds the catalog rows, the resolved config and, per video, the kept frame indices with their pHash and a
digest of each frame as decoded. Curating with `recipe.path` set keeps exactly those frames and counts, per video,
the ones that no longer match (the source re-encoded or removed, or another yt-dlp format) instead of quietly
building another dataset.
"""

from __future__ import annotations

import functools
import gzip
import json
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict

from pipeline.io.data_root import DataRoot
from pipeline.io.storage import write_bytes_atomic
from pipeline.schema import FRAME_STATS_SCHEMA
from pipeline.sources.catalog import CatalogEntry, CatalogError, read_catalog, write_catalog

RECIPE_FORMAT = "depthcurate-recipe/1"


class RecipeVideo(BaseModel):
    """One video's kept frames, in frame order."""

    model_config = ConfigDict(extra="forbid")

    frame_index: list[int]
    phash: list[str]  # 16 hex digits each
    decoded_sha256: list[str]  # decoded_digest: 32 hex digits each

    def digests(self) -> dict[int, str]:
        return dict(zip(self.frame_index, self.decoded_sha256))


class Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: str = RECIPE_FORMAT
    generator: str  # the depthcurate version that exported it
    config: dict[str, Any]  # CurateConfig.recorded() of the dataset
    catalog: list[dict[str, Any]]  # catalog rows of the videos with kept frames, trims as applied
    videos: dict[str, RecipeVideo]  # "dataset/video_id" -> its kept frames

    def entries(self) -> list[CatalogEntry]:
        return [CatalogEntry(**row) for row in self.catalog]


def export_recipe(root: DataRoot, catalog: str | Path, generator: str) -> Recipe:
    """The recipe of the published dataset at `root`, whose videos came from `catalog`."""
    description = json.loads(root.read_bytes(root.dataset_json))
    entries, _ = read_catalog(catalog)
    by_name = {f"{e.dataset}/{e.video_id}": e for e in entries}
    videos = _kept_frames(root)
    missing = sorted(set(videos) - set(by_name))
    if missing:
        raise CatalogError(f"{catalog} does not list {len(missing)} video(s) of the dataset, e.g. {missing[0]}")
    trims = _applied_trims(root)
    rows = []
    for name in sorted(videos):
        row = {k: v for k, v in vars(by_name[name]).items() if k != "line" and v is not None}
        # The window as it was applied, so a rebuild plans the same start, end and split boundary.
        row["trim_start_s"], row["trim_end_s"] = trims[name]
        rows.append(row)
    return Recipe(generator=generator, config=description["config"], catalog=rows, videos=videos)


def write_recipe(recipe: Recipe, path: str | Path) -> Path:
    """Write atomically; a name ending in .gz is gzip-compressed (the digests are most of a recipe's bytes)."""
    path = Path(path)
    data = recipe.model_dump_json().encode()
    write_bytes_atomic(path, gzip.compress(data, mtime=0) if path.suffix == ".gz" else data)
    return path


@functools.lru_cache(maxsize=4)
def load_recipe(path: str | Path) -> Recipe:
    """Read a recipe file (cached: every video of a run looks up its frames in the same one)."""
    raw = Path(path).read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    recipe = Recipe.model_validate_json(raw)
    if recipe.format != RECIPE_FORMAT:
        raise ValueError(f"{path}: recipe format {recipe.format!r}, this depthcurate reads {RECIPE_FORMAT!r}")
    return recipe


def recipe_digests(path: str | Path, dataset: str, video_id: str) -> dict[int, str]:
    """frame_index -> decoded digest of the frames the recipe at `path` keeps for one video ({} when none)."""
    video = load_recipe(str(path)).videos.get(f"{dataset}/{video_id}")
    return video.digests() if video else {}


def rebuild_inputs(recipe_path: str | Path, workdir: Path) -> tuple[Path, dict[str, Any]]:
    """The catalog file and the config (as a dict for load_config's overrides) that rebuild a recipe."""
    recipe = load_recipe(str(recipe_path))
    catalog = write_catalog(recipe.entries(), workdir / "recipe_catalog.csv")
    config = {**recipe.config, "recipe": {"path": str(Path(recipe_path).resolve())}}
    return catalog, config


def _kept_frames(root: DataRoot) -> dict[str, RecipeVideo]:
    columns = ["dataset", "video_id", "frame_index", "phash", "decoded_sha256"]
    table = root.read_table(root.frames_table, [*columns, "kept"], FRAME_STATS_SCHEMA)
    table = table.filter(table["kept"])
    table = table.sort_by([("dataset", "ascending"), ("video_id", "ascending"), ("frame_index", "ascending")])
    names = pc.binary_join_element_wise(table["dataset"], table["video_id"], "/").to_pylist()
    indices, hashes, digests = (table[c].to_pylist() for c in ("frame_index", "phash", "decoded_sha256"))
    videos: dict[str, RecipeVideo] = {}
    for name, index, value, digest in zip(names, indices, hashes, digests):
        video = videos.setdefault(name, RecipeVideo(frame_index=[], phash=[], decoded_sha256=[]))
        video.frame_index.append(index)
        video.phash.append(f"{value:016x}" if value is not None else "")
        video.decoded_sha256.append(digest or "")
    return videos


def _applied_trims(root: DataRoot) -> dict[str, tuple[float, float]]:
    table = root.read_table(root.videos_table, ["dataset", "video_id", "trim_start_s", "trim_end_s"])
    return {
        f"{row['dataset']}/{row['video_id']}": (row["trim_start_s"], row["trim_end_s"])
        for row in table.to_pylist()
        if row["trim_start_s"] is not None
    }
