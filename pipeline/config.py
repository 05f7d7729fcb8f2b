"""Typed pipeline configuration: defaults live here, YAML overrides them, unknown keys are errors."""

from __future__ import annotations

import difflib
import hashlib
import json
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_serializer, model_validator

from pipeline.errors import redact_secrets

_M = TypeVar("_M", bound=BaseModel)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DownloadConfig(_Section):
    # 136 is the 720p H.264 video-only stream SlowTV used; the rest are fallbacks for when it is gone.
    # `height<=?` keeps direct links (no height reported) eligible.
    format: str = (
        "136/bv*[vcodec^=avc1][height<=?720][ext=mp4]/bv*[height<=?720][ext=mp4]"
        "/bv*[height<=?720]/b[height<=?720]/bv*/b"
    )
    attempts: int = Field(3, ge=1)
    backoff_s: float = Field(2.0, ge=0)
    socket_timeout_s: float = Field(30.0, gt=0)
    rate_limit: str | None = None  # bandwidth per download, yt-dlp syntax, e.g. "2M"
    cookies_file: str | None = None  # Netscape cookies.txt: YouTube's bot check, age-restricted, members-only
    parallel: int = Field(2, ge=1)  # concurrent downloads; YouTube throttles many parallel ones
    # YouTube needs a JavaScript runtime (plus the EJS scripts of the yt-dlp-ejs package) to solve its
    # challenges. "deno" without a path is the binary of the `deno` package of this environment, found from
    # Python, so PATH does not matter; other runtimes, or a path, are passed to yt-dlp as given. None: none.
    js_runtime: Literal["deno", "node", "bun", "quickjs"] | None = "deno"
    js_runtime_path: str | None = None
    # yt-dlp's extractor arguments, e.g. {"youtube": {"player_client": ["default", "web_safari"]}}; a PO-token
    # provider plugin (bgutil-ytdlp-pot-provider) is configured here too ("youtubepot-bgutilhttp": {...}).
    extractor_args: dict[str, dict[str, list[str]]] = {}
    proxy: str | None = None  # e.g. "socks5://127.0.0.1:1080"; credentials are redacted where it is recorded
    sleep_requests_s: float = Field(0.0, ge=0)  # pause between yt-dlp's requests during extraction
    # Per host (youtube.com, youtu.be and www.youtube.com count as one): at least this many seconds between the
    # starts of two downloads in one process (each Ray worker process keeps its own clock).
    host_interval_s: float = Field(0.0, ge=0)
    # Local sources (absolute paths, file:// URLs) are linked in place, never copied, and only from under
    # these directories (symlinks resolved first); empty: every local source is refused (local_path_refused).
    local_roots: list[str] = []

    @field_serializer("proxy", when_used="json")
    def _redact_proxy(self, proxy: str | None) -> str | None:
        return redact_secrets(proxy) if proxy else proxy


class TrimConfig(_Section):
    head_s: float = Field(300.0, ge=0)
    tail_s: float = Field(300.0, ge=0)
    # Default trims shrink to this fraction of the duration each, so short videos keep most frames.
    max_fraction: float = Field(0.1, ge=0, lt=0.5)


class DecimateConfig(_Section):
    keep: int = Field(100, ge=1)
    every: int = Field(250, ge=1)

    @model_validator(mode="after")
    def _keep_le_every(self) -> DecimateConfig:
        if self.keep > self.every:
            raise ValueError(f"decimate.keep ({self.keep}) must be <= decimate.every ({self.every})")
        return self


class SampleConfig(_Section):
    fps: float = Field(10.0, gt=0)
    max_height: int | None = Field(720, ge=16)  # resize down (never up); None keeps the native size
    trim: TrimConfig = TrimConfig()
    decimate: DecimateConfig | None = DecimateConfig()  # SlowTV: 100 frames kept in every 250
    jpeg_quality: int = Field(95, ge=1, le=100)


