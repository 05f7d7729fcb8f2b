"""Object-store data roots against an S3 server on loopback: whole objects only, published in order, nothing
rewritten that is unchanged, no credentials in what is written, and the trainer reads it like local disk."""

from __future__ import annotations

import contextlib
import itertools
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import fsspec.core
import pytest
import requests
import torch

from pipeline.corpus.publish import publish
from pipeline.corpus.verify import verify_dataset
from pipeline.io import objectstore
from pipeline.io.data_root import WORK_DIR_ENV, DataRoot
from pipeline.video.ingest import ingest_video
from pipeline.video.record import is_finished, load_record
from trainer.config import load_train_config
from trainer.data import ShardStream, make_loader
from trainer.manifest import check_shards, data_root_of, load_manifests
from trainer.plan import EpochPlan


@contextlib.contextmanager
def recorded(server: str) -> Iterator[list[dict]]:
    """The requests the server received inside the block, in order (moto's request recorder)."""
    requests.post(f"{server}/moto-api/recorder/reset-recording", timeout=10)
    requests.post(f"{server}/moto-api/recorder/start-recording", timeout=10)
    log: list[dict] = []
    try:
        yield log
    finally:
        requests.post(f"{server}/moto-api/recorder/stop-recording", timeout=10)
        text = requests.get(f"{server}/moto-api/recorder/download-recording", timeout=30).text
        log += [json.loads(line) for line in text.splitlines() if line.strip()]


def published(log: list[dict], bucket: str) -> list[str]:
    """Keys that appeared by a server-side copy (a temporary key moved onto them), in order, relative to data/."""
    prefix = f"/{bucket.removeprefix('s3://')}/data/"
    return [
        request["url"].split(prefix, 1)[1]
        for request in log
        if request["method"] == "PUT" and "x-amz-copy-source" in {h.lower() for h in request["headers"]}
    ]


def objects(url: str) -> dict[str, bytes]:
    fs, path = fsspec.core.url_to_fs(url)
    fs.invalidate_cache()
    return {key: fs.cat_file(key) for key in fs.find(path)}


def stamps(url: str) -> dict[str, tuple]:
    """ETag and modification time of every object under `url`."""
    fs, path = fsspec.core.url_to_fs(url)
    fs.invalidate_cache()
    return {key: (info["ETag"], info["LastModified"]) for key, info in fs.find(path, detail=True).items()}


def curate_small(root: DataRoot, entry, video: Path, cfg) -> dict:
    record = ingest_video(entry, video, root, cfg)
    assert record.status == "ok", record
    return publish(root, cfg)


def test_urls_are_told_from_paths_and_credentials_in_them_refused():
    assert objectstore.is_remote("s3://bucket/x") and objectstore.is_remote("gs://b/x")
    assert not objectstore.is_remote("/data/x") and not objectstore.is_remote("file:///data/x")
    assert not objectstore.is_remote(Path("s3://bucket"))
    assert objectstore.join("s3://bucket/data/", "shards/a.parquet") == "s3://bucket/data/shards/a.parquet"
    assert DataRoot("file:///tmp/x").root == Path("/tmp/x").resolve() and not DataRoot("/tmp/x").remote
    with pytest.raises(ValueError, match="credentials") as error:
        DataRoot("s3://AKIAEXAMPLE:verysecret@bucket/data")
    assert "verysecret" not in str(error.value)


def test_a_write_lands_on_a_hidden_temporary_key_then_moves_onto_the_final_one(s3_bucket, s3_server):
    url = f"{s3_bucket}/data/stats/videos.parquet"
    with recorded(s3_server) as log:
        assert objectstore.write_bytes_atomic(url, b"x" * 5000)
    puts = [r for r in log if r["method"] == "PUT"]
    assert len(puts) == 2
    temporary, final = puts[0]["url"], puts[1]["url"]
    assert temporary.rsplit("/", 1)[1].startswith(".videos.parquet.tmp-")
    assert final.endswith("/data/stats/videos.parquet")
    copy_source = {k.lower(): v for k, v in puts[1]["headers"].items()}["x-amz-copy-source"]
    assert copy_source.endswith(temporary.rsplit("/", 1)[1])
    assert any(r["method"] in {"DELETE", "POST"} and r is not puts[1] for r in log[log.index(puts[1]) :])
    assert objects(f"{s3_bucket}/data") == {f"{s3_bucket.removeprefix('s3://')}/data/stats/videos.parquet": b"x" * 5000}


