"""The corpus-level CLIP pass of publish: zero-shot tag and junk scores, junk drops, then SemDeDup.

It reads only the per-video embedding files (made from the shards), so changing a prompt, a junk threshold or
epsilon re-runs this pass and nothing before it. Rule order, after the cross-video pHash pass: `junk_<name>`
(the first junk kind in CLIP_JUNK order whose score reaches its `clip.junk_drop` threshold), then
`semantic_duplicate` among the frames still kept, so a junk frame never stands in for a good duplicate.

Streamed, with memory bounded by a block of rows rather than the corpus (10M x 512 float16 embeddings are 10 GB):
1. the sample_id column of each embedding file maps the frames to embedding rows (the concatenation of the
   files in record order). Publish passes the frames video by video in that order, so each file matches the
   next run of frames and is checked, not hashed; frames that do not line up are looked up with
   `pc.index_in` against those files' ids, a bounded block at a time. Sample ids name their dataset and video,
   so one appears in one file only.
2. the vectors are streamed in blocks of `_SCORE_ROWS` rows across file boundaries (the same blocks as
   `zero_shot_scores` of the whole matrix, so the same numbers) and scored; junk drops follow per frame.
3. the vectors of the frames still kept are streamed once more into a raw float16 file in frame order (disk:
   n x dim x 2 bytes, in a temporary directory) and `semdedup_file` runs on it (see pipeline/clip/semdedup.py).
Per frame it holds the position (8 bytes), 8-16 bytes of sort keys while mapping, the scores (4 bytes a column:
36 with 5 tags and 4 junk kinds, 8 for clip_tag), kept and a drop code (2 bytes); SemDeDup adds 16-24 bytes per
frame it sees. Sample ids stay in Arrow arrays (the frames table's, and one file's at a time), never Python strings.

What can be incremental: a video's zero-shot scores depend only on its embedding file, the prompts and the
model, so they could be cached per video (keyed by the file's digest and a digest of the prompts); they cost a
small product per row (a few seconds per 10M rows), so they are recomputed. The junk drops are per frame too.
SemDeDup cannot be incremental: its clusters are fitted on a sample of the whole corpus and the keep rule runs in
corpus order, so one new video can move centroids and flip decisions anywhere; it is re-run over every frame.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.clip.embeddings import current_files, file_info, iter_vectors, read_sample_ids
from pipeline.clip.model import ClipModel, get_model
from pipeline.clip.semdedup import semdedup_file, unit_rows
from pipeline.config import ClipConfig
from pipeline.io.data_root import DataRoot
from pipeline.schema import CLIP_JUNK, CLIP_SCORE_COLUMNS, CLIP_TAGS, FRAME_STATS_SCHEMA
from pipeline.video.record import VideoRecord

_SCORE_ROWS = 65536  # embeddings scored at a time
_ID_BLOCK = 1 << 20  # embedding sample ids hashed at a time when frames do not line up with the files
_SEARCH_ROWS = 1 << 20  # frames searched ahead for a file's first id (past frames of a video without embeddings)


def curate_frames(
    root: DataRoot, records: list[VideoRecord], frames: pa.Table, cfg: ClipConfig
) -> tuple[pa.Table, dict[str, Any]]:
    """`frames` (any subset of the frame-stats columns that includes sample_id, kept, drop_reason, duplicate_of and
    the score columns) with CLIP scores filled in and junk / semantic-duplicate drops applied; plus what dataset.json
    records."""
    model = get_model(cfg)
    paths, missing = current_files(root, records, model.model_hash)
    frames, info = curate_embeddings(root, paths, frames, cfg, prompt_matrix(model, cfg), model.logit_scale, model.dim)
    return frames, {
        **model.describe(),
        "frames_embedded": info["frames_embedded"],
        "missing_embeddings": missing,
        "semdedup": info["semdedup"],
        "embeddings": info["embeddings"],
    }


def curate_embeddings(
    root: DataRoot,
    paths: list[Path],
    frames: pa.Table,
    cfg: ClipConfig,
    text: np.ndarray,
    logit_scale: float,
    dim: int,
    *,
    workdir: Path | None = None,
) -> tuple[pa.Table, dict[str, Any]]:
    """`curate_frames` given the embedding files (in record order) and the prompt matrix: the streamed pass.

    `workdir`: where SemDeDup's temporary files go (default: the system's temporary directory)."""
    n_frames = frames.num_rows
    frame_ids = frames["sample_id"]
    position, rows_of = _positions(root, paths, frame_ids)
    has = position >= 0  # frames without a current embedding (none, unless embedding a video failed) keep nulls
    files = [file_info(root, path, rows) for path, rows in zip(paths, rows_of)]
    per_frame = _scores(root, paths, position, n_frames, text, logit_scale, dim)
    kept = frames["kept"].to_numpy(zero_copy_only=False).copy()
    reason_code = np.zeros(n_frames, np.int8)  # 0: unchanged, 1 + i: junk_<CLIP_JUNK[i]>, then semantic_duplicate
    for i, name in enumerate(CLIP_JUNK):
        threshold = getattr(cfg.junk_drop, name)
        if threshold is not None:
            hit = kept & has & (per_frame[f"junk_{name}"] >= threshold)
            kept[hit] = False
            reason_code[hit] = 1 + i
    dedup_info = None
    duplicate_of = frames["duplicate_of"].combine_chunks()
    if cfg.semdedup.enabled:
        rows = np.flatnonzero(kept & has)  # frames are in corpus order: (dataset, video_id, frame order)
        with tempfile.TemporaryDirectory(prefix="clip-pass-", dir=workdir) as tmp:
            staged = Path(tmp) / "kept.f16"
            _stage(root, paths, rows_of, position[rows], dim, staged)
            result = semdedup_file(
                staged,
                len(rows),
                dim,
                cfg.semdedup.epsilon,
                clusters=cfg.semdedup.clusters,
                iterations=cfg.semdedup.iterations,
                sample_per_cluster=cfg.semdedup.sample_per_cluster,
                seed=cfg.semdedup.seed,
                workdir=Path(tmp),
            )
        hit = result.duplicate_of >= 0
        dup_rows = rows[hit]
        kept[dup_rows] = False
        reason_code[dup_rows] = 1 + len(CLIP_JUNK)
        dup_mask = np.zeros(n_frames, bool)
        dup_mask[dup_rows] = True  # rows ascend, so the replacements below come in mask order
        originals = frame_ids.take(pa.array(rows[result.duplicate_of[hit]], pa.int64())).combine_chunks()
        duplicate_of = pc.replace_with_mask(duplicate_of, pa.array(dup_mask), originals.cast(duplicate_of.type))
        dedup_info = {
            "epsilon": cfg.semdedup.epsilon,
            "frames": int(len(rows)),
            "clusters": result.clusters,
            "dropped": int(hit.sum()),
        }
    reasons = frames["drop_reason"].combine_chunks()
    names = pa.array([f"junk_{name}" for name in CLIP_JUNK] + ["semantic_duplicate"], reasons.type)
    changed = reason_code > 0
    updates = {
        "kept": pa.array(kept),
        "drop_reason": pc.replace_with_mask(
            reasons, pa.array(changed), names.take(pa.array(reason_code[changed].astype(np.int64) - 1))
        ),
        "duplicate_of": duplicate_of,
    }
    tags = pa.array(CLIP_TAGS, pa.string())
    for name in CLIP_SCORE_COLUMNS:
        field = FRAME_STATS_SCHEMA.field(name)
        if name == "clip_tag":
            updates[name] = tags.take(pa.array(per_frame[name], mask=~has)).cast(field.type)
        else:
            updates[name] = pa.array(per_frame[name], field.type, mask=~has)
    for name, column in updates.items():
        frames = frames.set_column(frames.schema.get_field_index(name), name, column)
    info = {"frames_embedded": int(has.sum()), "semdedup": dedup_info, "embeddings": files}
    return frames.cast(pa.schema([FRAME_STATS_SCHEMA.field(name) for name in frames.column_names])), info


def _positions(root: DataRoot, paths: list[Path], frame_ids: pa.ChunkedArray) -> tuple[np.ndarray, list[int]]:
    """Each frame's row in the concatenated embedding files (-1: none), as `pc.index_in` over all their ids would
    give, and each file's row count; one file's ids in memory at a time (a block of them for frames that do not
    line up)."""
    position = np.full(len(frame_ids), -1, np.int64)
    rows_of: list[int] = []
    unmatched: list[int] = []  # files whose ids are not a run of frames at or after the previous file's
    cursor = offset = 0
    for i, path in enumerate(paths):
        ids = read_sample_ids(root, path)
        rows_of.append(len(ids))
        at = _run_at(frame_ids, ids.cast(frame_ids.type), cursor)
        if at is None:
            unmatched.append(i)
        else:
            position[at : at + len(ids)] = offset + np.arange(len(ids))
            cursor = at + len(ids)
        offset += len(ids)
    if unmatched:
        starts = np.cumsum([0, *rows_of])
        block: list[pa.Array] = []
        block_rows: list[np.ndarray] = []
        for n, i in enumerate(unmatched):
            block.append(read_sample_ids(root, paths[i]).cast(frame_ids.type))
            block_rows.append(starts[i] + np.arange(rows_of[i]))
            if sum(len(b) for b in block) >= _ID_BLOCK or n == len(unmatched) - 1:
                open_frames = np.flatnonzero(position < 0)
                found = pc.index_in(frame_ids.take(pa.array(open_frames)), value_set=pa.concat_arrays(block))
                found = found.fill_null(-1).to_numpy(zero_copy_only=False)
                hit = found >= 0
                position[open_frames[hit]] = np.concatenate(block_rows)[found[hit]]
                block, block_rows = [], []
    return position, rows_of


def _run_at(frame_ids: pa.ChunkedArray, ids: pa.Array, cursor: int) -> int | None:
    """Where `ids` equal a run of frames at or after `cursor`: there, or after frames of videos without embeddings
    (up to `_SEARCH_ROWS` ahead); None when not found."""
    n = len(ids)
    if n == 0:
        return cursor
    if cursor + n <= len(frame_ids) and frame_ids.slice(cursor, n).equals(pa.chunked_array([ids])):
        return cursor
    ahead = pc.index(frame_ids.slice(cursor, _SEARCH_ROWS), ids[0]).as_py()
    if ahead is None or ahead < 0:
        return None
    at = cursor + ahead
    if at + n <= len(frame_ids) and frame_ids.slice(at, n).equals(pa.chunked_array([ids])):
        return at
    return None


def _blocks(root: DataRoot, paths: list[Path], dim: int, size: int) -> Iterator[tuple[int, np.ndarray]]:
    """(first row, rows) of the concatenated files' vectors in blocks of exactly `size` rows (the last: the rest)."""
    pending: list[np.ndarray] = []
    have = start = 0
    for path in paths:
        for batch in iter_vectors(root, path, dim):
            pending.append(batch)
            have += len(batch)
            while have >= size:
                joined = np.concatenate(pending) if len(pending) > 1 else pending[0]
                yield start, joined[:size]
                start += size
                pending, have = [joined[size:]], have - size
    if have:
        yield start, np.concatenate(pending)