class ShotConfig(_Section):
    # PySceneDetect ContentDetector scale: mean |dH|,|dS|,|dV| between consecutive frames.
    threshold: float = Field(27.0, gt=0)  # a cut whatever came before
    # Adaptive rule (after PySceneDetect's AdaptiveDetector, looking back only, so it streams):
    # a score of at least `min_score` that is `adaptive_ratio` times the mean of the last `window` scores.
    min_score: float = Field(15.0, gt=0)
    adaptive_ratio: float = Field(3.0, gt=1)
    window: int = Field(8, ge=1)
    min_frames: int = Field(3, ge=1)  # shortest shot, at the sampled fps


class QualityConfig(_Section):
    dark_max_brightness: float = 16.0  # mean luma (0-255) below this is `dark`
    blank_max_std: float = 6.0  # luma std below this is `blank` (a flat card)
    blur_min_sharpness: float = 40.0  # variance of the Laplacian at the analysis width
    static_max_motion: float = 0.002  # median flow / image width between consecutive kept frames
    analysis_width: int = Field(256, ge=32)  # quality measures are computed at this width


class DedupConfig(_Section):
    # 64-bit pHash distance counted as a duplicate. pHash is a layout fingerprint: re-encodes of the
    # same frame measured 0-3 apart, different scenes with a similar layout from 5 up.
    max_hamming: int = Field(4, ge=0, le=64)
    # Within a video, frames closer than this in time are neighbours, not duplicates (loops, replays).
    min_separation_s: float = Field(60.0, ge=0)
    # ... shrunk to this fraction of a short video's sampled duration: a clip that loops is still caught, while
    # frames of ordinary slow footage, similar in layout a second apart, are not taken for repeats.
    separation_max_fraction: float = Field(0.5, ge=0, le=1)
    across_videos: bool = True


class SplitConfig(_Section):
    train_fraction: float = Field(0.9, ge=0, le=1)
    gap_frames: int = Field(100, ge=0)  # dropped on each side of the boundary (at the sampled fps)
    # ... shrunk to this fraction of a short video's sampled frames per side, so a 20 s clip is not eaten whole.
    gap_max_fraction: float = Field(0.05, ge=0, lt=0.5)


class WriteConfig(_Section):
    row_group_bytes: int = Field(64 * 2**20, ge=2**16)
    part_bytes: int = Field(1024 * 2**20, ge=2**20)
    compression: Literal["none", "snappy", "zstd"] = "none"  # JPEG bytes do not compress further


class RayConfig(_Section):
    """The existing Ray cluster that runs the per-video tasks when `run.executor` is "ray"."""

    # "auto": the cluster this machine joined (`ray start --address=...`, or RAY_ADDRESS); "host:6379": a head
    # node's GCS address; "ray://host:10001": Ray Client. A missing cluster is an error: none is started here.
    address: str = "auto"
    # Ray's GPU share for a task whose torch stages (RAFT flow, TorchScript sky, CLIP) run on CUDA; below 1 packs
    # several such tasks onto one GPU.
    gpus_per_task: float = Field(1.0, gt=0, le=1)


class RunConfig(_Section):
    workers: int = Field(2, ge=1)  # videos processed at once (on Ray too: raise it to use a bigger cluster)
    retry_failed: bool = True  # rerun videos whose earlier attempt failed transiently (timeouts, 5xx)
    # Where tasks run: "local" is the flow's bounded thread pool; "ray" the cluster of `ray`. Neither changes
    # a byte of the output, so neither is recorded in dataset.json (see CurateConfig.recorded).
    executor: Literal["local", "ray"] = "local"
    ray: RayConfig = RayConfig()
    # How a rerun checks a finished video's shards and frame parts against its record before skipping it:
    # "sha256" re-reads them (disk speed, once per rerun) and catches any changed byte; "size" is one stat
    # per file and catches only truncated or missing files. A damaged video is rebuilt either way.
    resume_check: Literal["size", "sha256"] = "sha256"
    # Overlapping runs on one data root: a run leases each video before touching its files, and the corpus
    # before publishing. A video another live run holds is skipped (the next run picks it up), or waited for up to
    # busy_wait_s; publish waits up to publish_wait_s. A lease not refreshed for lease_stale_s is taken over.
    busy_wait_s: float = Field(0.0, ge=0)
    publish_wait_s: float = Field(1800.0, ge=0)
    lease_heartbeat_s: float = Field(5.0, gt=0)
    lease_stale_s: float = Field(60.0, gt=0)

    @model_validator(mode="after")
    def _stale_after_heartbeats(self) -> RunConfig:
        if self.lease_stale_s < 3 * self.lease_heartbeat_s:
            raise ValueError("run.lease_stale_s must be at least 3 heartbeats (run.lease_heartbeat_s)")
        return self


