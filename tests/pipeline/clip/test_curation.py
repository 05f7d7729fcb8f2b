"""The corpus-level CLIP pass through publish: score columns, junk drops, SemDeDup, counts, idempotence."""

from __future__ import annotations

import dataclasses
import json
import subprocess

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.clip.embeddings import embed_video
from pipeline.clip.model import get_model
from pipeline.config import load_config
from pipeline.corpus.description import dedup_config
from pipeline.corpus.publish import publish
from pipeline.corpus.verify import verify_dataset
from pipeline.io.data_root import DataRoot
from pipeline.io.storage import sha256_file
from pipeline.schema import CLIP_JUNK, CLIP_TAGS, DROP_REASONS
from pipeline.video.ingest import ingest_video

BASE = {
    "sample": {"fps": 10, "max_height": 96, "trim": {"head_s": 0.5, "tail_s": 0.5}, "decimate": None},
    "split": {"train_fraction": 0.8, "gap_frames": 2},
}


@pytest.fixture(scope="module")
def corpus(video_dir, clip_settings, tmp_path_factory):
    """An original, a smaller re-encode of it (a re-upload) and an unrelated video, ingested and embedded."""
    from pipeline.sources.catalog import CatalogEntry

    work = tmp_path_factory.mktemp("clip_corpus")
    copy = work / "copy.mp4"
    subprocess.run(
        [
            "ffmpeg",
            "-loglevel",
            "error",
            "-i",
            str(video_dir / "walk.mp4"),
            "-vf",
            "scale=128:-2",
            "-c:v",
            "libx264",
            str(copy),
        ],
        check=True,
    )
    root = DataRoot(work / "root")
    cfg = load_config(overrides=BASE)
    entry = CatalogEntry(video_id="walk", url="http://127.0.0.1/walk.mp4", dataset="test", category="natural")
    records = []
    for video_id, path, category in [
        ("a_original", video_dir / "walk.mp4", "natural"),
        ("b_copy", copy, "natural"),
        ("c_other", video_dir / "walk.mkv", "driving"),
    ]:
        records.append(ingest_video(dataclasses.replace(entry, video_id=video_id, category=category), path, root, cfg))
    model = get_model(load_config(overrides={"clip": clip_settings}).clip)
    for record in records:
        embed_video(root, record, model)
    return root


def _config(clip_settings, **clip):
    # pHash cross-video dedup off, so the re-upload is left for SemDeDup to find
    return load_config(overrides={**BASE, "dedup": {"across_videos": False}, "clip": {**clip_settings, **clip}})


def test_scores_are_manifest_columns(corpus, clip_settings):
    description = publish(corpus, _config(clip_settings))
    manifest = pq.read_table(corpus.manifest("test")).to_pandas()
    assert len(manifest) == description["counts"]["samples"]["test"] > 0
    tags = manifest[[f"tag_{t}" for t in CLIP_TAGS]].to_numpy()
    assert np.allclose(tags.sum(axis=1), 1, atol=1e-5)
    assert (manifest.clip_tag == np.array(CLIP_TAGS)[tags.argmax(axis=1)]).all()
    junk = manifest[[f"junk_{j}" for j in CLIP_JUNK]].to_numpy()
    assert ((junk > 0) & (junk < 1)).all()
    filtered = pq.read_table(corpus.manifest("test"), filters=[("junk_text", "<", float(np.median(junk[:, 0])))])
    assert 0 < filtered.num_rows < len(manifest)  # a plain Parquet filter, as a trainer would use it
    frames = pq.read_table(corpus.frames_table).to_pandas()
    shard_rows = sum(s["rows"] for s in description["shards"])
    assert frames.tag_natural.notna().sum() == shard_rows  # every embedded frame is scored, kept or not
    clip = description["clip"]
    assert clip["model"] == "tiny-clip-test" and clip["checkpoint_sha256"] == sha256_file(clip_settings["checkpoint"])
    assert clip["missing_embeddings"] == [] and clip["frames_embedded"] == shard_rows
    assert verify_dataset(corpus) == []


def test_reupload_is_a_semantic_duplicate_of_the_earlier_video(corpus, clip_settings):
    publish(corpus, _config(clip_settings, semdedup={"epsilon": 0.0005}))
    frames = pq.read_table(corpus.frames_table).to_pandas()
    copy = frames[frames.video_id == "b_copy"]
    dropped = copy[copy.drop_reason == "semantic_duplicate"]
    # Of the copy's frames that passed the per-video rules (within-video duplicates go first), most are found.
    assert len(dropped) >= 0.8 * (copy.kept.sum() + len(dropped)) and len(dropped) >= 20
    assert dropped.duplicate_of.str.startswith("test/a_original/").mean() >= 0.9
    # keep rule: every semantic duplicate points at a kept frame that comes earlier in corpus order
    order = {sid: i for i, sid in enumerate(frames.sample_id)}
    kept = set(frames.sample_id[frames.kept])
    semantic = frames[frames.drop_reason == "semantic_duplicate"]
    assert all(d in kept and order[d] < order[s] for s, d in zip(semantic.sample_id, semantic.duplicate_of))