def _scores(
    root: DataRoot,
    paths: list[Path],
    position: np.ndarray,
    n_frames: int,
    text: np.ndarray,
    logit_scale: float,
    dim: int,
) -> dict[str, np.ndarray]:
    """`zero_shot_scores` per frame (0 where a frame has no embedding), streamed: one block of vectors at a time."""
    out = {name: np.zeros(n_frames, np.int64 if name == "clip_tag" else np.float32) for name in CLIP_SCORE_COLUMNS}
    frames = np.flatnonzero(position >= 0)
    at = position[frames]
    order = np.argsort(at, kind="stable")  # already sorted when the frames line up with the files
    frames, at = frames[order], at[order]
    del order
    for start, block in _blocks(root, paths, dim, _SCORE_ROWS):
        lo, hi = np.searchsorted(at, [start, start + len(block)])
        if hi == lo:
            continue
        scores = score_block(block, text, logit_scale)
        for name, values in scores.items():
            out[name][frames[lo:hi]] = values[at[lo:hi] - start]
    return out


def _stage(root: DataRoot, paths: list[Path], rows_of: list[int], positions: np.ndarray, dim: int, path: Path) -> None:
    """Write the vectors at `positions` (rows of the concatenated files), in that order, to a raw float16 file."""
    order = np.argsort(positions, kind="stable")
    at = positions[order]
    row_bytes = dim * 2
    with open(path, "wb") as out:
        out.truncate(len(positions) * row_bytes)
        offset = 0
        for path_, rows in zip(paths, rows_of):
            lo_file, hi_file = np.searchsorted(at, [offset, offset + rows])
            if hi_file > lo_file:  # only files with a frame still kept are read
                start = offset
                for batch in iter_vectors(root, path_, dim):
                    lo, hi = np.searchsorted(at, [start, start + len(batch)])
                    if hi > lo:
                        dest, data = order[lo:hi], batch[at[lo:hi] - start]
                        # one write per run of consecutive destinations (one per batch when frames line up)
                        cuts = np.flatnonzero(np.diff(dest) != 1) + 1
                        for a, b in zip(np.r_[0, cuts], np.r_[cuts, len(dest)]):
                            out.seek(int(dest[a]) * row_bytes)
                            out.write(np.ascontiguousarray(data[a:b]).data)
                    start += len(batch)
            offset += rows


