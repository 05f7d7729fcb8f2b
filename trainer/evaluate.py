"""Evaluate a depth network on manifest samples: stereo disparity, and rendered depth where it is known.

Predictions are relative (self-supervised scale, SSI training), so they are aligned to the ground truth
before the metrics: least squares in disparity space by default (MiDaS), median scaling as an option.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from trainer.config import TrainConfig
from trainer.data import BatchBuilder, GroundTruth
from trainer.integrity import BadSampleLedger, ShardVerifier
from trainer.manifest import data_root_of
from trainer.metrics import MetricAccumulator, depth_metrics, disparity_metrics
from trainer.objective import DepthTraining
from trainer.plan import Batch, EpochPlan

METRIC_NAMES = ("abs_rel", "sq_rel", "rmse", "log_rmse", "a1", "a2", "a3")
# What a source's metrics are measured against, by the source's kind ("<dataset>/<kind>").
REFERENCES = {"stereo": "stereo_disparity", "video": "rendered_depth"}


def open_ground_truth(
    directory: str | Path | None, manifests: list[str], frame: pd.DataFrame | None = None
) -> GroundTruth | None:
    """The rendered depth to evaluate video frames against (relative: from the first manifest's data root).

    With `frame` (the rows to evaluate), a directory that covers none of its videos is an error: it would
    silently score nothing."""
    if directory is None:
        return None
    path = Path(directory)
    if not path.is_absolute():
        path = data_root_of(manifests[0]) / path
    truth = GroundTruth(path)
    if frame is not None:
        videos = sorted(set(frame.loc[frame["kind"] == "video", "video_id"].astype(str)))
        if videos and not set(videos) & set(truth.videos):
            raise ValueError(
                f"ground-truth directory {path} has no <video_id>.npz for any of the videos "
                f"evaluated on ({', '.join(videos[:5])}{', ...' if len(videos) > 5 else ''}); "
                f"it holds {', '.join(truth.videos[:5])}{', ...' if len(truth.videos) > 5 else ''}"
            )
    return truth


def references(metrics: dict[str, Any]) -> dict[str, str]:
    """Per source of `evaluate_model`'s result: the ground truth its metrics were measured against."""
    return {
        source: REFERENCES[source.rsplit("/", 1)[-1]] for source, values in metrics.items() if isinstance(values, dict)
    }


def evaluation_batches(
    plan: EpochPlan,
    cfg: TrainConfig,
    ground_truth: GroundTruth | None = None,
    max_batches: int | None = None,
    verifier: ShardVerifier | None = None,
) -> Iterator[dict[str, Any]]:
    """Every row that can be scored, source by source in manifest order, at the reference size, unaugmented.

    Video frames are scored only against rendered depth, so those of videos without any are left out: a
    capped pass (fit's run.eval_batches) is not spent decoding frames that cannot be scored. Bad samples are
    left out as in training (data.on_bad_sample, data.max_bad_samples, counted per pass); a batch of nothing
    but bad samples is passed over. verifier: the run's shard checks, so a shard is not checked again."""
    builder = BatchBuilder(
        plan, cfg.data, train=False, with_supports=False, ground_truth=ground_truth, verifier=verifier
    )
    ledger = BadSampleLedger(cfg.data)
    size = cfg.data.batch_size
    covered = plan.frame["video_id"].astype(str).isin(ground_truth.videos if ground_truth else []).to_numpy()
    for source in range(len(plan.sources)):
        rows = np.flatnonzero((plan.source_of == source) & (covered | (plan.sources[source].kind != "video")))
        for count, start in enumerate(range(0, len(rows), size)):
            if max_batches is not None and count >= max_batches:
                break
            batch = builder(Batch(source, rows[start : start + size], (cfg.data.seed,)))
            ledger.record(batch.pop("bad_samples"))
            ledger.check_limit()
            if batch["sample_id"]:
                yield batch


@torch.no_grad()
def evaluate_model(
    model: DepthTraining,
    plan: EpochPlan,
    cfg: TrainConfig,
    device: torch.device | str,
    ground_truth: GroundTruth | None = None,
    max_batches: int | None = None,
    predict: Callable[[Tensor], Tensor] | None = None,
    verifier: ShardVerifier | None = None,
) -> dict[str, dict[str, float]]:
    """Metrics per source ("<dataset>/<kind>"); video sources only where ground-truth depth exists.

    predict: scores another predictor of disparity in place of model.predict_disparity."""
    was_training = model.training
    model.eval()
    predict = predict or model.predict_disparity
    totals: dict[str, MetricAccumulator] = {}
    for batch in evaluation_batches(plan, cfg, ground_truth, max_batches, verifier):
        image = batch["image"].to(device)
        disparity = predict(image).float().cpu()
        if batch["kind"] == "stereo":
            values = disparity_metrics(disparity, batch["disparity"], batch["valid"] | batch["sky"])
        elif "gt_depth" in batch and torch.isfinite(batch["gt_depth"]).any():
            gt = batch["gt_depth"]
            values = depth_metrics(
                1.0 / disparity.clamp_min(1e-6),
                gt,
                torch.isfinite(gt),
                min_depth=cfg.eval.min_depth,
                max_depth=cfg.eval.max_depth,
                alignment=cfg.eval.alignment,
            )
        else:
            continue
        totals.setdefault(batch["source"], MetricAccumulator()).update(values, len(batch["sample_id"]))
    model.train(was_training)
    return {source: acc.compute() for source, acc in sorted(totals.items())}


def format_metrics(metrics: dict[str, dict[str, float]]) -> str:
    """A plain-text table, one row per source."""
    if not metrics:
        return "no samples with ground truth (stereo disparity or rendered depth) to evaluate on"
    names = [n for n in METRIC_NAMES if any(n in m for m in metrics.values())]
    width = max(len(s) for s in metrics) + 2
    lines = ["source".ljust(width) + "".join(n.rjust(10) for n in names)]
    for source, values in metrics.items():
        cells = "".join(f"{values[n]:10.4f}" if n in values else " " * 10 for n in names)
        lines.append(source.ljust(width) + cells)
    return "\n".join(lines)