def test_larger_epsilon_drops_more(corpus, clip_settings):
    small = publish(corpus, _config(clip_settings, semdedup={"epsilon": 0.0002}))["counts"]
    large = publish(corpus, _config(clip_settings, semdedup={"epsilon": 0.003}))["counts"]
    assert large["dropped"]["semantic_duplicate"] > small["dropped"]["semantic_duplicate"] > 0
    assert large["frames_kept"] < small["frames_kept"]
    off = publish(corpus, _config(clip_settings, semdedup={"enabled": False}))["counts"]
    assert off["dropped"]["semantic_duplicate"] == 0


def test_junk_threshold_drops_are_counted_per_video_and_category(corpus, clip_settings):
    publish(corpus, _config(clip_settings, semdedup={"enabled": False}))
    scores = pq.read_table(corpus.manifest("test"), columns=["junk_blank"])["junk_blank"].to_numpy()
    threshold = float(np.median(scores))
    description = publish(corpus, _config(clip_settings, semdedup={"enabled": False}, junk_drop={"blank": threshold}))
    frames = pq.read_table(corpus.frames_table).to_pandas()
    junk = frames[frames.drop_reason == "junk_blank"]
    assert len(junk) == (scores >= threshold).sum() and (junk.junk_blank >= threshold).all()
    assert description["counts"]["dropped"]["junk_blank"] == len(junk)
    videos = pq.read_table(corpus.videos_table).to_pandas().set_index("video_id")
    for video_id, group in frames.groupby("video_id"):
        assert videos.loc[video_id, "frames_kept"] == group.kept.sum()
        for reason in DROP_REASONS:
            assert videos.loc[video_id, f"dropped_{reason}"] == (group.drop_reason == reason).sum()
    categories = pq.read_table(corpus.categories_table).to_pandas().set_index("category")
    assert set(categories.index) == {"natural", "driving"}
    for category, group in videos.groupby("category"):
        assert categories.loc[category, "dropped_junk_blank"] == group.dropped_junk_blank.sum()
        assert categories.loc[category, "frames_kept"] == group.frames_kept.sum()
        assert categories.loc[category, "videos_ok"] == len(group)


def test_republishing_with_clip_changes_no_byte(corpus, clip_settings):
    cfg = _config(clip_settings)
    description = publish(corpus, cfg)
    parts = [*corpus.frames_table.rglob("*.parquet"), *corpus.manifest("test").glob("*.parquet")]
    files = [corpus.dataset_json, corpus.videos_table, corpus.categories_table, *parts]
    assert parts  # rewritten on every CLIP publish, but with the same bytes: left untouched
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in files}
    assert publish(corpus, cfg) == description
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in files} == before


def test_dedup_config_takes_the_datasets_settings_and_a_new_epsilon(corpus, clip_settings, tmp_path):
    publish(corpus, load_config(overrides=BASE))  # published with CLIP off
    with pytest.raises(ValueError, match="clip.checkpoint"):
        dedup_config(corpus)  # nothing says which model to use
    clip_only = tmp_path / "clip.yaml"
    clip_only.write_text(json.dumps({"clip": clip_settings, "sample": {"fps": 3}}))  # JSON is YAML
    cfg = dedup_config(corpus, clip_only, epsilon=0.2)
    assert cfg.clip.enabled and cfg.clip.semdedup.epsilon == 0.2 and cfg.clip.checkpoint == clip_settings["checkpoint"]
    assert cfg.sample.fps == 10  # how the shards were made comes from dataset.json, not from the file
    assert cfg.processing_hash() == load_config(overrides=BASE).processing_hash()


# ---------------------------------------------------------------- the streamed pass against the in-memory one