def test_unchanged_bytes_are_not_written_again(s3_bucket, s3_server):
    url = f"{s3_bucket}/data/dataset.json"
    assert objectstore.write_bytes_atomic(url, b'{"a": 1}')
    with recorded(s3_server) as log:
        assert not objectstore.write_bytes_atomic(url, b'{"a": 1}')
    assert not [r for r in log if r["method"] in {"PUT", "POST", "DELETE"}]
    assert objectstore.write_bytes_atomic(url, b'{"a": 2}')  # same size, other bytes
    assert objectstore.read_bytes(url) == b'{"a": 2}'


def test_a_killed_writers_temporary_is_never_listed_and_is_cleared(s3_bucket, tmp_path):
    root = DataRoot(f"{s3_bucket}/data", work_dir=tmp_path)
    shard_dir = root.shard_dir("d", "v")
    fs, key = objectstore.filesystem(root.address(shard_dir / "part-00000.parquet"))
    fs.pipe_file(objectstore.temp_key_for(key), b"half a shard")  # what an upload killed midway leaves
    assert root.glob(shard_dir, "*.parquet") == []
    assert not root.exists(shard_dir / "part-00000.parquet")
    assert root.remove_stale_temps(shard_dir) == 1
    assert objects(root.address(shard_dir)) == {}


def test_ingest_and_publish_order_on_an_object_store(s3_bucket, s3_server, video_dir, entry, small_config, tmp_path):
    root = DataRoot(f"{s3_bucket}/data", work_dir=tmp_path / "work")
    with recorded(s3_server) as log:
        description = curate_small(root, entry, video_dir / "walk.mp4", small_config)
    order = published(log, s3_bucket)
    # Publish's own state goes around the outputs (decisions before, the inputs digest after dataset.json).
    assert {key for key in order if key.startswith("state/")} == {
        "state/publish/cross_video.npz",
        "state/publish/outputs.json",
        "state/publish/inputs.json",
    }
    order = [key for key in order if not key.startswith("state/")]
    record = order.index("stats/videos/test/walk.json")
    parts = [i for i, key in enumerate(order) if key.startswith(("shards/", "stats/frames/test/"))]
    video_parts = [
        order.index(key) for key in ("stats/frames.parquet/test/walk.parquet", "manifest/test.parquet/walk.parquet")
    ]
    tables = [order.index(key) for key in ("stats/videos.parquet", "stats/categories.parquet")]
    assert parts and max(parts) < record < min(video_parts)  # the done-marker after the video's files
    # A manifest part after the frames-table part: a reader who finds it can rely on what it points to.
    assert video_parts == sorted(video_parts) and max(video_parts) < min(tables)
    assert max(tables) < order.index("dataset.json") == len(order) - 1
    assert not any(p.is_file() for p in (tmp_path / "work").rglob("*"))  # finished files moved to the store
    assert verify_dataset(root) == []
    assert description["shards"] and all(root.exists(root.root / s["path"]) for s in description["shards"])


def test_same_bytes_as_local_disk_and_resumable_from_another_machine(
    s3_bucket, video_dir, entry, small_config, tmp_path
):
    remote = DataRoot(f"{s3_bucket}/data", work_dir=tmp_path / "work")
    local = DataRoot(tmp_path / "local")
    remote_description = curate_small(remote, entry, video_dir / "walk.mp4", small_config)
    local_description = curate_small(local, entry, video_dir / "walk.mp4", small_config)
    assert remote_description == local_description
    for path in [local.root / s["path"] for s in local_description["shards"]] + [
        local.manifest_part("test", "walk"),
        local.frames_table_part("test", "walk"),
    ]:
        assert remote.read_bytes(remote.root / local.relative(path)) == path.read_bytes()
    elsewhere = DataRoot(f"{s3_bucket}/data", work_dir=tmp_path / "other-machine")
    assert is_finished(load_record(elsewhere, entry.dataset, entry.video_id), small_config)
    before = stamps(remote.url)
    assert publish(elsewhere, small_config) == remote_description  # a rerun rewrites nothing
    assert stamps(remote.url) == before


