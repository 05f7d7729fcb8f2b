"""Arrow schemas of every table the pipeline writes; manifests/SCHEMA.md documents them."""

from __future__ import annotations

import pyarrow as pa

# 1.1 added the stereo columns (null on mono rows); 1.2 the CLIP columns and tables; 1.3 the manifest's k1 and
# intrinsics_source, and stats/cameras.parquet; 1.4 the stereo source-QA columns and drop reasons
SCHEMA_VERSION = "1.4"
SCHEMA_VERSION_KEY = b"depthcurate.schema_version"

# Why a decoded frame was not kept; stats tables count each one under its own name.
DROP_REASONS: tuple[str, ...] = (
    "decode_error",  # decoded from damaged data, or predicted from it, up to the next clean keyframe
    "not_in_recipe",  # rebuilding a recipe: a frame the recipe does not keep
    "recipe_changed",  # rebuilding a recipe: a frame it keeps decodes to other pixels now (or fails a rule)
    "decimated",  # outside the keep-N-every-M window
    "split_gap",  # inside the gap around the train/val boundary
    "dark",
    "blank",
    "blurry",
    "static",
    "duplicate",  # near-duplicate of an earlier kept frame of the same video
    "duplicate_cross_video",  # near-duplicate of a kept frame of another video
    "at_cut",  # stereo: the first frame after a scene cut (transitions make bad pairs)
    "stereo_swapped",  # the eyes are swapped (stereo.on_swapped: reject)
    "stereo_desync",  # the eyes are out of sync: vertical stereo flow follows the motion
    "stereo_no_valid",  # no pixel passes both checks
    "stereo_too_much_sky",
    "stereo_vertical",  # too many pixels fail the vertical check
    "stereo_lr",  # too few pixels pass the left-right check
    "stereo_range",  # horizontal disparity range too small to teach depth
    # Corpus-level CLIP curation (publish time, `clip.enabled`): junk scores over `clip.junk_drop`, then SemDeDup.
    "junk_text",
    "junk_blank",
    "junk_screen",
    "junk_pip",
    "semantic_duplicate",  # CLIP embedding within cosine 1 - epsilon of a kept frame earlier in corpus order
)

# Decided at publish time over the whole corpus, so they are recounted on every publish.
PUBLISH_DROP_REASONS: tuple[str, ...] = (
    "duplicate_cross_video",
    "junk_text",
    "junk_blank",
    "junk_screen",
    "junk_pip",
    "semantic_duplicate",
)

# Zero-shot CLIP scores. The names are fixed (they are columns); the prompts behind them live in config.
CLIP_TAGS: tuple[str, ...] = ("natural", "driving", "underwater", "indoor", "urban")
CLIP_JUNK: tuple[str, ...] = ("text", "blank", "screen", "pip")  # title card/overlay, blank, screen recording, PiP
_CLIP_SCORES = [
    *[pa.field(f"tag_{name}", pa.float32()) for name in CLIP_TAGS],  # softmax over the tags: they sum to 1
    pa.field("clip_tag", pa.string()),  # the tag with the highest score
    *[pa.field(f"junk_{name}", pa.float32()) for name in CLIP_JUNK],  # P(junk prompt | junk or clean prompts)
]
CLIP_SCORE_COLUMNS: tuple[str, ...] = tuple(f.name for f in _CLIP_SCORES)

# Frame-level stereo quality: in the samples (kept frames) and the frame stats (every checked frame).
_STEREO_QUALITY = [
    pa.field("lr_pass_fraction", pa.float32()),
    pa.field("vertical_fail_fraction", pa.float32()),
    pa.field("disp_range_px", pa.float32()),
    pa.field("sky_fraction", pa.float32()),
    # Source QA (pipeline/stereo/qa.py)
    pa.field("stereo_swapped", pa.bool_()),  # the eyes came swapped (stereo.on_swapped: swap stores them swapped back)
    pa.field("stereo_desync_score", pa.float32()),  # |corr(vertical stereo flow, vertical motion)|; null: no motion
    pa.field("stereo_color_gap", pa.float32()),  # mean over B, G, R of |d mean| + |d std| between the views, 8-bit
    pa.field("converted_score", pa.float32()),  # valid disparity in the 3 strongest histogram peaks (2D-to-3D: high)
    pa.field("stereo_float_window_px", pa.int32()),  # black edge band in one view only, excluded from valid pixels
]

STEREO_QUALITY_COLUMNS: tuple[str, ...] = tuple(f.name for f in _STEREO_QUALITY)