def prompt_matrix(model: ClipModel, cfg: ClipConfig) -> np.ndarray:
    """One unit row per tag, per junk kind, then the clean prompts, rounded like the image embeddings."""
    prompts = [getattr(cfg.tags, name) for name in CLIP_TAGS] + [getattr(cfg.junk, name) for name in CLIP_JUNK]
    text = np.stack([_prompt_vector(model, p) for p in prompts + [cfg.junk.clean]])
    # Rounded like the image embeddings: a rerun then computes from identical inputs and writes identical bytes.
    return text.astype(np.float16).astype(np.float32)


def score_block(vectors: np.ndarray, text: np.ndarray, logit_scale: float) -> dict[str, np.ndarray]:
    """The zero-shot scores of some embedding rows (see `zero_shot_scores`)."""
    n_tags = len(CLIP_TAGS)
    sims = unit_rows(vectors) @ text.T
    logits = logit_scale * sims[:, :n_tags]
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    out = {f"tag_{name}": probs[:, i] for i, name in enumerate(CLIP_TAGS)}
    out["clip_tag"] = probs.argmax(axis=1)
    margin = logit_scale * (sims[:, n_tags:-1] - sims[:, -1:])
    junk = 1.0 / (1.0 + np.exp(-margin))
    out.update({f"junk_{name}": junk[:, i] for i, name in enumerate(CLIP_JUNK)})
    return out


