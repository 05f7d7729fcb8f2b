from __future__ import annotations

import dataclasses
import json

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.io.data_root import DataRoot
from pipeline.io.storage import sha256_file
from pipeline.sources.catalog import CatalogEntry
from pipeline.video.ingest import ingest_video
from pipeline.video.record import VideoRecord, is_finished, load_record


def test_ingest_writes_shards_frames_and_record(video_dir, entry, small_config, tmp_path):
    root = DataRoot(tmp_path)
    record = ingest_video(entry, video_dir / "walk.mp4", root, small_config)
    assert record.status == "ok" and record.error is None
    assert record.frames_decoded == 50 and 0 < record.frames_kept <= 50
    assert record.frames_decoded == record.frames_kept + sum(record.dropped.values())
    (shard,) = record.shards
    assert shard.path == "shards/test/walk/part-00000.parquet"
    assert sha256_file(tmp_path / shard.path) == shard.sha256
    assert pq.ParquetFile(tmp_path / shard.path).metadata.num_rows == record.frames_kept
    assert load_record(root, entry.dataset, entry.video_id) == record
    assert is_finished(load_record(root, entry.dataset, entry.video_id), small_config)
    assert not list(tmp_path.rglob(".*tmp-*"))


def test_changed_processing_settings_mean_not_finished(video_dir, entry, small_config, tmp_path):
    root = DataRoot(tmp_path)
    ingest_video(entry, video_dir / "walk.mp4", root, small_config)
    changed = small_config.model_copy(update={"sample": small_config.sample.model_copy(update={"fps": 5})})
    assert not is_finished(load_record(root, entry.dataset, entry.video_id), changed)
    rerun = ingest_video(entry, video_dir / "walk.mp4", root, changed)
    assert rerun.frames_decoded == 25


def test_bad_file_becomes_a_failure_record_and_clears_old_output(video_dir, entry, small_config, tmp_path):
    root = DataRoot(tmp_path)
    ingest_video(entry, video_dir / "walk.mp4", root, small_config)
    root.embeddings("test", "walk").parent.mkdir(parents=True)
    root.embeddings("test", "walk").write_bytes(b"embeddings of the old shards")
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"\x00" * 1000)
    record = ingest_video(entry, garbage, root, small_config)
    assert record.status == "unreadable_video" and "garbage.mp4" in record.error
    assert not root.shard_dir("test", "walk").exists() and not root.embeddings("test", "walk").exists()
    assert record.retryable is False
    assert is_finished(record, small_config)  # a permanent failure is not retried on rerun


def test_too_short_for_catalog_trims(video_dir, entry, small_config, tmp_path):
    trimmed = dataclasses.replace(entry, trim_start_s=4.0, trim_end_s=3.0)
    record = ingest_video(trimmed, video_dir / "walk.mp4", DataRoot(tmp_path), small_config)
    assert record.status == "too_short" and "6.0s" in record.error


_LIMITED_CHILD = """
import json, resource, signal, sys
from pipeline.sources.catalog import CatalogEntry
from pipeline.config import CurateConfig
from pipeline.video.ingest import ingest_video
from pipeline.io.data_root import DataRoot
# A size limit on the files this process writes: past it a write fails (EFBIG, the signal ignored), the
# portable stand-in for a full disk (ENOSPC, handled the same way) that needs neither root nor a tmpfs.
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[4]), resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
cfg = CurateConfig.model_validate_json(sys.argv[3])
entry = CatalogEntry(video_id="walk", url="file:///walk.mp4", dataset="test", category="natural")
print(ingest_video(entry, sys.argv[1], DataRoot(sys.argv[2]), cfg).to_json().decode())
"""