_SAMPLE_FIELDS = [
    pa.field("sample_id", pa.string(), nullable=False),
    pa.field("dataset", pa.string(), nullable=False),
    pa.field("video_id", pa.string(), nullable=False),
    pa.field("category", pa.string(), nullable=False),
    pa.field("subcategory", pa.string()),
    pa.field("clip_id", pa.int32(), nullable=False),
    pa.field("frame_index", pa.int64(), nullable=False),
    pa.field("timestamp_s", pa.float64(), nullable=False),
    pa.field("split", pa.string(), nullable=False),
    pa.field("width", pa.int32(), nullable=False),
    pa.field("height", pa.int32(), nullable=False),
    pa.field("fx", pa.float32()),
    pa.field("fy", pa.float32()),
    pa.field("cx", pa.float32()),
    pa.field("cy", pa.float32()),
    pa.field("brightness", pa.float32()),
    pa.field("sharpness", pa.float32()),
    pa.field("motion", pa.float32()),
    pa.field("phash", pa.uint64()),
    pa.field("layout", pa.string()),  # stereo only, like everything below
    *_STEREO_QUALITY,
    pa.field("disp_scale", pa.float32()),  # disparity_px = png_value * disp_scale + disp_offset
    pa.field("disp_offset", pa.float32()),
]

# Pixels of a stereo sample, null on mono rows.
_STEREO_PIXELS = [
    pa.field("disparity", pa.binary()),  # 16-bit PNG, left-view pixels, signed after decoding
    pa.field("valid_mask", pa.binary()),  # 8-bit PNG, 255 = passes the left-right and vertical checks
    pa.field("sky_mask", pa.binary()),  # 8-bit PNG, 255 = sky (its disparity is the frame minimum)
    pa.field("right_image", pa.binary()),  # JPEG of the right view when stereo.store_right_view
    pa.field("confidence", pa.binary()),  # 8-bit PNG, confidence = value / 255; valid = >= stereo.min_confidence
]


def _with_version(fields: list[pa.Field]) -> pa.Schema:
    return pa.schema(fields, metadata={SCHEMA_VERSION_KEY: SCHEMA_VERSION.encode()})


SAMPLE_COLUMNS: tuple[str, ...] = tuple(f.name for f in _SAMPLE_FIELDS)  # shard columns without pixels

SHARD_SCHEMA = _with_version(_SAMPLE_FIELDS + [pa.field("image", pa.binary(), nullable=False)] + _STEREO_PIXELS)

MANIFEST_SCHEMA = _with_version(
    _SAMPLE_FIELDS
    + [
        pa.field("shard", pa.string(), nullable=False),  # relative to the data root
        pa.field("row", pa.int64(), nullable=False),  # row number inside the shard
        *_CLIP_SCORES,  # null unless clip.enabled
        pa.field("k1", pa.float32()),  # SIMPLE_RADIAL radial term of an estimated camera; null otherwise
        pa.field("intrinsics_source", pa.string()),  # "catalog", "colmap" (estimated), or null (unknown: learn them)
    ]
)

