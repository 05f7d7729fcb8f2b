"""Stream training batches from the Parquet shards a manifest lists.

The dataset yields whole batches (use `DataLoader(batch_size=None)`): a batch draws from one source,
shares one augmented shape and one support offset, and is planned by `trainer.plan` so that ranks and
workers never repeat a sample within an epoch and all ranks take the same number of steps. The stream is
endless (epoch after epoch); `start_batch` skips what a resumed run has already consumed, without
reading those pixels. Files are opened lazily inside each worker, never in the parent, so forked
workers share no file handles.

Because the plan is known ahead, a worker also knows every frame it will decode and when: a frame that is
a target now and a support a few batches later (or the other way round) is decoded once and kept until
that use (`DecodedFrames`, within data.decode_cache_mb), and a row group is dropped after its last use.
A folder-of-files loader drawing from a global shuffle has no such locality to exploit.

The builder checks what it reads (`trainer.integrity`): each shard against dataset.json when first opened, each
row's sample id against the manifest's, each image's size against the manifest's, and each JPEG strictly
(`trainer.jpeg`: libjpeg's corrupt-data warnings count). A target whose frame, or one of whose supports, fails is
left out of its batch and reported with it (`bad_samples`); the training process decides whether to go on.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from pipeline.io import objectstore
from pipeline.media.codecs import decode_confidence_png, decode_disparity_png, decode_mask_png
from trainer import augment
from trainer.config import DataConfig
from trainer.integrity import BadSample, ShardIntegrityError, ShardVerifier
from trainer.jpeg import CorruptImage, decode_jpeg_rgb8
from trainer.manifest import ManifestError
from trainer.plan import Batch, EpochPlan

# sample_id: to check that the row the manifest points at holds the sample it names.
_VIDEO_COLUMNS = ["sample_id", "image"]
_STEREO_COLUMNS = ["sample_id", "image", "disparity", "valid_mask", "sky_mask", "disp_scale", "disp_offset"]
_OPTIONAL_COLUMNS = {"confidence"}  # read where the shard has them (shards written before they existed do not)


class ShardReader:
    """Rows of shard row groups, keeping the most recently used row groups in memory.

    With a verifier, a shard is checked against dataset.json before its first row group is read."""

    def __init__(self, cache_size: int = 4, verifier: ShardVerifier | None = None):
        self.cache_size = cache_size
        self.verifier = verifier
        self._groups: OrderedDict[tuple[str, int, bool], pa.Table] = OrderedDict()

    def release(self, path: str, group: int, stereo: bool) -> None:
        """Forget a row group no planned read needs any more (frees its memory before the LRU would)."""
        self._groups.pop((path, group, stereo), None)

    def row(self, path: str, group: int, offset: int, stereo: bool) -> dict[str, Any]:
        key = (path, group, stereo)
        table = self._groups.get(key)
        if table is None:
            if self.verifier is not None:
                self.verifier.check(path)  # the verdict is cached: only a shard's first read pays
            columns = _STEREO_COLUMNS if stereo else _VIDEO_COLUMNS
            try:
                # A path as it is; a URL through fsspec, opened here in the worker, with just this row group's
                # column chunks fetched.
                if stereo:
                    columns = [*columns, *sorted(_OPTIONAL_COLUMNS)]
                with objectstore.open_parquet(path, columns=columns, row_groups=[group]) as source:
                    shard = pq.ParquetFile(source)
                    present = set(shard.schema_arrow.names)
                    columns = [c for c in columns if c in present or c not in _OPTIONAL_COLUMNS]
                    table = shard.read_row_group(group, columns=columns)
            except FileNotFoundError as exc:
                raise ShardIntegrityError(f"shard {path} listed in the manifest is missing") from exc
            except (OSError, pa.ArrowException) as exc:
                raise ShardIntegrityError(f"shard {path}: row group {group} cannot be read ({exc})") from exc
            self._groups[key] = table
            while len(self._groups) > self.cache_size:
                self._groups.popitem(last=False)
        else:
            self._groups.move_to_end(key)
        # Only the wanted row leaves Arrow memory: converting whole columns would copy every JPEG.
        return {name: table.column(name)[offset].as_py() for name in table.column_names}


def decode_rgb8(jpeg: bytes) -> np.ndarray:
    """JPEG bytes to uint8 RGB; CorruptImage for bytes libjpeg cannot decode or says are damaged."""
    return decode_jpeg_rgb8(jpeg)


def to_float(rgb8: np.ndarray) -> np.ndarray:
    """uint8 RGB to float32 in [0, 1] (one allocation: the division is in place)."""
    rgb = rgb8.astype(np.float32)
    rgb /= 255.0
    return rgb


def decode_rgb(jpeg: bytes) -> np.ndarray:
    """JPEG bytes to float32 RGB in [0, 1]."""
    return to_float(decode_rgb8(jpeg))


class DecodedFrames:
    """Decoded frames kept for their next planned decode, within a byte budget.

    `rows` lists, in order, the row of every decode a worker's planned batches will ask for. A frame is
    kept only while a later decode wants it; when the budget is exceeded the frame wanted furthest ahead
    goes (Belady's rule, exact here because the plan is known). Frames are keyed by row, so a caller that
    strays from the plan still gets the right pixels; it only stops the caching."""

    def __init__(self, rows: np.ndarray, budget_bytes: int):
        self.rows = np.asarray(rows, np.int64)
        self.next_use = next_uses(self.rows)
        self.budget = budget_bytes
        self.position = 0  # index into `rows` of the next decode
        self._frames: dict[int, tuple[int, np.ndarray]] = {}  # row -> (position of its next use, frame)
        self._bytes = 0
        self.hits = self.misses = 0

    def get(self, row: int) -> np.ndarray | None:
        entry = self._frames.pop(row, None)
        if entry is None:
            self.misses += 1
            return None
        self.hits += 1
        self._bytes -= entry[1].nbytes
        return entry[1]

    def done(self, row: int, frame: np.ndarray | None) -> int:
        """Record the decode of `row` at the current position; keep `frame` if a later one wants it (None: the
        decode failed, nothing to keep, but the plan moves on all the same).

        Returns the position just consumed (-1 once off the plan)."""
        position = self.position
        if position >= len(self.rows) or self.rows[position] != row:
            self.rows = self.rows[:0]  # off the plan: stop caching rather than guess
            self._frames.clear()
            self._bytes = 0
            return -1
        self.position += 1
        wanted = int(self.next_use[position])
        if frame is not None and wanted >= 0 and frame.nbytes <= self.budget:
            self._frames[row] = (wanted, frame)
            self._bytes += frame.nbytes
            while self._bytes > self.budget:
                furthest = max(self._frames, key=lambda r: self._frames[r][0])
                self._bytes -= self._frames.pop(furthest)[1].nbytes
        return position


def next_uses(rows: np.ndarray) -> np.ndarray:
    """For each position, the next position holding the same row; -1 where there is none."""
    order = np.lexsort((np.arange(len(rows)), rows))  # by row, then by position
    nxt = np.full(len(rows), -1, np.int64)
    same = rows[order[1:]] == rows[order[:-1]]
    nxt[order[:-1][same]] = order[1:][same]
    return nxt


@dataclass(frozen=True)
class BatchDraws:
    """A batch's first random draws: the ones that decide which frames it decodes, made before any is read."""

    rng: np.random.Generator  # the batch's generator; each sample's own draws continue from it
    kind: str  # "video" or "stereo"
    shape: augment.BatchShape
    supports: tuple[np.ndarray, np.ndarray] | None  # rows of the supports t-k and t+k of each target


@dataclass(frozen=True)
class StereoLabels:
    """A stereo row's decoded labels, at the source size."""

    disparity: np.ndarray  # HxW float32
    valid: np.ndarray  # HxW bool
    sky: np.ndarray  # HxW bool
    confidence: np.ndarray | None = None  # HxW float32 in [0, 1] where the shard has the column


@dataclass(frozen=True)
class FrameRead:
    """One decoded row: its pixels, and a stereo row's labels."""

    rgb8: np.ndarray
    labels: StereoLabels | None = None


class Unusable(Exception):
    """A frame a target needs could not be used: the target is left out of its batch."""

    def __init__(self, index: int, reason: str, fatal: bool = False):
        super().__init__(reason)
        self.index, self.reason, self.fatal = index, reason, fatal


class BatchBuilder:
    """Reads, decodes and augments the rows of a planned batch into tensors.

    verifier: the run's shard checks (their verdicts cached); by default one made from data.verify."""

    def __init__(
        self,
        plan: EpochPlan,
        cfg: DataConfig,
        train: bool = True,
        with_supports: bool = True,
        ground_truth: GroundTruth | None = None,
        verifier: ShardVerifier | None = None,
    ):
        self.plan, self.cfg, self.train = plan, cfg, train
        self.with_supports, self.ground_truth = with_supports, ground_truth
        self.verifier = verifier if verifier is not None else ShardVerifier.for_frame(plan.frame, cfg.verify)
        self.reader = ShardReader(cfg.row_group_cache, self.verifier)
        self.frames: DecodedFrames | None = None  # set by plan_ahead
        self._release_at: dict[int, tuple[str, int, bool]] = {}
        self._corrupt: dict[int, str] = {}  # plan row -> why its frame is bad: a row is judged once
        frame = plan.frame
        self._paths = (frame["root"] + "/" + frame["shard"]).to_numpy()  # as integrity.shard_location
        self._shard_rows = frame["row"].to_numpy(np.int64)
        self._k_norm = frame[["fx", "fy", "cx", "cy"]].to_numpy(dtype=np.float64, na_value=np.nan)
        self._sizes = frame[["height", "width"]].to_numpy(np.int64)
        self._ids = frame["sample_id"].to_numpy()
        self._videos = frame["video_id"].to_numpy()
        self._times = frame["timestamp_s"].to_numpy()

    def _draw(self, batch: Batch) -> BatchDraws:
        """The draws that decide which frames `batch` decodes (so `decodes` and `__call__` agree)."""
        rng = np.random.default_rng(batch.seed)
        kind = self.plan.sources[batch.source].kind
        shape = augment.batch_shape(rng, self.cfg.augment, self.cfg.height, self.cfg.width, self.train)
        supports = None
        if kind == "video" and self.with_supports:
            supports = self.plan.supports(batch.targets, float(rng.random()))
        return BatchDraws(rng, kind, shape, supports)

    def decodes(self, batch: Batch) -> tuple[np.ndarray, bool]:
        """The rows `self(batch)` decodes, in that order, and whether they are read as stereo rows."""
        draws = self._draw(batch)
        if draws.supports is None:
            return np.asarray(batch.targets, np.int64), draws.kind == "stereo"
        before, after = draws.supports
        return np.stack([batch.targets, before, after], axis=1).reshape(-1), False

    def plan_ahead(self, batches: list[Batch]) -> None:
        """Tell the builder the batches it will be called with, in order: decoded frames are then reused
        and row groups dropped after their last use. Outputs stay exactly what they are without it."""
        reads = [self.decodes(b) for b in batches]
        rows = np.concatenate([r for r, _ in reads]) if reads else np.zeros(0, np.int64)
        stereo = np.concatenate([np.full(len(r), s) for r, s in reads]) if reads else np.zeros(0, bool)
        self.frames = DecodedFrames(rows, int(self.cfg.decode_cache_mb * 2**20))
        # A row group is released after the last planned decode that may read it.
        keys = zip(self._paths[rows].tolist(), self.plan.row_group[rows].tolist(), stereo.tolist())
        last = {key: position for position, key in enumerate(keys)}  # later positions overwrite
        self._release_at = {position: key for key, position in last.items()}

    def __call__(self, batch: Batch) -> dict[str, Any]:
        """The batch's tensors, less the targets whose frames were bad: those are listed in "bad_samples"."""
        draws = self._draw(batch)
        zoom = augment.draw_zoom(draws.rng, self.cfg.augment, self.train)  # after _draw: the rows decoded stay
        supports = draws.supports
        samples, kept, bad = [], [], []
        for j, index in enumerate(batch.targets):
            try:
                pair = None if supports is None else (int(supports[0][j]), int(supports[1][j]))
                samples.append(self._sample(index, draws, pair, zoom))
                kept.append(int(index))
            except Unusable as fault:
                bad.append(self._report(fault, int(index)))
        out: dict[str, Any] = {
            key: torch.from_numpy((_stack_chw if key in _FRAMES else np.stack)([s[key] for s in samples]))
            for key in (samples[0] if samples else ())
        }
        out["kind"] = draws.kind
        out["source"] = self.plan.source_names()[batch.source]
        out["sample_id"] = [str(self._ids[i]) for i in kept]
        out["bad_samples"] = bad
        return out

    def _sample(
        self, index: int, draws: BatchDraws, support_rows: tuple[int, int] | None, zoom: float = 1.0
    ) -> dict[str, np.ndarray]:
        """One target's arrays (frames HxWx3), augmented with the batch's draws and then its own.

        The draws come before any read, so a bad sample leaves the others' augmentation as it would have been."""
        src_h, src_w = (int(v) for v in self._sizes[index])
        geometry, resize = self._geometry(draws, src_h, src_w, zoom)
        jitter = augment.ColourJitter.draw(draws.rng, self.cfg.augment) if self.train else augment.ColourJitter()
        target, *support_reads = self._read_all([index, *(support_rows or ())], stereo=draws.kind == "stereo")
        sample = {"image": jitter(augment.apply(to_float(target.rgb8), geometry))}  # HxWx3: CxHxW when stacked
        sample["intrinsics"] = self._intrinsics(index, src_h, src_w, geometry)
        if resize is not None:
            sample["resize_factor"] = resize
        if support_reads:
            sample["supports"] = np.stack([jitter(augment.apply(to_float(r.rgb8), geometry)) for r in support_reads])
        if self.ground_truth is not None:
            depth = self.ground_truth.depth(str(self._videos[index]), float(self._times[index]), (src_h, src_w))
            sample["gt_depth"] = (
                augment.apply(depth, geometry, nearest=True)[None]
                if depth is not None
                else np.full((1, *geometry.size), np.nan, np.float32)
            )
        if target.labels is not None:
            sample.update(_augmented_labels(target.labels, geometry))
        return sample

    def _geometry(
        self, draws: BatchDraws, src_h: int, src_w: int, zoom: float
    ) -> tuple[augment.Geometry, np.ndarray | None]:
        """A sample's crop, resize and flip, and the zoom it shows (a 0-d float32; None with the option off)."""
        size = (draws.shape.height, draws.shape.width)
        flip = bool(self.train and draws.rng.random() < self.cfg.augment.flip_prob)
        geometry = augment.Geometry(augment.centre_crop_box(src_h, src_w, draws.shape.aspect), size, flip)
        if not (self.train and self.cfg.augment.resize_prob > 0):
            return geometry, None
        zoomed = augment.zoomed_size(size, zoom)
        aspect = zoomed[1] / zoomed[0] if zoom < 1 else draws.shape.aspect
        resized = augment.Geometry(augment.zoom_box(draws.rng, src_h, src_w, aspect, zoom), zoomed, flip)
        return resized, np.array(augment.zoom_factor(resized, geometry), np.float32)

    def _intrinsics(self, index: int, src_h: int, src_w: int, geometry: augment.Geometry) -> np.ndarray:
        """The row's normalised intrinsics after the augmentation; NaN where the manifest has none."""
        k_norm = self._k_norm[index]
        if not np.all(np.isfinite(k_norm)):
            return np.full(4, np.nan, np.float32)
        k = augment.transform_intrinsics(augment.pixel_intrinsics(k_norm, src_h, src_w), geometry)
        return augment.normalised_intrinsics(k, *geometry.size)

    def _read_all(self, rows: list[int], stereo: bool) -> list[FrameRead]:
        """A target's frame (read as a stereo row when `stereo`) and its supports', in plan order. Every one is
        read even after one fails, so the decoded-frame cache stays on its plan; then the first fault is raised."""
        reads, fault = [], None
        for position, index in enumerate(rows):
            try:
                reads.append(self._read(int(index), stereo and position == 0))
            except Unusable as exc:
                fault = fault or exc
        if fault is not None:
            raise fault
        return reads

    def _read(self, index: int, stereo: bool) -> FrameRead:
        """A row's checked frame, from the decoded frames kept for this use when the plan kept it (video rows);
        the decode is recorded against the plan whether or not it succeeds."""
        kept = self.frames.get(index) if self.frames is not None and not stereo else None
        if kept is not None:
            self._decoded(index, kept)
            return FrameRead(kept)
        try:
            read = self._decode_row(index, stereo)
        except CorruptImage as exc:
            self._decoded(index, None)
            self._corrupt[index] = str(exc)
            raise Unusable(index, str(exc)) from exc
        except ShardIntegrityError as exc:
            self._decoded(index, None)
            raise Unusable(index, str(exc), fatal=True) from exc
        self._decoded(index, read.rgb8)
        return read

    def _decode_row(self, index: int, stereo: bool) -> FrameRead:
        """Read and decode a row; CorruptImage unless it is the manifest's sample, whole and of the manifest's size."""
        if index in self._corrupt:
            raise CorruptImage(self._corrupt[index])
        row = self._row(index, stereo)
        expected = str(self._ids[index])
        found = row.get("sample_id", expected)  # a row read from elsewhere (a benchmark's files) may lack it
        if found != expected:
            raise CorruptImage(f"the shard row holds sample {found}, not the manifest's {expected}")
        size = (int(self._sizes[index][0]), int(self._sizes[index][1]))
        rgb8 = decode_rgb8(row["image"])
        _check_size(rgb8, size, "image")
        return FrameRead(rgb8, _decode_labels(row, size) if stereo else None)

    def _report(self, fault: Unusable, target: int) -> BadSample:
        return BadSample(
            shard=str(self._paths[fault.index]),
            row=int(self._shard_rows[fault.index]),
            sample_id=str(self._ids[fault.index]),
            reason=fault.reason,
            target=str(self._ids[target]),
            fatal=fault.fatal,
        )

    def _decoded(self, index: int, rgb8: np.ndarray | None) -> None:
        """Record a decode against the plan: the frame is kept for its next use, finished row groups go."""
        if self.frames is None:
            return
        key = self._release_at.pop(self.frames.done(index, rgb8), None)
        if key is not None:
            self.reader.release(*key)

    def _row(self, index: int, stereo: bool) -> dict[str, Any]:
        return self.reader.row(
            self._paths[index], int(self.plan.row_group[index]), int(self.plan.row_in_group[index]), stereo
        )


def _check_size(array: np.ndarray, size: tuple[int, int], what: str) -> None:
    if array.shape[:2] != size:
        found, wanted = array.shape[:2], size
        raise CorruptImage(f"{what} decodes to {found[1]}x{found[0]}, the manifest says {wanted[1]}x{wanted[0]}")


def _decode_labels(row: dict[str, Any], size: tuple[int, int]) -> StereoLabels:
    """A stereo row's disparity, valid mask and sky mask; CorruptImage for a PNG that does not decode whole."""
    try:
        disparity = decode_disparity_png(row["disparity"], row["disp_scale"], row["disp_offset"])
        valid = decode_mask_png(row["valid_mask"])
        sky = decode_mask_png(row["sky_mask"]) if row["sky_mask"] is not None else np.zeros(size, bool)
        confidence = decode_confidence_png(row["confidence"]) if row.get("confidence") is not None else None
    except (ValueError, TypeError, cv2.error) as exc:  # a null or damaged PNG column
        raise CorruptImage(f"stereo labels: {exc}") from exc
    for array, what in ((disparity, "disparity"), (valid, "valid mask"), (sky, "sky mask"), (confidence, "confidence")):
        if array is not None:
            _check_size(array, size, what)
    return StereoLabels(disparity.astype(np.float32), valid, sky, confidence)


def _augmented_labels(labels: StereoLabels, geometry: augment.Geometry) -> dict[str, np.ndarray]:
    """A stereo row's labels, augmented as its image; `confidence` (a per-pixel weight) only where stored."""
    out = {
        "disparity": augment.apply_disparity(labels.disparity, geometry)[None],
        "valid": augment.apply(labels.valid.astype(np.uint8), geometry, nearest=True)[None].astype(bool),
        "sky": augment.apply(labels.sky.astype(np.uint8), geometry, nearest=True)[None].astype(bool),
    }
    if labels.confidence is not None:
        out["confidence"] = augment.apply(labels.confidence, geometry, nearest=True)[None]
    return out


class GroundTruth:
    """Rendered depth saved by `pipeline.synthetic.renderer.save_ground_truth` as <dir>/<video_id>.npz."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise FileNotFoundError(f"ground-truth directory {self.directory} does not exist")
        self.videos = sorted(p.stem for p in self.directory.glob("*.npz"))
        if not self.videos:
            raise ValueError(f"ground-truth directory {self.directory} holds no <video_id>.npz files")
        self._cache: dict[str, dict[str, np.ndarray] | None] = {}

    def frame(self, video_id: str, timestamp_s: float) -> tuple[dict[str, np.ndarray], int] | None:
        """A video's arrays and the index of its frame nearest `timestamp_s` (None without ground truth)."""
        if video_id not in self._cache:
            path = self.directory / f"{video_id}.npz"
            self._cache[video_id] = dict(np.load(path)) if path.is_file() else None
        truth = self._cache[video_id]
        if truth is None or not len(truth["timestamps"]):
            return None
        return truth, int(np.argmin(np.abs(truth["timestamps"] - timestamp_s)))

    def depth(self, video_id: str, timestamp_s: float, size: tuple[int, int]) -> np.ndarray | None:
        """Float32 depth (inf where unknown) of the frame nearest `timestamp_s`, resized to `size`."""
        found = self.frame(video_id, timestamp_s)
        if found is None:
            return None
        truth, index = found
        depth = truth["depth"][index].astype(np.float32)
        depth[~np.isfinite(depth)] = np.inf
        return resize_nearest(depth, size)


def resize_nearest(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """`image` at (height, width) `size`, nearest neighbour (the pipeline may have scaled the video down)."""
    return image if image.shape == size else cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_NEAREST)


_FRAMES = ("image", "supports")  # sample keys holding HxWx3 frames


def _stack_chw(frames: list[np.ndarray]) -> np.ndarray:
    """[..., H, W, 3] arrays into one [N, ..., 3, H, W] array, copied once (not transposed, then stacked)."""
    first = frames[0]
    out = np.empty((len(frames), *first.shape[:-3], 3, *first.shape[-3:-1]), first.dtype)
    for target, frame in zip(out, frames):
        target[...] = np.moveaxis(frame, -1, -3)
    return out


class ShardStream(IterableDataset):
    """Endless training batches for one rank; see the module docstring."""

    def __init__(
        self,
        plan: EpochPlan,
        cfg: DataConfig,
        rank: int = 0,
        world_size: int = 1,
        start_batch: int = 0,
        verifier: ShardVerifier | None = None,
    ):
        super().__init__()
        self.plan, self.cfg = plan, cfg
        self.rank, self.world_size, self.start_batch = rank, world_size, start_batch
        # Made here, in the training process, so that a missing dataset.json fails before any worker starts; each
        # loader worker checks shards with its own copy (and verdict cache).
        self.verifier = verifier if verifier is not None else ShardVerifier.for_frame(plan.frame, cfg.verify)
        self.loader_workers = max(1, cfg.num_workers)
        if not self.plan.epoch(0, self.world_size * self.loader_workers)[0]:
            raise ManifestError(
                f"too few samples for one batch of {cfg.batch_size} on each of {world_size} rank(s) x "
                f"{self.loader_workers} worker(s): {int(plan.eligible.sum())} usable samples in "
                f"{plan.source_names()}"
            )

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker = info.id if info is not None else 0
        # Rank-local batch j belongs to plan worker j % W. The DataLoader always asks its worker 0 first,
        # so after a resume at batch s loader worker w plays plan worker (s + w) % W.
        first_step = self.start_batch + worker
        logical = first_step % self.loader_workers
        global_worker = self.rank * self.loader_workers + logical
        global_workers = self.world_size * self.loader_workers
        builder = BatchBuilder(self.plan, self.cfg, train=True, verifier=self.verifier)
        epoch, offset = self._locate(first_step, global_workers)
        first = offset // self.loader_workers
        while True:
            batches = self.plan.epoch(epoch, global_workers)[global_worker][first:]
            builder.plan_ahead(batches)
            for batch in batches:
                yield builder(batch)
            epoch, first = epoch + 1, 0

    def _locate(self, batch_index: int, global_workers: int) -> tuple[int, int]:
        epoch = 0
        while True:
            per_epoch = self.loader_workers * len(self.plan.epoch(epoch, global_workers)[0])
            if batch_index < per_epoch:
                return epoch, batch_index
            batch_index -= per_epoch
            epoch += 1


def make_loader(stream: ShardStream) -> DataLoader:
    """A DataLoader over whole batches; worker count as planned (0 workers reads in the main process)."""
    workers = stream.cfg.num_workers
    return DataLoader(
        stream,
        batch_size=None,
        num_workers=workers,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=False,
        prefetch_factor=2 if workers else None,
    )