def zero_shot_scores(vectors: np.ndarray, model: ClipModel, cfg: ClipConfig) -> dict[str, np.ndarray]:
    """Per embedding: tag_<name> (softmax over the tags), clip_tag (index of the top tag), junk_<name>.

    A junk score is P(junk | its prompts or the clean prompts): a two-way softmax at the model's own logit
    scale, so each kind is judged on its own rather than competing with the other kinds. In memory, for a matrix;
    the corpus pass scores block by block (`_scores`) with the same blocks.
    """
    text = prompt_matrix(model, cfg)
    n = len(vectors)
    out = {f"tag_{name}": np.empty(n, np.float32) for name in CLIP_TAGS}
    out["clip_tag"] = np.empty(n, np.int64)
    out.update({f"junk_{name}": np.empty(n, np.float32) for name in CLIP_JUNK})
    for start in range(0, n, _SCORE_ROWS):
        for name, values in score_block(vectors[start : start + _SCORE_ROWS], text, model.logit_scale).items():
            out[name][start : start + len(values)] = values
    return out


def _prompt_vector(model: ClipModel, prompts: tuple[str, ...]) -> np.ndarray:
    """One unit vector per class: the mean of its prompts' embeddings (CLIP's prompt ensembling)."""
    mean = model.embed_texts(prompts).mean(axis=0)
    return mean / max(float(np.linalg.norm(mean)), 1e-12)