FRAME_STATS_SCHEMA = _with_version(
    [
        pa.field("dataset", pa.string(), nullable=False),
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("frame_index", pa.int64(), nullable=False),
        pa.field("timestamp_s", pa.float64(), nullable=False),
        pa.field("clip_id", pa.int32(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field("kept", pa.bool_(), nullable=False),
        pa.field("drop_reason", pa.string()),
        pa.field("duplicate_of", pa.string()),  # sample_id of the kept frame this one duplicates
        pa.field("sample_id", pa.string(), nullable=False),
        pa.field("brightness", pa.float32()),
        pa.field("contrast", pa.float32()),
        pa.field("sharpness", pa.float32()),
        pa.field("motion", pa.float32()),
        pa.field("phash", pa.uint64()),
        pa.field("decoded_sha256", pa.string()),  # kept frames: 128 bits of sha256 of the picture as decoded
        *_STEREO_QUALITY,
        *_CLIP_SCORES,  # filled at publish time for every frame with an embedding (every shard row)
    ]
)

VIDEO_STATS_SCHEMA = _with_version(
    [
        pa.field("dataset", pa.string()),
        pa.field("video_id", pa.string()),
        pa.field("seq", pa.int64()),
        pa.field("url", pa.string()),
        pa.field("category", pa.string()),
        pa.field("subcategory", pa.string()),
        pa.field("layout", pa.string()),  # as declared in the catalog
        pa.field("detected_layout", pa.string()),  # what the frames showed (auto) or confirmed (declared)
        pa.field("catalog_line", pa.int64()),
        pa.field("status", pa.string(), nullable=False),  # ok, or the failure reason
        pa.field("error", pa.string()),
        pa.field("retryable", pa.bool_()),  # failures only: whether a rerun tries the video again
        pa.field("warning", pa.string()),
        pa.field("duration_s", pa.float64()),
        pa.field("fps", pa.float64()),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("codec", pa.string()),
        pa.field("container", pa.string()),
        pa.field("rotation", pa.int32()),
        pa.field("variable_frame_rate", pa.bool_()),
        pa.field("field_order", pa.string()),  # ffprobe's; interlaced sources (tt, bb, tb, bt) are deinterlaced
        pa.field("truncated_at_s", pa.float64()),  # where a file cut short really ends; trims and split follow it
        pa.field("trim_start_s", pa.float64()),
        pa.field("trim_end_s", pa.float64()),
        pa.field("split_gap_frames", pa.int64()),  # the split gap applied: split.gap_frames, less for a short video
        pa.field("dedup_separation_s", pa.float64()),  # likewise dedup.min_separation_s
        pa.field("frames_decoded", pa.int64()),
        pa.field("frames_kept", pa.int64()),
        *[pa.field(f"dropped_{reason}", pa.int64()) for reason in DROP_REASONS],
        # Rebuilding a recipe: of the frames it keeps for this video, those kept again, changed, never decoded.
        pa.field("recipe_matched", pa.int64()),
        pa.field("recipe_changed", pa.int64()),
        pa.field("recipe_missing", pa.int64()),
        pa.field("clips", pa.int64()),
        pa.field("shards", pa.int64()),
        pa.field("shard_bytes", pa.int64()),
    ]
)


# Per dataset and catalog category: the same counts as the video table, summed (publish writes it).
CATEGORY_STATS_SCHEMA = _with_version(
    [
        pa.field("dataset", pa.string(), nullable=False),
        pa.field("category", pa.string(), nullable=False),
        pa.field("videos", pa.int64(), nullable=False),
        pa.field("videos_ok", pa.int64(), nullable=False),
        pa.field("frames_decoded", pa.int64(), nullable=False),
        pa.field("frames_kept", pa.int64(), nullable=False),
        *[pa.field(f"dropped_{reason}", pa.int64(), nullable=False) for reason in DROP_REASONS],
    ]
)

# stats/cameras.parquet: one row per ok video with an intrinsics estimate or a named failure (intrinsics.enabled).
CAMERA_SCHEMA = _with_version(
    [
        pa.field("dataset", pa.string(), nullable=False),
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("status", pa.string(), nullable=False),  # ok, or intrinsics_too_few_frames / intrinsics_failed
        pa.field("error", pa.string()),
        pa.field("model", pa.string(), nullable=False),  # SIMPLE_RADIAL
        pa.field("fx", pa.float64()),
        pa.field("fy", pa.float64()),  # normalised by width / height
        pa.field("cx", pa.float64()),
        pa.field("cy", pa.float64()),
        pa.field("k1", pa.float64()),  # radial distortion, in normalised image coordinates (x / f)
        pa.field("width", pa.int32()),  # of the frames COLMAP saw
        pa.field("height", pa.int32()),
        pa.field("clip_id", pa.int32()),
        pa.field("frames", pa.int32(), nullable=False),  # given to COLMAP
        pa.field("registered", pa.int32(), nullable=False),  # in the model
        pa.field("reprojection_error_px", pa.float64()),
        pa.field("attempts", pa.int32(), nullable=False),
        pa.field("seed", pa.int64()),  # of the attempt that succeeded
    ]
)

EMBEDDING_MODEL_KEY = b"depthcurate.clip_model_hash"  # which model made the embeddings
EMBEDDING_SOURCE_KEY = b"depthcurate.source_sha256"  # of the shards they were computed from


def embedding_schema(dim: int) -> pa.Schema:
    """`embeddings/<dataset>/<video_id>.parquet`: one L2-normalised float16 vector per shard row."""
    return _with_version(
        [
            pa.field("sample_id", pa.string(), nullable=False),
            pa.field("embedding", pa.list_(pa.float16(), dim), nullable=False),
        ]
    )


class SchemaVersionError(ValueError):
    pass


def check_version(schema: pa.Schema, what: str) -> None:
    """Raise SchemaVersionError unless `schema` carries the version this code reads."""
    check_version_string((schema.metadata or {}).get(SCHEMA_VERSION_KEY, b"").decode() or "none", what)


def check_version_string(found: str, what: str) -> None:
    """Same major version reads; anything else is a clear error naming `what`."""
    if found.split(".")[0] != SCHEMA_VERSION.split(".")[0]:
        raise SchemaVersionError(f"{what} has schema version {found}; this depthcurate reads {SCHEMA_VERSION}")