def test_disk_full_while_writing_a_shard_is_recorded_and_a_rerun_with_space_finishes(
    video_dir, entry, small_config, tmp_path
):
    import subprocess
    import sys

    from pipeline.config import with_overrides

    cfg = with_overrides(small_config, {"write": {"row_group_bytes": 65536}})  # several row groups per shard
    root = DataRoot(tmp_path / "root")
    child = subprocess.run(
        [
            sys.executable,
            "-c",
            _LIMITED_CHILD,
            str(video_dir / "walk.mp4"),
            str(root.root),
            cfg.model_dump_json(),
            str(100_000),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    record = VideoRecord.from_flat(json.loads(child.stdout))
    assert record.status == "disk_full" and "File too large" in record.error and record.retryable
    assert not list(root.root.rglob("*.parquet")) and not list(root.root.rglob(".*tmp-*"))  # nothing partial
    assert not is_finished(load_record(root, entry.dataset, entry.video_id), cfg)
    rerun = ingest_video(entry, video_dir / "walk.mp4", root, cfg)
    clean = ingest_video(entry, video_dir / "walk.mp4", DataRoot(tmp_path / "clean"), cfg)
    assert rerun.status == "ok" and rerun.shards == clean.shards
    assert sum(part.bytes for part in rerun.shards) > 100_000  # the limit did cut a shard short


@pytest.mark.parametrize(
    "size, layout, max_height, expected",
    [
        ("121x67", "mono", 96, (121, 67)),  # odd and kept as it is
        ("121x67", "mono", 48, (86, 48)),  # odd, resized to an even width
        ("243x97", "sbs_full", 200, None),  # side by side with an odd total width: halves of 121.5 px
    ],
)
def test_odd_frame_sizes(video_dir, small_config, tmp_path, size, layout, max_height, expected):
    import subprocess

    from pipeline.config import with_overrides
    from pipeline.synthetic.renderer import SceneSpec, render_stereo_video

    if layout == "mono":
        source = video_dir / "walk.mp4"
    else:
        source = render_stereo_video(
            SceneSpec(width=160, height=96, fps=20.0, duration_s=3.0, seed=14, baseline_m=0.3),
            tmp_path / "sbs.mp4",
            layout="sbs_full",
        )
    odd = tmp_path / f"odd_{size}.mp4"  # 4:4:4, since 4:2:0 H.264 cannot carry odd sizes
    subprocess.run(
        [
            "ffmpeg",
            "-nostdin",
            "-loglevel",
            "error",
            "-i",
            str(source),
            "-vf",
            f"scale={size.replace('x', ':')}",
            "-c:v",
            "libx264",
            "-pix_fmt",
            "yuv444p",
            str(odd),
        ],
        check=True,
    )
    cfg = with_overrides(
        small_config,
        {"sample": {"max_height": max_height}, "stereo": {"crop": None, "output_size": None, "jump_s": 1.0}},
    )
    odd_entry = CatalogEntry(video_id="odd", url="file:///odd.mp4", dataset="test", category="natural", layout=layout)
    record = ingest_video(odd_entry, odd, DataRoot(tmp_path / "root"), cfg)
    assert record.status == "ok" and (record.info.width, record.info.height) == tuple(map(int, size.split("x")))
    assert record.frames_decoded == record.frames_kept + sum(record.dropped.values())  # every frame accounted for
    if expected:
        rows = pq.read_table(tmp_path / "root" / record.shards[0].path, columns=["width", "height"]).to_pylist()
        assert rows and all((r["width"], r["height"]) == expected for r in rows)


def test_temporaries_of_a_killed_video_are_cleared_and_other_videos_are_spared(
    video_dir, entry, small_config, tmp_path
):
    from pipeline.io.storage import temp_path_for

    root = DataRoot(tmp_path)
    record, preview = root.video_record("test", "walk"), root.preview("test", "walk")
    ours = [
        temp_path_for(record),
        temp_path_for(preview),
        temp_path_for(root.shard_dir("test", "walk") / "part-00000.parquet"),
    ]
    other = temp_path_for(root.video_record("test", "other"))  # another video's writer, maybe live
    for tmp in [*ours, other]:
        tmp.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(b"left by a kill")
    assert ingest_video(entry, video_dir / "walk.mp4", root, small_config).status == "ok"
    assert not [tmp for tmp in ours if tmp.exists()] and other.exists()


def _kept(root: DataRoot, record: VideoRecord) -> dict[int, np.ndarray]:
    """Kept frames by frame index, decoded from their shard JPEGs."""
    table = pq.read_table(root.root / record.shards[0].path, columns=["frame_index", "image"])
    return {
        int(index): cv2.imdecode(np.frombuffer(image, np.uint8), cv2.IMREAD_COLOR)
        for index, image in zip(table["frame_index"].to_pylist(), table["image"].to_pylist())
    }


def test_damaged_mp4_keeps_no_smeared_frame(damaged_media, small_config, tmp_path):
    entry = CatalogEntry(video_id="v", url="http://127.0.0.1/v.mp4", dataset="test", category="natural")
    cfg = small_config.model_copy(update={"sample": small_config.sample.model_copy(update={"max_height": 180})})
    clean_root, damaged_root = DataRoot(tmp_path / "clean"), DataRoot(tmp_path / "damaged")
    clean = ingest_video(entry, damaged_media["clean"], clean_root, cfg)
    damaged = ingest_video(entry, damaged_media["overwritten"], damaged_root, cfg)
    assert damaged.status == "ok" and damaged.dropped["decode_error"] > 0
    assert damaged.warning is not None and "marked damaged" in damaged.warning
    frames = pq.read_table(damaged_root.root / damaged.frame_parts[0].path).to_pandas()
    assert (frames.loc[frames.drop_reason == "decode_error", "kept"] == False).all()  # noqa: E712
    reference = _kept(clean_root, clean)
    kept = _kept(damaged_root, damaged)
    assert kept
    for index, image in kept.items():
        # Beside the JPEG loss, a kept frame is the clean picture (smeared ones are 12-15 levels off).
        assert np.abs(image.astype(int) - reference[index]).mean() < 2.0, index


def test_file_cut_short_is_planned_on_its_data(damaged_media, small_config, tmp_path):
    entry = CatalogEntry(video_id="v", url="http://127.0.0.1/v.mp4", dataset="test", category="natural")
    root = DataRoot(tmp_path)
    record = ingest_video(entry, damaged_media["cut"], root, small_config)
    assert record.status == "ok"
    assert record.info is not None and record.info.duration_s == pytest.approx(6.0, abs=0.1)
    cut_at = record.info.truncated_at_s
    assert cut_at is not None and 2.0 < cut_at < 5.0
    assert record.warning is not None and "cut short" in record.warning
    trim = small_config.sample.trim
    assert record.trim_end_s == pytest.approx(min(trim.tail_s, trim.max_fraction * cut_at))  # scaled to the data
    frames = pq.read_table(root.root / record.frame_parts[0].path).to_pandas()
    # The split boundary follows the data: the validation split is not empty, as it was when planned on 6 s.
    assert (frames.split == "val").sum() > 0
    assert frames.timestamp_s.max() < cut_at


def test_interlaced_source_is_deinterlaced_before_sampling(damaged_media, small_config, tmp_path):
    from pipeline.media.decode import FrameReader

    entry = CatalogEntry(video_id="v", url="http://127.0.0.1/v.mp4", dataset="test", category="natural")
    cfg = small_config.model_copy(update={"sample": small_config.sample.model_copy(update={"max_height": 180})})
    root = DataRoot(tmp_path)
    record = ingest_video(entry, damaged_media["interlaced"], root, cfg)
    assert record.status == "ok" and record.info is not None and record.info.field_order == "tt"
    kept = _kept(root, record)
    woven = {
        f.index: f.image
        for f in FrameReader(damaged_media["interlaced"], fps=10, start_s=0.0, end_s=6.0, size=(320, 180))
    }

    def combing(image: np.ndarray) -> float:
        gray = image.astype(float).mean(axis=2)
        return float(np.abs(gray[1:-1] - gray[:-2]).mean() - np.abs(gray[2:] - gray[:-2]).mean() / 2)

    assert kept
    assert np.median([combing(i) for i in kept.values()]) < 0.5 * np.median([combing(woven[i]) for i in kept])