def test_verify_names_a_corrupted_object(s3_bucket, video_dir, entry, small_config, tmp_path):
    root = DataRoot(f"{s3_bucket}/data", work_dir=tmp_path / "work")
    description = curate_small(root, entry, video_dir / "walk.mp4", small_config)
    shard = description["shards"][0]["path"]
    data = bytearray(root.read_bytes(root.root / shard))
    data[len(data) // 2] ^= 0xFF
    fs, key = objectstore.filesystem(root.address(root.root / shard))
    fs.pipe_file(key, bytes(data))
    assert verify_dataset(root) == [f"{shard}: sha256 mismatch (file changed or corrupted since publishing)"]


def test_no_credentials_in_anything_written(s3_env, s3_bucket, video_dir, entry, small_config, tmp_path):
    root = DataRoot(f"{s3_bucket}/data", work_dir=tmp_path / "work")
    curate_small(root, entry, video_dir / "walk.mp4", small_config)
    written = list(objects(root.url).values()) + [p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()]
    assert len(written) > 5
    for secret in (s3_env["AWS_ACCESS_KEY_ID"], s3_env["AWS_SECRET_ACCESS_KEY"]):
        assert not any(secret.encode() in data for data in written)


def _batches(manifest: str | Path, workers: int, count: int) -> list[dict]:
    cfg = load_train_config(
        overrides={"data": {"batch_size": 2, "shuffle_buffer": 8, "height": 64, "width": 96, "num_workers": workers}}
    )
    frame = load_manifests([manifest], "train", cfg.data.filters)
    check_shards(frame)
    stream = ShardStream(EpochPlan(frame, cfg.data), cfg.data)
    return list(itertools.islice(make_loader(stream), count))


def _assert_same_batches(local: list[dict], remote: list[dict]) -> None:
    assert len(local) == len(remote) > 0
    for a, b in zip(local, remote):
        assert a["sample_id"] == b["sample_id"] and a.keys() == b.keys()
        for key, value in a.items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(value.nan_to_num(-1), b[key].nan_to_num(-1)), key


def test_trainer_streams_an_object_store_manifest_from_forked_workers(
    s3_bucket, video_dir, entry, small_config, tmp_path
):
    remote = DataRoot(f"{s3_bucket}/data", work_dir=tmp_path / "work")
    local = DataRoot(tmp_path / "local")
    curate_small(remote, entry, video_dir / "walk.mp4", small_config)
    curate_small(local, entry, video_dir / "walk.mp4", small_config)
    manifest = remote.address(remote.manifest("test"))
    assert data_root_of(manifest) == remote.url
    # Two DataLoader workers fork after this process has used the store: each opens its own filesystem.
    _assert_same_batches(_batches(local.manifest("test"), 2, 6), _batches(manifest, 2, 6))


@pytest.mark.slow
def test_demo_flow_on_an_object_store_matches_local_disk(
    demo_run, demo_sources, s3_env, s3_bucket, s3_server, tmp_path, monkeypatch
):
    """The demo flow with an s3:// data root: same shards, same manifest, same training samples as on disk;
    a rerun writes nothing; the credentials appear nowhere."""
    from prefect import get_client

    from flows.curate import curate

    url = f"{s3_bucket}/demo"
    monkeypatch.setenv(WORK_DIR_ENV, str(tmp_path / "work"))
    remote, local = DataRoot(url), DataRoot(demo_run)
    assert remote.root.is_relative_to(tmp_path / "work")
    shutil.copytree(demo_sources, remote.root / "demo_sources")  # rendered once per session
    result = curate(demo=True, data_root=url)
    assert result["data_root"] == url and result["counts"]["videos"]["ok"] == 6

    local_description = json.loads(local.dataset_json.read_text())
    description = json.loads(remote.read_bytes(remote.dataset_json))
    assert description["shards"] == local_description["shards"]  # paths, rows, sizes and sha256 of every shard
    assert description["counts"] == local_description["counts"]
    parts = sorted(local.manifest("demo").glob("*.parquet"))
    assert parts and all(remote.read_bytes(remote.root / local.relative(p)) == p.read_bytes() for p in parts)
    assert verify_dataset(remote) == []
    _assert_same_batches(
        _batches(local.manifest("demo"), 2, 8), _batches(remote.address(remote.manifest("demo")), 2, 8)
    )

    before = stamps(url)
    with recorded(s3_server) as log:
        rerun = curate(demo=True, data_root=url)
    assert all(v["skipped"] for v in rerun["videos"])
    writes = [r for r in log if r["method"] in {"PUT", "POST", "DELETE"}]
    # Nothing written, copied or removed but the leases each video and the publish take (and give back).
    assert writes and all("/state/leases/" in r["url"] for r in writes), [r["url"] for r in writes]
    assert stamps(url) == before

    with get_client(sync_client=True) as client:
        logs = "\n".join(log.message for log in _all(client.read_logs))
        artifacts = json.dumps([a.model_dump(mode="json") for a in _all(client.read_artifacts)])
    assert f"into {url}" in logs  # the flow runs' logs as the server keeps them, naming the data root
    assert url in artifacts  # the contact-sheet links point into the bucket
    written = [
        logs.encode(),
        artifacts.encode(),
        *objects(url).values(),
        *(p.read_bytes() for p in remote.root.rglob("*") if p.is_file() and "demo_sources" not in p.parts),
    ]
    for secret in (s3_env["AWS_ACCESS_KEY_ID"], s3_env["AWS_SECRET_ACCESS_KEY"]):
        assert not any(secret.encode() in data for data in written), secret


def _all(read, page: int = 200) -> list:
    """Every record a Prefect client `read_*` method pages through."""
    found: list = []
    while batch := read(limit=page, offset=len(found)):
        found += batch
    return found


def test_runs_on_two_machines_share_the_leases_in_the_bucket(s3_bucket, http_root, small_config, tmp_path):
    """The video leases of an S3 root are objects in the bucket: a run on another machine (another working
    directory) sees a live one and leaves the video to it, and takes over a stale one."""
    from pipeline.driver import curate_entries
    from pipeline.io.lease import lease_owner
    from pipeline.sources.catalog import CatalogEntry

    walk = CatalogEntry(video_id="walk", url=f"{http_root}/walk.mp4", dataset="test", category="natural")
    machine_a = DataRoot(f"{s3_bucket}/data", work_dir=tmp_path / "a")
    machine_b = DataRoot(f"{s3_bucket}/data", work_dir=tmp_path / "b")
    lease = machine_a.video_lease("test", "walk")
    assert lease == f"{s3_bucket}/data/state/leases/test/walk.lease"
    fs, key = fsspec.core.url_to_fs(str(lease))
    fs.pipe_file(key, json.dumps({"owner": "machine-a-1-cafe", "since": 0}).encode())  # a's live run holds it
    cfg = small_config.model_copy(update={"run": small_config.run.model_copy(update={"lease_stale_s": 3.0})})
    (busy,) = curate_entries([walk], machine_b, cfg).videos
    assert busy.status == "busy" and load_record(machine_b, "test", "walk") is None
    # Machine a's run died: after the stale time (the store's clock) machine b takes the video over.
    import time

    time.sleep(4.5)
    (done,) = curate_entries([walk], machine_b, cfg).videos
    assert done.status == "ok" and is_finished(load_record(machine_a, "test", "walk"), cfg)
    assert lease_owner(lease) is None  # released: no lease object left in the bucket
