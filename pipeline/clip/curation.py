"""The corpus-level CLIP pass of publish: zero-shot tag and junk scores, junk drops, then SemDeDup.

It reads only the per-video embedding files (made from the shards), so changing a prompt, a junk threshold or
epsilon re-runs this pass and nothing before it. Rule order, after the cross-video pHash pass: `junk_<name>`
(the first junk kind in CLIP_JUNK order whose score reaches its `clip.junk_drop` threshold), then
`semantic_duplicate` among the frames still kept, so a junk frame never stands in for a good duplicate.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.clip.embeddings import load_embeddings
from pipeline.clip.model import ClipModel, get_model
from pipeline.clip.semdedup import semdedup, unit_rows
from pipeline.config import ClipConfig
from pipeline.io.data_root import DataRoot
from pipeline.schema import CLIP_JUNK, CLIP_SCORE_COLUMNS, CLIP_TAGS, FRAME_STATS_SCHEMA
from pipeline.video.record import VideoRecord

_SCORE_ROWS = 65536  # embeddings scored at a time


def curate_frames(
    root: DataRoot, records: list[VideoRecord], frames: pa.Table, cfg: ClipConfig
) -> tuple[pa.Table, dict[str, Any]]:
    """`frames` (any subset of the frame-stats columns that includes sample_id, kept, drop_reason, duplicate_of and
    the score columns) with CLIP scores filled in and junk / semantic-duplicate drops applied; plus what dataset.json
    records."""
    model = get_model(cfg)
    corpus = load_embeddings(root, records, model.model_hash, model.dim)
    position = pc.index_in(frames["sample_id"], value_set=corpus.sample_ids).fill_null(-1).to_numpy()
    has = position >= 0  # frames without a current embedding (none, unless embedding a video failed) keep nulls
    scores = zero_shot_scores(corpus.vectors, model, cfg)
    kept = frames["kept"].to_numpy(zero_copy_only=False).copy()
    reason = frames["drop_reason"].to_numpy(zero_copy_only=False).astype(object)
    duplicate_of = frames["duplicate_of"].to_numpy(zero_copy_only=False).astype(object)
    sample_ids = frames["sample_id"].to_numpy(zero_copy_only=False)
    take = np.where(has, position, 0)
    per_frame = {
        name: values[take] if len(values) else np.zeros(len(take), values.dtype) for name, values in scores.items()
    }
    for name in CLIP_JUNK:
        threshold = getattr(cfg.junk_drop, name)
        if threshold is not None:
            hit = kept & has & (per_frame[f"junk_{name}"] >= threshold)
            kept[hit] = False
            reason[hit] = f"junk_{name}"
    dedup_info = None
    if cfg.semdedup.enabled:
        rows = np.flatnonzero(kept & has)  # frames are in corpus order: (dataset, video_id, frame order)
        result = semdedup(
            corpus.vectors[position[rows]],
            cfg.semdedup.epsilon,
            clusters=cfg.semdedup.clusters,
            iterations=cfg.semdedup.iterations,
            sample_per_cluster=cfg.semdedup.sample_per_cluster,
            seed=cfg.semdedup.seed,
        )
        hit = result.duplicate_of >= 0
        dup_rows = rows[hit]
        kept[dup_rows] = False
        reason[dup_rows] = "semantic_duplicate"
        duplicate_of[dup_rows] = sample_ids[rows[result.duplicate_of[hit]]]
        dedup_info = {
            "epsilon": cfg.semdedup.epsilon,
            "frames": int(len(rows)),
            "clusters": result.clusters,
            "dropped": int(hit.sum()),
        }
    updates = {
        "kept": pa.array(kept),
        "drop_reason": pa.array(reason, pa.string()),
        "duplicate_of": pa.array(duplicate_of, pa.string()),
    }
    tags = np.array(CLIP_TAGS, dtype=object)
    for name in CLIP_SCORE_COLUMNS:
        values = tags[per_frame["clip_tag"]] if name == "clip_tag" else per_frame[name]
        updates[name] = pa.array(values, FRAME_STATS_SCHEMA.field(name).type, mask=~has)
    for name, column in updates.items():
        frames = frames.set_column(frames.schema.get_field_index(name), name, column)
    info = {
        **model.describe(),
        "frames_embedded": int(has.sum()),
        "missing_embeddings": corpus.missing,
        "semdedup": dedup_info,
        "embeddings": corpus.files,
    }
    return frames.cast(pa.schema([FRAME_STATS_SCHEMA.field(name) for name in frames.column_names])), info


def zero_shot_scores(vectors: np.ndarray, model: ClipModel, cfg: ClipConfig) -> dict[str, np.ndarray]:
    """Per embedding: tag_<name> (softmax over the tags), clip_tag (index of the top tag), junk_<name>.

    A junk score is P(junk | its prompts or the clean prompts): a two-way softmax at the model's own logit
    scale, so each kind is judged on its own rather than competing with the other kinds.
    """
    prompts = [getattr(cfg.tags, name) for name in CLIP_TAGS] + [getattr(cfg.junk, name) for name in CLIP_JUNK]
    text = np.stack([_prompt_vector(model, p) for p in prompts + [cfg.junk.clean]])
    # Rounded like the image embeddings: a rerun then computes from identical inputs and writes identical bytes.
    text = text.astype(np.float16).astype(np.float32)
    n, n_tags = len(vectors), len(CLIP_TAGS)
    out = {f"tag_{name}": np.empty(n, np.float32) for name in CLIP_TAGS}
    out["clip_tag"] = np.empty(n, np.int64)
    out.update({f"junk_{name}": np.empty(n, np.float32) for name in CLIP_JUNK})
    for start in range(0, n, _SCORE_ROWS):
        sims = unit_rows(vectors[start : start + _SCORE_ROWS]) @ text.T
        logits = model.logit_scale * sims[:, :n_tags]
        probs = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs /= probs.sum(axis=1, keepdims=True)
        for i, name in enumerate(CLIP_TAGS):
            out[f"tag_{name}"][start : start + len(sims)] = probs[:, i]
        out["clip_tag"][start : start + len(sims)] = probs.argmax(axis=1)
        margin = model.logit_scale * (sims[:, n_tags:-1] - sims[:, -1:])
        junk = 1.0 / (1.0 + np.exp(-margin))
        for i, name in enumerate(CLIP_JUNK):
            out[f"junk_{name}"][start : start + len(sims)] = junk[:, i]
    return out


def _prompt_vector(model: ClipModel, prompts: tuple[str, ...]) -> np.ndarray:
    """One unit vector per class: the mean of its prompts' embeddings (CLIP's prompt ensembling)."""
    mean = model.embed_texts(prompts).mean(axis=0)
    return mean / max(float(np.linalg.norm(mean)), 1e-12)