def _reference(root, paths, frames, cfg, text, logit_scale, dim):
    """The pass as it was before streaming: every embedding in one matrix, scores of it all, then `semdedup`."""
    import pyarrow as pa
    import pyarrow.compute as pc

    import pipeline.clip.curation as curation
    from pipeline.clip.curation import score_block
    from pipeline.clip.embeddings import _vectors
    from pipeline.clip.semdedup import semdedup
    from pipeline.schema import CLIP_SCORE_COLUMNS, FRAME_STATS_SCHEMA

    tables = [pq.read_table(p) for p in paths]
    ids = pa.concat_arrays([t["sample_id"].combine_chunks() for t in tables]) if tables else pa.array([], pa.string())
    vectors = np.concatenate([_vectors(t["embedding"], dim) for t in tables] or [np.zeros((0, dim), np.float16)])
    position = pc.index_in(frames["sample_id"], value_set=ids).fill_null(-1).to_numpy()
    has = position >= 0
    scores = {name: [] for name in CLIP_SCORE_COLUMNS}
    step = curation._SCORE_ROWS  # the blocks matter: BLAS may round a row differently in another block size
    for start in range(0, len(vectors), step):
        for name, values in score_block(vectors[start : start + step], text, logit_scale).items():
            scores[name].append(values)
    scores = {name: np.concatenate(v) if v else np.zeros(0) for name, v in scores.items()}
    kept = frames["kept"].to_numpy(zero_copy_only=False).copy()
    reason = frames["drop_reason"].to_numpy(zero_copy_only=False).astype(object)
    duplicate_of = frames["duplicate_of"].to_numpy(zero_copy_only=False).astype(object)
    sample_ids = frames["sample_id"].to_numpy(zero_copy_only=False)
    take = np.where(has, position, 0)
    per_frame = {n: v[take] if len(v) else np.zeros(len(take), v.dtype) for n, v in scores.items()}
    for name in CLIP_JUNK:
        threshold = getattr(cfg.junk_drop, name)
        if threshold is not None:
            hit = kept & has & (per_frame[f"junk_{name}"] >= threshold)
            kept[hit] = False
            reason[hit] = f"junk_{name}"
    rows = np.flatnonzero(kept & has)
    s = cfg.semdedup
    result = semdedup(
        vectors[position[rows]],
        s.epsilon,
        clusters=s.clusters,
        iterations=s.iterations,
        sample_per_cluster=s.sample_per_cluster,
        seed=s.seed,
    )
    hit = result.duplicate_of >= 0
    kept[rows[hit]] = False
    reason[rows[hit]] = "semantic_duplicate"
    duplicate_of[rows[hit]] = sample_ids[rows[result.duplicate_of[hit]]]
    updates = {
        "kept": pa.array(kept),
        "drop_reason": pa.array(reason, pa.string()),
        "duplicate_of": pa.array(duplicate_of, pa.string()),
    }
    tags = np.array(CLIP_TAGS, dtype=object)
    for name in CLIP_SCORE_COLUMNS:
        values = tags[per_frame["clip_tag"].astype(np.int64)] if name == "clip_tag" else per_frame[name]
        updates[name] = pa.array(values, FRAME_STATS_SCHEMA.field(name).type, mask=~has)
    for name, column in updates.items():
        frames = frames.set_column(frames.schema.get_field_index(name), name, column)
    schema = pa.schema([FRAME_STATS_SCHEMA.field(name) for name in frames.column_names])
    return frames.cast(schema), {"frames": len(rows), "clusters": result.clusters, "dropped": int(hit.sum())}


def _random_corpus(tmp_path, videos: int, per_video: int, dim: int = 24, seed: int = 0):
    """Per-video embedding files in the real format (random unit float16 rows, every 10th a near-copy of an
    earlier row, often of another video), video 1 with no rows, video 2 without a file, and the slim frames table
    publish passes: one row per embedding row (and per frame of video 2), in corpus order, a few already dropped."""
    import pyarrow as pa

    from pipeline.clip.semdedup import unit_rows
    from pipeline.schema import CLIP_SCORE_COLUMNS, FRAME_STATS_SCHEMA, embedding_schema

    rng = np.random.default_rng(seed)
    root = DataRoot(tmp_path / "root")
    centres = unit_rows(rng.normal(size=(6, dim)))
    all_rows = unit_rows(centres[rng.integers(0, 6, videos * per_video)] + rng.normal(size=(videos * per_video, dim)))
    copies = np.flatnonzero(rng.random(len(all_rows)) < 0.1)
    copies = copies[copies > 0]
    sources = rng.integers(0, copies)
    all_rows[copies] = unit_rows(all_rows[sources] + rng.normal(size=(len(copies), dim)) * 0.01)
    paths, ids, n = [], [], 0
    for v in range(videos):
        count = 0 if v == 1 else per_video
        vid = [f"bench/v{v:03d}/{i:08d}" for i in range(count)]
        ids += vid
        if v == 2:
            continue  # frames, but no current embedding file
        path = root.embeddings("bench", f"v{v:03d}")
        path.parent.mkdir(parents=True, exist_ok=True)
        flat = pa.array(all_rows[n : n + count].astype(np.float16).reshape(-1), pa.float16())
        table = pa.table(
            {"sample_id": pa.array(vid, pa.string()), "embedding": pa.FixedSizeListArray.from_arrays(flat, dim)},
            schema=embedding_schema(dim),
        )
        pq.write_table(table, path, row_group_size=7)
        paths.append(path)
        n += count
    kept = rng.random(len(ids)) > 0.05
    columns = {
        "sample_id": pa.array(ids, pa.string()),
        "kept": pa.array(kept),
        "drop_reason": pa.array([None if k else "blurry" for k in kept], pa.string()),
        "duplicate_of": pa.array([None] * len(ids), pa.string()),
    }
    for name in CLIP_SCORE_COLUMNS:
        columns[name] = pa.nulls(len(ids), FRAME_STATS_SCHEMA.field(name).type)
    text = unit_rows(rng.normal(size=(len(CLIP_TAGS) + len(CLIP_JUNK) + 1, dim))).astype(np.float16)
    return root, paths, pa.table(columns), text.astype(np.float32)


