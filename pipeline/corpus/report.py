"""Human-readable summaries of a dataset: what was kept, what was dropped and why, what failed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyarrow.compute as pc

from pipeline.corpus.description import read_description
from pipeline.io.data_root import DataRoot
from pipeline.schema import DROP_REASONS, FRAME_STATS_SCHEMA


def summarize(root: DataRoot) -> dict[str, Any]:
    description = read_description(root)
    videos = root.read_table(
        root.videos_table, columns=["dataset", "video_id", "status", "error", "frames_decoded", "frames_kept"]
    ).to_pylist()
    counts = dict(description["counts"])
    counts["videos"] = {
        "ok": sum(v["status"] == "ok" for v in videos),
        "failed": sum(v["status"] != "ok" for v in videos),
        **{f"status:{k}": n for k, n in description["counts"]["videos"].items()},
    }
    return {"data_root": root.name, "counts": counts, "videos": videos}


def format_summary(summary: dict[str, Any]) -> str:
    counts = summary["counts"]
    lines = [
        f"dataset: {summary['data_root']}",
        f"videos: {counts['videos']['ok']} ok, {counts['videos']['failed']} failed",
        f"frames: {counts['frames_decoded']} decoded, {counts['frames_kept']} kept",
        "samples per dataset: " + (", ".join(f"{k}={v}" for k, v in counts["samples"].items()) or "none"),
        "drops by reason:",
        *[f"  {reason:<24}{n:>10}" for reason, n in counts["dropped"].items() if n],
    ]
    failures = [v for v in summary["videos"] if v["status"] != "ok"]
    if failures:
        lines.append("failed videos:")
        lines += [f"  {v['dataset'] or '-'}/{v['video_id'] or '-'}: {v['status']}: {v['error']}" for v in failures]
    return "\n".join(lines)


def audit_tables(root: DataRoot) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """How many frames each rule dropped, per video and per (dataset, category), from the stats tables.

    Only the reasons that dropped something anywhere get a column, so the tables stay readable.
    """
    videos = [v for v in root.read_table(root.videos_table).to_pylist() if v["status"] != "catalog_error"]
    categories = root.read_table(root.categories_table).to_pylist()
    reasons = [f"dropped_{r}" for r in DROP_REASONS if any(v[f"dropped_{r}"] for v in videos)]
    keys = ("frames_decoded", "frames_kept", *reasons)
    video_rows = [
        {
            "dataset": v["dataset"],
            "video_id": v["video_id"],
            "category": v["category"],
            "status": v["status"],
            **{k: v[k] or 0 for k in keys},
        }
        for v in videos
    ]
    category_rows = [
        {
            "dataset": c["dataset"],
            "category": c["category"],
            "videos": c["videos"],
            "videos_ok": c["videos_ok"],
            **{k: c[k] for k in keys},
        }
        for c in categories
    ]
    return video_rows, category_rows


@dataclass(frozen=True)
class RecipeReport:
    text: str
    changed: bool  # some frame the recipe keeps was not rebuilt


def recipe_report(root: DataRoot, examples: int = 5) -> RecipeReport:
    """Per video of a rebuilt recipe: its frames kept again, changed (with a few frame indices), never decoded."""
    videos = root.read_table(root.videos_table).to_pylist()
    frames = root.read_table(
        root.frames_table, ["dataset", "video_id", "frame_index", "drop_reason"], FRAME_STATS_SCHEMA
    )
    changed_by_video: dict[str, list[int]] = {}
    for row in frames.filter(pc.equal(frames["drop_reason"], "recipe_changed")).to_pylist():
        changed_by_video.setdefault(f"{row['dataset']}/{row['video_id']}", []).append(row["frame_index"])
    lines, changed = ["recipe check (kept again / changed / never decoded):"], False
    for video in videos:
        if video["recipe_matched"] is None:
            if video["status"] != "ok":  # a recipe video that failed outright: every frame of it is lost
                lines.append(f"  {video['dataset'] or '-'}/{video['video_id'] or '-'}: {video['status']}")
                changed = True
            continue
        name = f"{video['dataset']}/{video['video_id']}"
        indices = changed_by_video.get(name, [])
        shown = ", ".join(map(str, indices[:examples])) + (", ..." if len(indices) > examples else "")
        lines.append(
            f"  {name}: {video['recipe_matched']} / {video['recipe_changed']} / {video['recipe_missing']}"
            + (f"  (changed: {shown})" if indices else "")
        )
        changed = changed or bool(video["recipe_changed"] or video["recipe_missing"])
    lines.append("every frame of the recipe was rebuilt" if not changed else "some frames of the recipe changed")
    return RecipeReport("\n".join(lines), changed)