class OpticalFlowConfig(_Section):
    backend: Literal["dis", "raft"] = "dis"
    dis_preset: Literal["ultrafast", "fast", "medium"] = "medium"
    # DIS finest_scale (None: the preset's, medium's 1 = half resolution). 0 searches at full resolution: on the real
    # pair at a 3D movie's parallax, kept pixels off by > 3 px fall from 1.3% to 0.9%, for 3-6x the flow time.
    dis_finest_scale: int | None = Field(None, ge=0)
    # DIS patch_size (None: the preset's 8). 6 with finest scale 0 blurs depth edges less: on the real pairs
    # (benchmarks/bench_stereo.py real_pairs) fewer kept pixels off by > 3 px at every parallax, ~1.4x the flow time.
    dis_patch_size: int | None = Field(None, ge=4)
    raft_checkpoint: str | None = None  # local state-dict file; never downloaded at run time
    raft_small: bool = False
    raft_iterations: int = Field(12, ge=1)
    device: str = "auto"  # auto, cpu, cuda, cuda:1 ...
    batch_size: int = Field(8, ge=1)


class SkyConfig(_Section):
    backend: Literal["gradient", "torchscript", "none"] = "gradient"
    # Veto sky where the disparity says "near". Off: flow fills a textureless sky with its skyline's
    # disparity, and on one benchmark scene the veto cut sky IoU from 0.97 to 0.65.
    use_disparity: bool = False
    model_path: str | None = None  # TorchScript segmenter for the torchscript backend
    sky_class_id: int = 2  # ADE20K 150-class, 0-based; Cityscapes trainId is 10
    input_size: tuple[int, int] = (512, 512)  # (width, height) fed to the segmenter
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)  # RGB, on 0-1 pixels
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)


# `stereo.quality: accurate` (pipeline/stereo/disparity.py says what it buys and costs): DIS at full resolution with
# 6 px patches, about 5x DIS medium's flow time, and a mask asking more of the left-right, vertical and match cues.
# min_confidence 0.625 is where both of issue 16's aims hold on the real pairs (benchmarks/results/stereo.json
# real_pairs.*.tradeoff): at 0.6 motorcycle at a movie's parallax keeps 1.03% off by > 3 px, at 0.65 Aloe at 16.5%
# keeps 0.696 of its pixels. The window is narrow, and it was chosen on those same pairs.
ACCURATE_STEREO: dict[str, Any] = {
    "flow": {"dis_finest_scale": 0, "dis_patch_size": 6},
    "max_disparity_gradient": 3.0,
    "min_match_ncc": 0.6,
    "min_confidence": 0.625,
}

# Named sets of the stereo checks' thresholds; a field given explicitly beside `profile` overrides its value.
STEREO_PROFILES: dict[str, dict[str, float]] = {
    "midas": {
        "lr_max_px": 2.0,
        "vertical_max_px": 2.0,
        "max_vertical_fail": 0.10,
        "min_lr_pass": 0.70,
        "min_disparity_range_px": 10.0,
    },
    "stereo4d": {
        "lr_max_px": 1.0,
        "vertical_max_px": 1.0,
        "max_vertical_fail": 0.10,
        "min_lr_pass": 0.70,
        "min_disparity_range_px": 10.0,
    },
}


