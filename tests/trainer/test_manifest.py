"""Reading manifests: clear errors for what the trainer cannot use."""

from __future__ import annotations

import shutil

import pyarrow.parquet as pq
import pytest

from pipeline.schema import SCHEMA_VERSION_KEY
from trainer.config import ConfigError, FilterConfig, load_train_config
from trainer.manifest import ManifestError, check_shards, data_root_of, load_manifests, read_manifest


def test_reads_rows_with_their_data_root_and_kind(train_root):
    frame = read_manifest(train_root / "manifest" / "stereo.parquet")
    assert set(frame["kind"]) == {"stereo"} and set(frame["root"]) == {str(train_root)}
    assert data_root_of(train_root / "manifest" / "mono.parquet") == train_root
    check_shards(frame)


def test_missing_manifest_is_a_clear_error(tmp_path):
    with pytest.raises(ManifestError, match="does not exist"):
        read_manifest(tmp_path / "manifest" / "x.parquet")
    with pytest.raises(ManifestError, match="no manifest"):
        load_manifests([], "train", FilterConfig())


def test_unknown_schema_version_is_a_clear_error(train_root, tmp_path):
    table = pq.read_table(train_root / "manifest" / "mono.parquet")
    table = table.replace_schema_metadata({SCHEMA_VERSION_KEY: b"9.0"})
    (tmp_path / "manifest").mkdir()
    pq.write_table(table, tmp_path / "manifest" / "mono.parquet")
    with pytest.raises(ManifestError, match="schema version 9.0"):
        read_manifest(tmp_path / "manifest" / "mono.parquet")


def test_empty_selection_names_split_and_filters(train_root):
    with pytest.raises(ManifestError, match="no samples left.*underwater"):
        load_manifests([train_root / "manifest" / "mono.parquet"], "train", FilterConfig(categories=["underwater"]))
    with pytest.raises(ManifestError, match="unknown manifest column 'nope'"):
        load_manifests([train_root / "manifest" / "mono.parquet"], "train", FilterConfig(ranges={"nope": (0, 1)}))


def test_missing_shard_is_named(train_root, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(train_root / "manifest", root / "manifest")
    frame = read_manifest(root / "manifest" / "mono.parquet")
    with pytest.raises(ManifestError, match="shard shards/mono/.* is missing"):
        check_shards(frame)


def test_unknown_config_key_is_rejected(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  lr: 0.001\n  learning_rate: 0.1\n")
    with pytest.raises(ConfigError, match="learning_rate"):
        load_train_config(path)
    with pytest.raises(ConfigError, match="multiples of 32"):
        load_train_config(overrides={"data": {"height": 100}})


def test_a_single_file_manifest_of_an_earlier_layout_reads_as_its_per_video_parts(train_root, tmp_path):
    parts = train_root / "manifest" / "mono.parquet"
    assert parts.is_dir() and len(list(parts.glob("*.parquet"))) > 1
    (tmp_path / "manifest").mkdir()
    pq.write_table(pq.read_table(parts), tmp_path / "manifest" / "mono.parquet")  # one file, as before
    from_parts = read_manifest(parts).drop(columns="root")
    assert read_manifest(tmp_path / "manifest" / "mono.parquet").drop(columns="root").equals(from_parts)