@pytest.mark.parametrize(("videos", "per_video", "shuffle"), [(5, 40, False), (12, 150, False), (8, 60, True)])
def test_streamed_pass_equals_in_memory(tmp_path, monkeypatch, videos, per_video, shuffle):
    import pipeline.clip.curation as curation
    import pipeline.clip.embeddings as embeddings
    import pipeline.clip.semdedup as semdedup_module
    from pipeline.config import ClipConfig

    root, paths, frames, text = _random_corpus(tmp_path, videos, per_video)
    if shuffle:  # frames in another order than the files: the index_in fallback, in blocks
        frames = frames.take(np.random.default_rng(1).permutation(frames.num_rows))
        monkeypatch.setattr(curation, "_ID_BLOCK", 100)
    monkeypatch.setattr(curation, "_SCORE_ROWS", 17)  # score blocks across file boundaries
    monkeypatch.setattr(embeddings, "_ROW_GROUP_ROWS", 5)
    monkeypatch.setattr(semdedup_module, "_SPILL_ROWS", 23)  # smaller than a cluster
    cfg = ClipConfig(semdedup={"epsilon": 0.005, "clusters": 4}, junk_drop={"blank": 0.6})
    expected, figures = _reference(root, paths, frames, cfg, text, 30.0, 24)
    got, info = curation.curate_embeddings(root, paths, frames, cfg, text, 30.0, 24, workdir=tmp_path)
    assert got.equals(expected)
    reasons = got["drop_reason"].to_pylist()
    assert reasons.count("semantic_duplicate") == figures["dropped"] > 0 and "junk_blank" in reasons
    assert info["semdedup"] == {"epsilon": 0.005, **figures}
    assert info["frames_embedded"] == (videos - 2) * per_video
    assert [f["rows"] for f in info["embeddings"]] == [0 if i == 1 else per_video for i in range(videos) if i != 2]
    assert not [p for p in tmp_path.iterdir() if p.name != "root"]  # staged rows and spill removed


def test_streamed_pass_of_an_empty_corpus(tmp_path):
    import pipeline.clip.curation as curation
    from pipeline.config import ClipConfig

    root, paths, frames, text = _random_corpus(tmp_path, 0, 10)
    cfg = ClipConfig()
    got, info = curation.curate_embeddings(root, paths, frames, cfg, text, 30.0, 24, workdir=tmp_path)
    assert got.equals(_reference(root, paths, frames, cfg, text, 30.0, 24)[0]) and got.num_rows == 0
    assert info == {
        "frames_embedded": 0,
        "semdedup": {"epsilon": 0.01, "frames": 0, "clusters": 0, "dropped": 0},
        "embeddings": [],
    }


def test_curate_frames_equals_the_in_memory_pass_with_the_model(corpus, clip_settings, tmp_path):
    import pyarrow as pa

    from pipeline.clip.curation import curate_frames, prompt_matrix
    from pipeline.schema import CLIP_SCORE_COLUMNS, FRAME_STATS_SCHEMA
    from pipeline.video.record import load_records

    records = load_records(corpus)
    paths = [corpus.embeddings(r.dataset, r.video_id) for r in records]
    ids = pa.concat_arrays([pq.read_table(p, columns=["sample_id"])["sample_id"].combine_chunks() for p in paths])
    frames = {
        "sample_id": ids,
        "kept": pa.array(np.ones(len(ids), bool)),
        "drop_reason": pa.nulls(len(ids), pa.string()),
        "duplicate_of": pa.nulls(len(ids), pa.string()),
    }
    frames.update({name: pa.nulls(len(ids), FRAME_STATS_SCHEMA.field(name).type) for name in CLIP_SCORE_COLUMNS})
    cfg = _config(clip_settings, semdedup={"epsilon": 0.0005}, junk_drop={"text": 0.5}).clip
    got, info = curate_frames(corpus, records, pa.table(frames), cfg)
    model = get_model(cfg)
    expected, figures = _reference(
        corpus, paths, pa.table(frames), cfg, prompt_matrix(model, cfg), model.logit_scale, model.dim
    )
    assert got.equals(expected) and figures["dropped"] > 0
    assert info["semdedup"] == {"epsilon": 0.0005, **figures} and info["frames_embedded"] == len(ids)
