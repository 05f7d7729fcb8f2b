"""Per-video embedding files: one unit float16 vector per shard row, keyed by sample_id, resumable."""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.clip.embeddings import embed_video, is_current, load_embeddings
from pipeline.clip.model import get_model, save_random_checkpoint
from pipeline.config import ClipConfig
from pipeline.io.data_root import DataRoot
from pipeline.schema import EMBEDDING_MODEL_KEY, check_version
from pipeline.video.ingest import ingest_video


@pytest.fixture(scope="module")
def ingested(video_dir, tmp_path_factory):
    from pipeline.config import load_config
    from pipeline.sources.catalog import CatalogEntry

    cfg = load_config(
        overrides={
            "sample": {"fps": 10, "max_height": 96, "trim": {"head_s": 0.5, "tail_s": 0.5}, "decimate": None},
            "split": {"gap_frames": 2},
        }
    )
    root = DataRoot(tmp_path_factory.mktemp("embed_root"))
    entry = CatalogEntry(video_id="walk", url="http://127.0.0.1/walk.mp4", dataset="test", category="natural")
    records = [
        ingest_video(dataclasses.replace(entry, video_id=v), video_dir / name, root, cfg)
        for v, name in (("a", "walk.mp4"), ("b", "walk.mkv"))
    ]
    return root, records


def test_one_unit_float16_vector_per_shard_row(ingested, clip_settings):
    root, records = ingested
    model = get_model(ClipConfig(**clip_settings))
    assert embed_video(root, records[0], model) is True
    path = root.embeddings("test", "a")
    table = pq.read_table(path)
    check_version(table.schema, "embeddings")
    shard = pq.read_table(root.root / records[0].shards[0].path, columns=["sample_id", "image"])
    assert table["sample_id"].to_pylist() == shard["sample_id"].to_pylist()
    vectors = table["embedding"].combine_chunks().flatten().to_numpy().reshape(table.num_rows, -1)
    assert vectors.dtype == np.float16 and vectors.shape[1] == model.dim
    assert np.allclose(np.linalg.norm(vectors.astype(np.float32), axis=1), 1, atol=2e-3)
    assert np.array_equal(vectors[:3], model.embed_jpegs(shard["image"].to_pylist()[:3]))
    assert table.schema.metadata[EMBEDDING_MODEL_KEY].decode() == model.model_hash


def test_rerun_skips_a_current_file_and_redoes_a_stale_one(ingested, clip_settings, tmp_path):
    root, records = ingested
    model = get_model(ClipConfig(**clip_settings))
    embed_video(root, records[1], model)
    path = root.embeddings("test", "b")
    stamp = path.stat().st_mtime_ns
    assert embed_video(root, records[1], model) is False and path.stat().st_mtime_ns == stamp
    other = save_random_checkpoint(
        "tiny-clip-test", tmp_path / "other.pt", architecture=clip_settings["architecture"], seed=5
    )
    other_model = get_model(ClipConfig(**{**clip_settings, "checkpoint": str(other)}))
    assert not is_current(root, records[1], other_model.model_hash)
    assert embed_video(root, records[1], other_model) is True
    reshot = records[1].model_copy(update={"shards": [records[1].shards[0].model_copy(update={"sha256": "0" * 64})]})
    assert not is_current(root, reshot, other_model.model_hash)  # other shard bytes: stale too
    embed_video(root, records[1], model)  # back to the fixture's model for the other tests
    assert not list(path.parent.glob(".*"))  # no temporary left behind


def test_load_embeddings_in_record_order_and_names_missing_videos(ingested, clip_settings):
    root, records = ingested
    model = get_model(ClipConfig(**clip_settings))
    for record in records:
        embed_video(root, record, model)
    absent = records[1].model_copy(update={"video_id": "never_embedded"})
    corpus = load_embeddings(root, [*records, absent], model.model_hash, model.dim)
    expected = [
        sid
        for r in records
        for sid in pq.read_table(root.root / r.shards[0].path, columns=["sample_id"])["sample_id"].to_pylist()
    ]
    assert corpus.sample_ids.to_pylist() == expected
    assert corpus.vectors.shape == (len(expected), model.dim) and corpus.vectors.dtype == np.float16
    assert corpus.missing == ["test/never_embedded"]
    assert [f["path"] for f in corpus.files] == ["embeddings/test/a.parquet", "embeddings/test/b.parquet"]


def test_failed_videos_are_not_embedded(ingested, clip_settings):
    root, records = ingested
    with pytest.raises(ValueError, match="download_failed"):
        embed_video(
            root, records[0].model_copy(update={"status": "download_failed"}), get_model(ClipConfig(**clip_settings))
        )


def test_small_reads_and_row_groups_give_the_same_file_content(ingested, clip_settings, monkeypatch):
    import pipeline.clip.embeddings as embeddings

    root, records = ingested
    model = get_model(ClipConfig(**clip_settings))  # batch_size 16: the model sees the same batches both times
    path = root.embeddings("test", "a")
    path.unlink(missing_ok=True)
    embed_video(root, records[0], model)
    whole = pq.read_table(path)
    path.unlink()
    monkeypatch.setattr(embeddings, "_READ_ROWS", 5)  # reads of max(5, batch_size) = 16 rows
    monkeypatch.setattr(embeddings, "_ROW_GROUP_ROWS", 12)  # so every read closes a row group
    embed_video(root, records[0], model)
    pieces = pq.ParquetFile(path)
    assert whole.num_rows > 16 and pieces.metadata.num_row_groups == -(-whole.num_rows // 16)
    assert pieces.read().equals(whole)