class StereoConfig(_Section):
    """The 3D-movie branch (MiDaS numbers by default)."""

    letterbox: bool = True  # detect black bars and crop them
    crop: tuple[int, int] | None = (1880, 800)  # centre crop per view (width, height); None = no crop
    output_size: tuple[int, int] | None = (940, 400)  # resize per view; None = keep; disparity scales too
    # A view needing more enlargement than this to reach output_size fails as stereo_view_too_small; None allows any.
    max_upscale: float | None = Field(None, gt=0)
    flow: OpticalFlowConfig = OpticalFlowConfig()
    sky: SkyConfig = SkyConfig()
    profile: Literal["midas", "stereo4d"] = "midas"  # fills the five thresholds below unless they are given
    # `accurate` fills ACCURATE_STEREO's keys (flow and confidence) unless they are given; `fast` is the defaults.
    quality: Literal["fast", "accurate"] = "fast"
    # The defaults are the midas profile's: STEREO_PROFILES holds the numbers, once.
    lr_max_px: float = Field(STEREO_PROFILES["midas"]["lr_max_px"], gt=0)  # left-right consistency
    vertical_max_px: float = Field(STEREO_PROFILES["midas"]["vertical_max_px"], gt=0)  # |v| of the L->R flow
    # of the pixels that pass the left-right check
    max_vertical_fail: float = Field(STEREO_PROFILES["midas"]["max_vertical_fail"], ge=0, le=1)
    min_lr_pass: float = Field(STEREO_PROFILES["midas"]["min_lr_pass"], ge=0, le=1)
    min_disparity_range_px: float = Field(STEREO_PROFILES["midas"]["min_disparity_range_px"], ge=0)
    # Per-pixel confidence (pipeline/stereo/disparity.py): each cue is normalised to 1 at its limit, and
    # valid = confidence >= min_confidence; 0.5 is exactly "every cue within its limit".
    min_confidence: float = Field(0.5, ge=0, le=1)
    min_match_ncc: float = Field(0.7, ge=-1, lt=1)  # 7x7 ZNCC of the left view and the flow-warped right view
    max_disparity_gradient: float = Field(1.0, gt=0)  # px of disparity per px, largest within 5x5
    max_sky_fraction: float = Field(0.8, ge=0, le=1)
    clip_frames: int = Field(4, ge=1)  # frames per clip ...
    clip_span_s: float = Field(1.0, gt=0)  # ... spread over this long
    jump_s: float = Field(4.0, ge=0)  # skipped between clips
    store_right_view: bool = False
    # Source QA (pipeline/stereo/qa.py), voted per batch of pairs (flow.batch_size consecutive pairs of a video).
    on_swapped: Literal["swap", "reject"] = "swap"  # eyes found swapped: read the pair the other way, or drop it
    swap_min_fraction: float = Field(0.9, gt=0.5, le=1)  # of signed valid disparity that is negative, to vote swapped
    max_desync_score: float = Field(0.5, gt=0, le=1)  # |corr(vertical stereo flow, vertical motion)| over it: desync

    @model_validator(mode="before")
    @classmethod
    def _fill_named_settings(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        profile = data.get("profile", "midas")
        # An unknown profile or quality fills nothing: their Literal fields then reject it by name.
        filled = {**(STEREO_PROFILES.get(profile, {}) if isinstance(profile, str) else {}), **data}
        if data.get("quality") == "accurate":
            flow = data.get("flow") or {}
            if isinstance(flow, BaseModel):
                flow = flow.model_dump(exclude_unset=True)
            filled = {**ACCURATE_STEREO, **filled, "flow": {**ACCURATE_STEREO["flow"], **flow}}
        return filled


class TagPrompts(_Section):
    """Zero-shot prompts per content tag (the manifest's tag_<name> columns); a tag's prompts are averaged."""

    natural: tuple[str, ...] = (
        "a photo of nature",
        "a photo of a forest",
        "a photo of mountains",
        "a photo of a lake or a river",
        "a photo of a beach",
        "a photo of a snowy landscape",
    )
    driving: tuple[str, ...] = (
        "a photo taken from a car driving on a road",
        "a dashcam view of a road",
        "a view through a car windscreen",
        "a photo of a highway from a driving car",
    )
    underwater: tuple[str, ...] = (
        "an underwater photo",
        "a photo of a coral reef",
        "a photo of fish underwater",
        "a photo taken by a scuba diver",
    )
    indoor: tuple[str, ...] = ("a photo of a room", "a photo taken indoors", "a photo of the inside of a building")
    urban: tuple[str, ...] = ("a photo of a city street", "a photo of buildings in a city", "a photo of a town")


class JunkPrompts(_Section):
    """Prompts per kind of junk frame (the junk_<name> columns), each scored against `clean`."""

    text: tuple[str, ...] = (
        "a title card with text",
        "a frame with large text over it",
        "an image with a caption and subtitles",
        "the opening credits of a video",
    )
    blank: tuple[str, ...] = ("a black screen", "a blank frame", "an image of a single flat colour")
    screen: tuple[str, ...] = (
        "a screenshot of a computer screen",
        "a screen recording of software",
        "a photo of a website",
    )
    pip: tuple[str, ...] = (
        "a video with a small picture-in-picture window",
        "two videos shown side by side",
        "a video with an inset frame in the corner",
    )
    # What a frame worth keeping looks like: each junk score is P(junk | junk prompts or these).
    clean: tuple[str, ...] = (
        "a photo of a place",
        "a photo of a landscape",
        "a photo of a street",
        "a photo of a scene",
    )


class JunkThresholds(_Section):
    """Drop a kept frame as junk_<name> when its score is at least this; None = score only, never drop."""

    text: float | None = Field(None, ge=0, le=1)
    blank: float | None = Field(None, ge=0, le=1)
    screen: float | None = Field(None, ge=0, le=1)
    pip: float | None = Field(None, ge=0, le=1)


class SemDedupConfig(_Section):
    """SemDeDup over the corpus: k-means of the embeddings, then near-duplicates within each cluster."""

    enabled: bool = True
    # Duplicate when cosine similarity > 1 - epsilon (NVIDIA NeMo Curator's default epsilon: 0.01).
    epsilon: float = Field(0.01, ge=0, le=2)
    clusters: int | None = Field(None, ge=1)  # None: ceil(sqrt(n)), which balances k-means and per-cluster cost
    iterations: int = Field(20, ge=1)  # Lloyd iterations of spherical k-means
    sample_per_cluster: int = Field(256, ge=1)  # k-means fits on at most this many points per cluster (faiss's rule)
    seed: int = 0


class ClipConfig(_Section):
    """Corpus-level curation with open_clip: embeddings, zero-shot tags and junk scores, SemDeDup.

    Runs at publish time over the shards, so none of this is in the processing hash: changing it never
    re-downloads or re-decodes a video. Weights come from a local file (`checkpoint`); a `pretrained` tag
    makes open_clip download from its hub, which offline machines cannot do.
    """

    enabled: bool = False
    model: str = "ViT-B-32"  # open_clip architecture name
    checkpoint: str | None = None  # local state dict (.pt, .bin, .safetensors)
    pretrained: str | None = None  # open_clip pretrained tag, e.g. laion2b_s34b_b79k (downloads)
    # An open_clip model-config JSON for an architecture open_clip does not ship; its file stem is its name.
    architecture: str | None = None
    device: str = "auto"  # auto, cpu, cuda, cuda:1 ...
    amp: Literal["bf16", "fp16", "off"] = "bf16"  # autocast dtype on GPU; the CPU always runs fp32
    batch_size: int = Field(64, ge=1)
    decode_workers: int = Field(2, ge=1)  # threads decoding and preprocessing JPEGs ahead of the model
    tags: TagPrompts = TagPrompts()
    junk: JunkPrompts = JunkPrompts()
    junk_drop: JunkThresholds = JunkThresholds()
    semdedup: SemDedupConfig = SemDedupConfig()

    @model_validator(mode="after")
    def _one_weight_source(self) -> ClipConfig:
        if self.checkpoint and self.pretrained:
            raise ValueError("clip.checkpoint and clip.pretrained are alternatives: set one")
        if self.enabled and not (self.checkpoint or self.pretrained):
            raise ValueError("clip.enabled needs clip.checkpoint (a local weights file) or clip.pretrained (a tag)")
        return self


class IntrinsicsConfig(_Section):
    """Per-video camera intrinsics from COLMAP (pycolmap), as SlowTV estimated them.

    Runs on a finished video's shards, so it sits outside the processing hash: switching it on or changing it
    never re-decodes a video; an estimate is redone only when these settings or the video's shards change.
    Catalog intrinsics always win over an estimate.
    """

    enabled: bool = False
    frames: int = Field(200, ge=3)  # consecutive kept frames of one clip (SlowTV: 200)
    min_frames: int = Field(10, ge=3)  # a video whose longest clip is shorter is not tried
    attempts: int = Field(3, ge=1)  # mapping retried with seed, seed + 1, ... until one succeeds
    seed: int = 0
    min_registered: float = Field(0.5, gt=0, le=1)  # fraction of the frames the model must register
    # COLMAP's default (16 degrees) suits photo collections; consecutive frames of a forward-moving video rarely
    # reach it, and the initial pair is then never found (measured on the synthetic canyon: 2 of 30 frames).
    init_min_tri_angle_deg: float = Field(4.0, gt=0)
    overlap: int = Field(10, ge=1)  # sequential matching: each frame against this many following ones
    max_image_size: int = Field(1024, ge=64)  # SIFT runs on frames downscaled to this longer side
    threads: int = Field(1, ge=-1)  # COLMAP threads per video (-1: all cores); run.workers videos run at once


class RecipeConfig(_Section):
    """Rebuild a recipe (`depthcurate recipe build`): keep exactly its frames, count the ones that changed."""

    path: str | None = None  # a recipe file from `depthcurate recipe export`


class CurateConfig(_Section):
    download: DownloadConfig = DownloadConfig()
    sample: SampleConfig = SampleConfig()
    shots: ShotConfig = ShotConfig()
    filters: QualityConfig = QualityConfig()
    dedup: DedupConfig = DedupConfig()
    split: SplitConfig = SplitConfig()
    write: WriteConfig = WriteConfig()
    stereo: StereoConfig = StereoConfig()
    run: RunConfig = RunConfig()
    clip: ClipConfig = ClipConfig()
    intrinsics: IntrinsicsConfig = IntrinsicsConfig()
    recipe: RecipeConfig = RecipeConfig()

    def processing_hash(self) -> str:
        """Hash of the settings that change a video's shards (not download, run, clip or intrinsics settings)."""
        relevant = self.model_dump(include={"sample", "shots", "filters", "dedup", "split", "write", "stereo"})
        if self.recipe.path:  # only then: a config without a recipe hashes as it always has
            relevant["recipe"] = self.recipe.model_dump()
        if self.stereo.flow.dis_finest_scale is None:  # left unset, it hashes as before the key existed
            del relevant["stereo"]["flow"]["dis_finest_scale"]
        if self.stereo.flow.dis_patch_size is None:  # the same for the patch size
            del relevant["stereo"]["flow"]["dis_patch_size"]
        del relevant["stereo"]["quality"]  # a name for values the hash holds already
        return _hash(relevant)

    def recorded(self) -> dict[str, Any]:
        """The settings dataset.json keeps: all but where the tasks ran (a dedup rerun must not need the cluster)."""
        exclude: dict[str, Any] = {"run": {"executor", "ray"}}
        stereo: dict[str, Any] = {}
        if self.stereo.flow.dis_patch_size is None:  # left unset, dataset.json reads as before the key existed
            stereo["flow"] = {"dis_patch_size"}
        if self.stereo.quality == "fast":  # the same for the quality's default
            stereo["quality"] = True
        if stereo:
            exclude["stereo"] = stereo
        if not self.recipe.path:
            exclude["recipe"] = True
        return self.model_dump(mode="json", exclude=exclude)

    def full_hash(self) -> str:
        return _hash(self.recorded())


class ConfigError(ValueError):
    """A config the run cannot use: one line per problem, each naming the file and the dotted key."""


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> CurateConfig:
    """Defaults, then the YAML file, then `overrides` (nested dicts); unknown keys are rejected."""
    return load_yaml_model(CurateConfig, path, overrides)


def load_yaml_model(model: type[_M], path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> _M:
    """Validate `model` from defaults, a YAML file and nested overrides; any problem is a ConfigError."""
    data: dict[str, Any] = {}
    if path:
        data = _read_yaml(Path(path))
    if overrides:
        data = _merge(data, overrides)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(describe_errors(exc, model, str(path) if path else "config")) from exc


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(_yaml_problem(path, exc)) from exc
    if not isinstance(loaded, dict):
        raise ConfigError(f"config {path} must be a mapping, got {type(loaded).__name__}")
    return loaded


def _yaml_problem(path: Path, exc: yaml.YAMLError) -> str:
    """file:line:column: what the YAML parser objected to, on one line."""
    mark = getattr(exc, "problem_mark", None)
    where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    context = getattr(exc, "context", None)
    return f"{where}: invalid YAML: {problem}" + (f" ({context})" if context else "")


def with_overrides(cfg: CurateConfig, overrides: dict[str, Any]) -> CurateConfig:
    """A copy of `cfg` with `overrides` (nested dicts) applied and validated like a YAML file."""
    try:
        return CurateConfig.model_validate(_merge(cfg.model_dump(), overrides))
    except ValidationError as exc:
        raise ConfigError(describe_errors(exc, CurateConfig, "config")) from exc


def describe_errors(exc: ValidationError, model: type[BaseModel], source: str) -> str:
    """pydantic's errors as one line each: `<source>: <dotted.key>: <problem>`, with a "did you mean" for a
    misspelt key, taken from the field names at that level of `model`."""
    return "\n".join(_describe_error(error, model, source) for error in exc.errors())


def _describe_error(error: Any, model: type[BaseModel], source: str) -> str:
    loc = [str(part) for part in error["loc"]]
    key = ".".join(loc) or "(top level)"
    if error["type"] == "extra_forbidden":
        known = _field_names(model, loc[:-1])
        close = difflib.get_close_matches(loc[-1], known, n=1) if known else []
        hint = f"; did you mean {close[0]!r}?" if close else (f"; known keys: {', '.join(known)}" if known else "")
        return f"{source}: {key}: unknown key{hint}"
    message = str(error["msg"]).removeprefix("Value error, ")
    if message.startswith(key):  # a validator's message that names its keys already
        return f"{source}: {message}"
    given = error.get("input")
    shown = f" (got {given!r})" if isinstance(given, str | int | float | bool) and len(repr(given)) <= 60 else ""
    return f"{source}: {key}: {message}{shown}"


def _field_names(model: type[BaseModel], loc: list[str]) -> list[str]:
    """The field names of the section at `loc` (a path of field names from `model`); [] when it is no section."""
    current: type[BaseModel] | None = model
    for name in loc:
        field = current.model_fields.get(name) if current is not None else None
        current = _section_type(field.annotation) if field is not None else None
    return list(current.model_fields) if current is not None else []


def _section_type(annotation: Any) -> type[BaseModel] | None:
    """The model class in a field's annotation (`Section` or `Section | None`), else None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        found = [t for t in map(_section_type, typing.get_args(annotation)) if t is not None]
        return found[0] if len(found) == 1 else None
    return None


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged
