"""Per-video camera intrinsics from COLMAP (pycolmap), the way SlowTV estimated them.

Up to `intrinsics.frames` consecutive kept frames of one clip (the video's longest) are read back from the
shards; COLMAP extracts SIFT features, matches them sequentially and maps incrementally with one shared
SIMPLE_RADIAL camera (params f, cx, cy, k). A failed or too small model is retried with the next seed. The
result, or a named failure reason, is a small JSON file per video (`stats/cameras/<dataset>/<video_id>.json`)
stamped with the shards' digest and the settings, so a rerun skips a current estimate; publish turns these files
into `stats/cameras.parquet` and fills the manifest's intrinsics where the catalog gave none.

Normalised like the catalog's: fx = f / W, fy = f / H, cx / W, cy / H. The radial term k1 is kept apart: it is
never a matrix entry (SlowTV's loader once put it in K's skew slot).
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from pipeline.config import IntrinsicsConfig
from pipeline.io.data_root import DataRoot
from pipeline.video.record import VideoRecord

CAMERA_MODEL = "SIMPLE_RADIAL"
# Named reasons a video ends without an estimate (it stays usable; the trainer then learns its intrinsics).
TOO_FEW_FRAMES = "intrinsics_too_few_frames"  # its longest clip has fewer than intrinsics.min_frames
FAILED = "intrinsics_failed"  # no attempt registered intrinsics.min_registered of the frames
REASONS: tuple[str, ...] = (TOO_FEW_FRAMES, FAILED)


def settings_hash(cfg: IntrinsicsConfig) -> str:
    """Fingerprint of the settings that change an estimate (`enabled` and `threads` do not)."""
    relevant = cfg.model_dump(exclude={"enabled", "threads"})
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]


def load_camera(root: DataRoot, record: VideoRecord, cfg: IntrinsicsConfig) -> dict[str, Any] | None:
    """The video's current estimate or failure; None when absent or made from other shards or settings."""
    try:
        camera = json.loads(root.read_bytes(root.camera(record.dataset, record.video_id)))
    except (OSError, ValueError):
        return None
    current = camera.get("source") == record.shards_digest() and camera.get("settings") == settings_hash(cfg)
    return camera if current else None


def estimate_video(root: DataRoot, record: VideoRecord, cfg: IntrinsicsConfig) -> tuple[dict[str, Any], bool]:
    """Estimate a finished video's intrinsics unless current; returns (camera, whether it was computed now)."""
    if not record.ok:
        raise ValueError(f"{record.name} has status {record.status}: no frames")
    existing = load_camera(root, record, cfg)
    if existing is not None:
        return existing, False
    clip_id, width, height, images = read_clip_frames(root, record, cfg.frames)
    camera = {
        "dataset": record.dataset,
        "video_id": record.video_id,
        "model": CAMERA_MODEL,
        "clip_id": clip_id,
        "width": width,
        "height": height,
        "frames": len(images),
        "source": record.shards_digest(),
        "settings": settings_hash(cfg),
    }
    if len(images) < cfg.min_frames:
        camera.update(
            _failure(
                TOO_FEW_FRAMES, f"longest clip has {len(images)} kept frames, intrinsics.min_frames is {cfg.min_frames}"
            )
        )
    else:
        camera.update(estimate_from_jpegs(images, cfg))
    path = root.camera(record.dataset, record.video_id)
    root.remove_stale_temps(path.parent, path.name)  # the directory is shared with other videos' writers
    root.write_bytes(path, json.dumps(camera, indent=1, sort_keys=True).encode())
    return camera, True


def read_clip_frames(root: DataRoot, record: VideoRecord, limit: int) -> tuple[int | None, int, int, list[bytes]]:
    """(clip_id, width, height, JPEGs) of the first `limit` kept frames of the video's longest clip."""
    rows = []  # (part index, row in part, clip_id), in shard order
    width = height = 0
    for index, part in enumerate(record.shards):
        columns = ["clip_id", "width", "height"]
        with root.open_parquet(root.root / part.path, columns) as source:
            table = pq.read_table(source, columns=columns)
        if table.num_rows:
            width, height = table["width"][0].as_py(), table["height"][0].as_py()
        rows += [(index, row, clip) for row, clip in enumerate(table["clip_id"].to_pylist())]
    if not rows:
        return None, width, height, []
    counts: dict[int, int] = {}
    for _, _, clip in rows:
        counts[clip] = counts.get(clip, 0) + 1
    clip_id = max(counts, key=lambda c: (counts[c], -c))  # the longest clip; the earliest on a tie
    wanted: dict[int, list[int]] = {}
    for index, row, clip in rows:
        if clip == clip_id and sum(map(len, wanted.values())) < limit:
            wanted.setdefault(index, []).append(row)
    images = []
    for index, part_rows in sorted(wanted.items()):
        images += _read_images(root, record.shards[index].path, part_rows)
    return clip_id, width, height, images


def _read_images(root: DataRoot, relative: str, rows: list[int]) -> list[bytes]:
    """The `image` cells of `rows` of one shard part, reading only the row groups that hold them."""
    with root.open(root.root / relative) as source:
        shard = pq.ParquetFile(source)
        groups: list[int] = []
        first_row: int | None = None
        start = 0
        for group in range(shard.metadata.num_row_groups):
            end = start + shard.metadata.row_group(group).num_rows
            if start <= rows[-1] and end > rows[0]:
                groups.append(group)
                first_row = start if first_row is None else first_row
            start = end
        table = shard.read_row_groups(groups, columns=["image"])
    column = table["image"]
    assert first_row is not None, "rows lie inside the shard"
    return [column[row - first_row].as_py() for row in rows]


def estimate_from_jpegs(images: list[bytes], cfg: IntrinsicsConfig) -> dict[str, Any]:
    """COLMAP on these frames (in order, one camera): normalised fx fy cx cy and k1, or a named failure."""
    import pycolmap  # a compiled extension: only videos that ask for intrinsics load it

    pycolmap.logging.minloglevel = int(pycolmap.logging.Level.WARNING)  # COLMAP logs every image at INFO

    with tempfile.TemporaryDirectory(prefix="depthcurate-colmap-") as work:
        image_dir = Path(work) / "images"
        image_dir.mkdir()
        for i, data in enumerate(images):
            (image_dir / f"{i:06d}.jpg").write_bytes(data)  # zero-padded: COLMAP's sequential order is by name
        database = Path(work) / "database.db"
        _features(pycolmap, database, image_dir, cfg)
        problems = []
        for attempt in range(cfg.attempts):
            seed = cfg.seed + attempt
            model, problem = _map(pycolmap, database, image_dir, Path(work) / f"sparse-{seed}", cfg, seed, len(images))
            if model is not None:
                return {**model, "status": "ok", "error": None, "attempts": attempt + 1, "seed": seed}
            problems.append(f"seed {seed}: {problem}")
    return {**_failure(FAILED, "; ".join(problems)), "attempts": cfg.attempts}


def _features(pycolmap, database: Path, image_dir: Path, cfg: IntrinsicsConfig) -> None:
    """SIFT features with one shared SIMPLE_RADIAL camera, then sequential matching."""
    reader = pycolmap.ImageReaderOptions()
    reader.camera_model = CAMERA_MODEL
    extraction = pycolmap.FeatureExtractionOptions()
    extraction.max_image_size = cfg.max_image_size
    extraction.num_threads = cfg.threads
    pycolmap.extract_features(
        database,
        image_dir,
        camera_mode=pycolmap.CameraMode.SINGLE,
        reader_options=reader,
        extraction_options=extraction,
        device=pycolmap.Device.cpu,
    )
    pairing = pycolmap.SequentialPairingOptions()
    pairing.overlap = cfg.overlap
    pairing.num_threads = cfg.threads
    matching = pycolmap.FeatureMatchingOptions()
    matching.num_threads = cfg.threads
    pycolmap.match_sequential(database, matching_options=matching, pairing_options=pairing, device=pycolmap.Device.cpu)


def _map(
    pycolmap, database: Path, image_dir: Path, out: Path, cfg: IntrinsicsConfig, seed: int, frames: int
) -> tuple[dict[str, Any] | None, str]:
    """One incremental mapping run; (normalised camera, "") or (None, why it does not count)."""
    pycolmap.set_random_seed(seed)
    options = pycolmap.IncrementalPipelineOptions()
    options.random_seed = seed
    options.num_threads = cfg.threads
    options.multiple_models = False  # one model over one clip: a second one would be a broken track
    options.mapper.init_min_tri_angle = cfg.init_min_tri_angle_deg
    # COLMAP's default (0.95) refuses an initial pair whose motion is mostly along the viewing direction: the
    # usual case for driving and walking video (on the synthetic canyon no seed found a pair with it).
    options.mapper.init_max_forward_motion = 1.0
    out.mkdir()
    models = pycolmap.incremental_mapping(database, image_dir, out, options=options)
    if not models:
        return None, "no model"
    model = max(models.values(), key=lambda m: m.num_reg_images())
    registered = model.num_reg_images()
    if registered < cfg.min_registered * frames:
        return None, f"registered {registered} of {frames} frames"
    camera = next(iter(model.cameras.values()))
    f, cx, cy, k1 = (float(v) for v in camera.params)  # SIMPLE_RADIAL: f, cx, cy, k
    if not f > 0:
        return None, f"focal length {f}"
    w, h = camera.width, camera.height
    return {
        "fx": f / w,
        "fy": f / h,
        "cx": cx / w,
        "cy": cy / h,
        "k1": k1,
        "registered": registered,
        "reprojection_error_px": float(model.compute_mean_reprojection_error()),
    }, ""


def _failure(reason: str, message: str) -> dict[str, Any]:
    return {
        "status": reason,
        "error": message,
        "fx": None,
        "fy": None,
        "cx": None,
        "cy": None,
        "k1": None,
        "registered": 0,
        "reprojection_error_px": None,
        "attempts": 0,
        "seed": None,
    }
