"""Degenerate solutions of self-supervised depth, seen during training (issue 18).

Two measures, taken at logged steps on rank 0's batch:

- disparity_cv: the spatial coefficient of variation (std / mean over the image) of the predicted disparity
  1/depth, the batch's mean. Near 0 the depth map is a plane: an untrained net gives about 0.01, and a sigmoid
  saturated at min_depth as little. The `category` run below passes through such an episode (about steps
  270-400) and recovers (0.2 at the end): the warning says what the map is, not that the run is lost.
- translation_gain: how much worse the views are explained with the predicted translations reversed, as a
  fraction of the photometric loss: (loss with -t - loss with t) / loss with t, with the same depth, rotation
  and intrinsics. The true direction cannot be checked without ground truth, but whether the images decide it
  can. On bench_learning's rendered canyon (1000 steps, logged every 10) the `category` run, whose pose net
  finds the camera motion (cosine 0.97 to the rendered one), logs a median of 0.42 after step 100 (10th
  percentile 0.14; 4 of 90 logged steps below 0.05, never 3 in a row); the `motion` run (offsets k = 5..10, before
  issue 18's fix in trainer/plan.py), whose translation comes out reversed (cosine -0.99), a median of 0.01
  (10th-90th percentile -0.04 to 0.06; 76 of 90 below 0.05, first warned at step 130): reversed, its translation
  explains the views about as well. A depth at max_depth everywhere, where translation moves no pixel, gives 0 too.

A measure past its bound (`run.collapse`) for `patience` consecutive logged steps after `after_step` is a warning.
The disparity comes from the training forward itself (a forward hook: no extra compute); the translation gain
costs two no-grad forwards of the objective in eval mode on each logged video step (batch-norm statistics and
the RNG untouched: training is what it would be without them).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from trainer.config import CollapseConfig
from trainer.losses import disp_to_depth
from trainer.models import PoseOutput
from trainer.objective import DepthTraining

CollapseKind = Literal["constant_disparity", "reversible_translation"]


@dataclass(frozen=True)
class CollapseStats:
    """One batch's measures; translation_gain is None on stereo batches (no pose net)."""

    disparity_cv: float
    translation_gain: float | None = None

    def columns(self) -> dict[str, float]:
        """The log row's columns (those measured)."""
        return {name: value for name, value in asdict(self).items() if value is not None}


@dataclass(frozen=True)
class CollapseWarning:
    step: int
    kind: CollapseKind
    value: float  # the measure at `step`
    message: str


@dataclass(frozen=True)
class Observation:
    stats: CollapseStats
    warnings: list[CollapseWarning]


def disparity_cv(disparity: Tensor) -> float:
    """[B,1,H,W] disparity (1/depth) -> the batch's mean of each image's std / mean."""
    flat = disparity.detach().float().flatten(1)
    return float((flat.std(1) / flat.mean(1).clamp_min(1e-12)).mean())


def translation_gain(loss: float, loss_reversed: float) -> float:
    """How much worse the reversed translation explains the views, as a fraction of the loss."""
    return (loss_reversed - loss) / max(loss, 1e-12)


class CollapseDetector:
    """Counts consecutive logged steps past each bound; warns once when a count reaches `patience`."""

    def __init__(self, cfg: CollapseConfig):
        self.cfg = cfg
        self.runs: dict[CollapseKind, int] = {}
        self.warnings: list[CollapseWarning] = []
        self.last: CollapseStats | None = None

    def update(self, step: int, stats: CollapseStats) -> list[CollapseWarning]:
        self.last = stats
        if step <= self.cfg.after_step:
            return []
        fresh = []
        for kind, value, bound, message in self._checks(stats):
            if value is None:  # not measured on this batch (stereo): the run neither grows nor breaks
                continue
            self.runs[kind] = self.runs.get(kind, 0) + 1 if value < bound else 0
            if self.runs[kind] == self.cfg.patience:
                text = f"{message} ({value:.3g} < {bound:g}) for {self.cfg.patience} logged steps, at step {step}"
                fresh.append(CollapseWarning(step, kind, value, text))
        self.warnings += fresh
        return fresh

    def _checks(self, s: CollapseStats) -> list[tuple[CollapseKind, float | None, float, str]]:
        c = self.cfg
        return [
            ("constant_disparity", s.disparity_cv, c.disparity_cv_min, "predicted disparity is near constant: CV"),
            (
                "reversible_translation",
                s.translation_gain,
                c.translation_gain_min,
                "the views are explained about as well with the predicted translation reversed: its direction "
                "is not fixed by the images and may be wrong; gain",
            ),
        ]

    def ongoing(self) -> list[CollapseKind]:
        """Kinds still past their bound for `patience` logged steps at the last one."""
        return sorted(kind for kind, run in self.runs.items() if run >= self.cfg.patience)

    def summary(self) -> dict[str, Any]:
        """metrics.json's `collapse` block: this process's warnings, those still on, and the last measures."""
        return {
            "warnings": [asdict(w) for w in self.warnings],
            "ongoing": self.ongoing(),
            **(self.last.columns() if self.last is not None else {}),
        }


class CollapseMonitor:
    """Measures the training forward's batch when asked; the detector turns the measures into warnings."""

    def __init__(self, core: DepthTraining, cfg: CollapseConfig):
        self.core = core
        self.detector = CollapseDetector(cfg)
        self.disparity: Tensor | None = None  # the last depth-net forward's full-resolution output
        self.reverse = False  # while set, the pose net's translations come out negated
        core.depth.register_forward_hook(self._depth_hook, with_kwargs=True)
        core.pose.register_forward_hook(self._pose_hook)

    def _depth_hook(self, module: nn.Module, args: Any, kwargs: dict[str, Any], out: list[Tensor]) -> None:
        first = out[0].detach()
        self.disparity = torch.sigmoid(first) if kwargs.get("logits") else first  # loss.logit_penalty's forward

    def _pose_hook(self, module: nn.Module, args: Any, out: PoseOutput) -> PoseOutput | None:
        if not self.reverse:
            return None
        transform = out.transform.clone()
        transform[:, :3, 3] = -transform[:, :3, 3]
        return out._replace(transform=transform)

    def observe(self, step: int, batch: dict[str, Any]) -> Observation:
        """The measures of `batch` (the one the last training forward ran on) and the warnings they raise."""
        assert self.disparity is not None, "observe() after a training forward"
        model = self.core.model_cfg
        cv = disparity_cv(disp_to_depth(self.disparity.float(), model.min_depth, model.max_depth)[0])
        gain = self._translation_gain(batch) if batch["kind"] == "video" else None
        stats = CollapseStats(cv, gain)
        return Observation(stats, self.detector.update(step, stats))

    def _translation_gain(self, batch: dict[str, Any]) -> float:
        was_training = self.core.training
        self.core.eval()  # batch norm reads its statistics instead of updating them
        # The automask's tie-breaking noise draws from torch's RNG: forked, so training draws what it would have.
        devices = [self.disparity.device] if self.disparity is not None and self.disparity.is_cuda else []
        try:
            with torch.random.fork_rng(devices=devices), torch.no_grad():
                loss = float(self.core.video_loss(batch)["photometric"])
                self.reverse = True
                loss_reversed = float(self.core.video_loss(batch)["photometric"])
        finally:
            self.reverse = False
            self.core.train(was_training)
        return translation_gain(loss, loss_reversed)
