"""Typed trainer configuration: defaults live here, YAML overrides them, unknown keys are errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from pipeline.config import ConfigError, load_yaml_model

__all__ = ["ConfigError", "TrainConfig", "load_train_config"]

# SlowTV's aspect-ratio augmentation: 16 ratios (width / height).
SLOWTV_ASPECT_RATIOS = (
    6 / 13,
    9 / 16,
    3 / 5,
    2 / 3,
    4 / 5,
    1.0,
    5 / 4,
    4 / 3,
    3 / 2,
    14 / 9,
    5 / 3,
    16 / 9,
    2.0,
    2.4,
    3.3,
    3.6,
)


# How shards are checked against dataset.json (DataConfig.verify).
VerifyMode = Literal["sha256", "size", "none"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FilterConfig(_Section):
    """Which manifest rows are trained on; every list left empty means 'all'."""

    datasets: list[str] = []
    categories: list[str] = []
    # Numeric bounds on manifest columns, e.g. {sharpness: [60, null], lr_pass_fraction: [0.8, null]}.
    ranges: dict[str, tuple[float | None, float | None]] = {}


class SupportConfig(_Section):
    """How far the support frames t-k, t+k sit from the target t (in kept frames of the same clip)."""

    # category: SlowTV's rule, k drawn from 1..k_max[category]. motion: k chosen per clip from the recorded
    # camera motion so that the expected displacement lands in target_px, then drawn from 1..that k.
    mode: Literal["category", "motion"] = "category"
    k_max: dict[str, int] = {"natural": 5, "driving": 1, "underwater": 5}
    default_k_max: int = Field(5, ge=1)
    # Wanted displacement range at the training width. The recorded motion is the median flow, which under forward
    # motion is set by far, slow pixels while near ones move several times as far: a median of 5 px already makes
    # k = 1..5 on bench_learning's canyons (SlowTV's k_max there); up to 24 px (k = 10) their pose net ended reversed.
    target_px: tuple[float, float] = (1.0, 5.0)
    motion_k_cap: int = Field(10, ge=1)


class AugmentConfig(_Section):
    aspect_ratios: tuple[float, ...] = SLOWTV_ASPECT_RATIOS
    aspect_prob: float = Field(0.7, ge=0, le=1)
    flip_prob: float = Field(0.5, ge=0, le=1)
    brightness: float = Field(0.2, ge=0)
    contrast: float = Field(0.2, ge=0)
    saturation: float = Field(0.2, ge=0)
    hue: float = Field(0.05, ge=0, le=0.5)
    jitter_prob: float = Field(0.5, ge=0, le=1)
    # Depth-cue-preserving resize: with this probability a batch is zoomed by a factor drawn from
    # resize_range (then cropped back to its shape); the batch carries the factor and the objective
    # divides the predicted translation by it, so the network's disparity scales with the zoom. 0: off.
    resize_prob: float = Field(0.0, ge=0, le=1)
    resize_range: tuple[float, float] = (0.5, 1.5)

    @model_validator(mode="after")
    def _resize_range(self) -> AugmentConfig:
        low, high = self.resize_range
        if not 0 < low <= high:
            raise ValueError(f"data.augment.resize_range must be 0 < low <= high, got {self.resize_range}")
        return self


class DataConfig(_Section):
    height: int = Field(192, ge=32)  # the reference size; augmented shapes keep about height*width pixels
    width: int = Field(320, ge=32)
    batch_size: int = Field(8, ge=1)
    num_workers: int = Field(2, ge=0)
    shuffle_buffer: int = Field(256, ge=1)
    row_group_cache: int = Field(4, ge=1)  # shard row groups each loader worker keeps in memory
    # Decoded frames each loader worker keeps for a later planned use (a target is another target's
    # support a few batches on); 0 decodes every time. Costs up to this much memory per worker.
    decode_cache_mb: float = Field(32.0, ge=0)
    # Each shard is checked against the data root's dataset.json when a process (a loader worker) first opens it:
    # sha256 reads the whole file once more per worker and run; size compares its length only; none trusts it.
    # A shard that differs stops the run, naming what differs.
    verify: VerifyMode = "sha256"
    # A frame that does not decode cleanly (libjpeg reports corrupt data, an unreadable PNG label, a size or sample
    # id other than the manifest's): skip leaves its target out of the batch, logs and counts it; fail stops there.
    on_bad_sample: Literal["skip", "fail"] = "skip"
    max_bad_samples: int = Field(100, ge=0)  # distinct bad frames a run skips; one more stops it
    split: str = "train"
    val_split: str = "val"
    seed: int = 0
    filters: FilterConfig = FilterConfig()
    # Batches drawn from each manifest in proportion to these weights (keyed by dataset name, as in
    # manifest/<dataset>.parquet); unset: in proportion to their sizes.
    mix: dict[str, float] = {}
    support: SupportConfig = SupportConfig()
    augment: AugmentConfig = AugmentConfig()

    @model_validator(mode="after")
    def _multiple_of_32(self) -> DataConfig:
        if self.height % 32 or self.width % 32:
            raise ValueError(f"data.height and data.width must be multiples of 32, got {self.height}x{self.width}")
        return self


class ModelConfig(_Section):
    encoder: str = "convnext_tiny"
    encoder_checkpoint: str | None = None  # a local file; nothing is downloaded
    pose_encoder: str = "resnet18"
    pose_checkpoint: str | None = None
    # given: the manifest's fx fy cx cy where known, learned where null. learned: always learned.
    intrinsics: Literal["given", "learned"] = "given"
    min_depth: float = Field(0.1, gt=0)
    max_depth: float = Field(100.0, gt=0)
    # sigmoid: Monodepth2's sigmoid disparity. aquanet: adaptive quantisation over aquanet_levels levels
    # (AQUANet); both give (d - 1/max_depth) / (1/min_depth - 1/max_depth) in [0, 1].
    disparity_head: Literal["sigmoid", "aquanet"] = "sigmoid"
    aquanet_levels: int = Field(33, ge=2)
    # SPIMO: a learned encoding of the pixel position (u, v) in the depth decoder.
    positional_encoding: bool = False


class ExplainabilityConfig(_Section):
    """SfMLearner's explainability mask: weights each support's photometric error, regularised towards 1."""

    enabled: bool = False
    weight: float = Field(0.2, ge=0)  # of the cross-entropy towards 1 (SfMLearner's lambda_e)


class SpimoConfig(_Section):
    """SPIMO second stage: pixels whose depth moves with the positional offsets are not trained on."""

    enabled: bool = False
    first_stage_checkpoint: str | None = None  # a run trained with model.positional_encoding: true
    gamma: float = Field(0.03, gt=0)  # normalised depth variance above which a pixel is excluded
    offsets_u: tuple[float, ...] = (0.0, 0.5, -0.5, 0.0)
    offsets_v: tuple[float, ...] = (0.0, 0.0, 0.0, -0.25)
    # Boosting: the excluded pixels are instead pulled towards the first stage's depth, its estimates at
    # boost_scales of the input size averaged (SPIMO: 3/4, 1, 5/4 at weight 0.1). 0: off.
    boost_weight: float = Field(0.0, ge=0)
    boost_scales: tuple[float, ...] = (0.75, 1.0, 1.25)

    @model_validator(mode="after")
    def _offsets(self) -> SpimoConfig:
        if len(self.offsets_u) != len(self.offsets_v) or len(self.offsets_u) < 2:
            raise ValueError("loss.spimo.offsets_u and offsets_v need the same length, at least 2")
        if self.enabled and not self.first_stage_checkpoint:
            raise ValueError("loss.spimo.enabled needs loss.spimo.first_stage_checkpoint")
        return self


class LossConfig(_Section):
    smoothness: float = Field(1e-3, ge=0)
    automask: bool = True
    scales: int = Field(4, ge=1, le=4)
    # full: every scale's disparity is upsampled and the views compared at full resolution (Monodepth2).
    # scale: each scale compares views downsampled to its own size (SfMLearner, Monodepth); coarse
    # scales then see motions of a few pixels, which widens the basin the pose net must find.
    photometric_resolution: Literal["full", "scale"] = "full"
    # Weight of the mean squared sigmoid input (the disparity head's logits), on every objective. The video loss
    # leaves the depth scale free and can drive the sigmoid into saturation, where no gradient reaches the network
    # again, the stereo loss's included; the penalty's gradient does not vanish there. bench_learning's mixed
    # video + stereo recipe, 3 seeds: one of three runs went flat for good without it, none with it (held-out
    # AbsRel 0.315 +- 0.115 -> 0.220 +- 0.022). 0: off; the aquanet head has no logits.
    logit_penalty: float = Field(1e-3, ge=0)
    ssi_alpha: float = Field(0.5, ge=0)
    ssi_trim: float = Field(0.2, ge=0, lt=1)
    ssi_alignment: Literal["median", "lsq"] = "median"
    video_weight: float = Field(1.0, ge=0)
    stereo_weight: float = Field(1.0, ge=0)
    explainability: ExplainabilityConfig = ExplainabilityConfig()
    spimo: SpimoConfig = SpimoConfig()


class OptimConfig(_Section):
    lr: float = Field(1e-4, gt=0)
    weight_decay: float = Field(1e-2, ge=0)
    warmup_steps: int = Field(100, ge=0)
    decay_steps: list[int] = []  # the learning rate is multiplied by decay_gamma at each of these steps
    decay_gamma: float = Field(0.1, gt=0, le=1)
    grad_accum: int = Field(1, ge=1)
    clip_grad_norm: float | None = Field(1.0, gt=0)
    max_steps: int = Field(1000, ge=1)
    # auto: bf16 autocast on CUDA, fp32 on CPU. fp16 is not offered: it NaNs on these losses.
    precision: Literal["auto", "bf16", "fp32"] = "auto"


class CollapseConfig(_Section):
    """When the run warns of a degenerate solution (trainer/collapse.py): a measure below its bound for `patience`
    consecutive logged steps past `after_step`."""

    # Spatial std / mean of the predicted disparity (1/depth): an untrained net gives about 0.01.
    disparity_cv_min: float = Field(0.05, ge=0)
    # How much worse the views are explained with the predicted translation reversed (a fraction of the
    # photometric loss): a median of 0.42 where the pose net found the camera motion, 0.01 where it did not.
    translation_gain_min: float = Field(0.05)
    patience: int = Field(3, ge=1)
    # Untrained nets fail both (flat disparity, arbitrary translation): earlier steps are not counted.
    after_step: int = Field(100, ge=0)


class RunConfig(_Section):
    out_dir: str = "runs/default"
    log_every: int = Field(10, ge=1)
    checkpoint_every: int = Field(500, ge=1)
    eval_every: int | None = Field(None, ge=1)  # None: only at the end
    eval_batches: int = Field(50, ge=1)
    device: str = "auto"
    tensorboard: bool = True
    collapse: CollapseConfig = CollapseConfig()


class EvalConfig(_Section):
    alignment: Literal["lsq_disparity", "median", "none"] = "lsq_disparity"
    min_depth: float = Field(1e-3, gt=0)
    max_depth: float = Field(80.0, gt=0)
    # A directory of <video_id>.npz rendered depth (pipeline.synthetic.renderer.save_ground_truth): fit's evaluations
    # then also score held-out video frames against it. A relative path is taken from the data root of the
    # first manifest (<root>/manifest/<dataset>.parquet), where the shards' paths start too.
    ground_truth: str | None = None


class TrainConfig(_Section):
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    loss: LossConfig = LossConfig()
    optim: OptimConfig = OptimConfig()
    run: RunConfig = RunConfig()
    eval: EvalConfig = EvalConfig()


def load_train_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Defaults, then the YAML file, then `overrides` (nested dicts); unknown keys are rejected."""
    return load_yaml_model(TrainConfig, path, overrides)
