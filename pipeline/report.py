"""Human-readable summaries of a dataset: what was kept, what was dropped and why, what failed."""
from __future__ import annotations

from typing import Any

import pyarrow.parquet as pq

from pipeline.layout import DataRoot
from pipeline.verify import read_description


def summarize(root: DataRoot) -> dict[str, Any]:
    description = read_description(root)
    videos = pq.read_table(root.videos_table, columns=["dataset", "video_id", "status", "error",
                                                        "frames_decoded", "frames_kept"]).to_pylist()
    counts = dict(description["counts"])
    counts["videos"] = {"ok": sum(v["status"] == "ok" for v in videos),
                        "failed": sum(v["status"] != "ok" for v in videos),
                        **{f"status:{k}": n for k, n in description["counts"]["videos"].items()}}
    return {"data_root": str(root.root), "counts": counts, "videos": videos}


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
