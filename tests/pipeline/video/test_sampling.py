from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.config import load_config
from pipeline.errors import VideoError
from pipeline.io.parquet_writer import PartWriter
from pipeline.media.probe import VideoInfo, probe_video
from pipeline.schema import FRAME_STATS_SCHEMA, SHARD_SCHEMA
from pipeline.video.sampling import plan_sampling, sample_id, sample_video


def _info(duration: float, width: int = 1280, height: int = 720, rotation: int = 0) -> VideoInfo:
    return VideoInfo(
        duration_s=duration,
        fps=30.0,
        width=width,
        height=height,
        codec="h264",
        rotation=rotation,
        variable_frame_rate=False,
        container="mp4",
    )


def test_default_trims_are_slowtvs_on_long_videos(entry):
    plan = plan_sampling(_info(3600), entry, load_config())
    assert (plan.start_s, plan.end_s) == (300, 3300)
    assert plan.size == (1280, 720)
    assert plan.boundary_s == pytest.approx(300 + 0.9 * 3000)
    assert plan.gap_s == pytest.approx(10.0)  # 100 frames at 10 fps


def test_default_trims_shrink_for_short_videos(entry):
    plan = plan_sampling(_info(60), entry, load_config())
    assert (plan.start_s, plan.end_s) == pytest.approx((6.0, 54.0))


def test_split_gap_and_dedup_separation_keep_their_defaults_on_long_videos(entry):
    applied = plan_sampling(_info(3600), entry, load_config()).applied()
    assert (applied.split_gap_frames, applied.dedup_separation_s) == (100, 60.0)
    assert (applied.trim_start_s, applied.trim_end_s) == (300, 300)


def test_split_gap_and_dedup_separation_shrink_for_short_videos(entry):
    # 20 s, trimmed to 16 s = 160 frames at 10 fps: the 100-frame gap on each side would have eaten all of it.
    plan = plan_sampling(_info(20), entry, load_config())
    assert plan.applied().split_gap_frames == 8  # 5% of 160
    assert plan.applied().dedup_separation_s == pytest.approx(8.0)  # half of 16 s
    assert plan.gap_s == pytest.approx(0.8)
    frames = np.arange(plan.start_s, plan.end_s, plan.frame_s)
    in_gap = np.abs(frames - plan.boundary_s + plan.frame_s / 2) < plan.gap_s
    assert 0 < in_gap.sum() < 0.15 * len(frames)


def test_a_file_cut_short_is_planned_on_its_data(entry):
    info = dataclasses.replace(_info(3600), truncated_at_s=1200.0)
    plan = plan_sampling(info, entry, load_config())
    assert (plan.start_s, plan.end_s) == (120, 1080)  # trims shrink to 10% of the 1200 s of data, not of 3600 s
    assert plan.boundary_s == pytest.approx(120 + 0.9 * 960)


def test_catalog_trims_are_honoured_and_too_short_is_named(entry):
    explicit = dataclasses.replace(entry, trim_start_s=20.0, trim_end_s=5.0)
    plan = plan_sampling(_info(60), explicit, load_config())
    assert (plan.start_s, plan.end_s) == (20.0, 55.0)
    with pytest.raises(VideoError) as err:
        plan_sampling(_info(20), explicit, load_config())
    assert err.value.reason == "too_short" and "catalog trims" in err.value.message


def test_resize_keeps_aspect_and_rotation(entry):
    cfg = load_config(overrides={"sample": {"max_height": 360}})
    assert plan_sampling(_info(100), entry, cfg).size == (640, 360)
    assert plan_sampling(_info(100, rotation=90), entry, cfg).size == (202, 360)  # portrait after rotation
    assert plan_sampling(_info(100, width=320, height=180), entry, cfg).size == (320, 180)  # never upscaled


def _run(video, entry, cfg, tmp_path):
    shards = PartWriter(tmp_path / "shards", SHARD_SCHEMA)
    frames = PartWriter(tmp_path / "frames", FRAME_STATS_SCHEMA, prefix="frames")
    info = probe_video(video)
    plan = plan_sampling(info, entry, cfg, stereo=entry.layout != "mono")
    counts = sample_video(video, entry, info, plan, cfg, shards, frames)
    shards.close(), frames.close()
    return (
        counts,
        pq.read_table(tmp_path / "shards" / "part-00000.parquet").to_pylist(),
        pq.read_table(tmp_path / "frames" / "frames-00000.parquet").to_pylist(),
    )


def test_every_decoded_frame_is_accounted_for(video_dir, entry, small_config, tmp_path):
    counts, shard_rows, frame_rows = _run(video_dir / "walk.mp4", entry, small_config, tmp_path)
    assert counts.decoded == len(frame_rows) == 50  # 6 s - 2 x 0.5 s at 10 fps
    assert counts.kept == len(shard_rows) == sum(r["kept"] for r in frame_rows)
    assert counts.decoded == counts.kept + sum(counts.dropped.values())
    assert all((r["drop_reason"] is None) == r["kept"] for r in frame_rows)
    # the split gap: 2 frames either side of the boundary at 0.5 + 0.8 * 5 = 4.5 s
    gap = [r["timestamp_s"] for r in frame_rows if r["drop_reason"] == "split_gap"]
    assert gap == pytest.approx([4.3, 4.4, 4.5, 4.6])
    assert {r["split"] for r in shard_rows if r["timestamp_s"] < 4.5} == {"train"}
    assert {r["split"] for r in shard_rows if r["timestamp_s"] > 4.5} == {"val"}


def test_shard_rows_are_ordered_decodable_jpegs(video_dir, entry, small_config, tmp_path):
    _, shard_rows, _ = _run(video_dir / "walk.mp4", entry, small_config, tmp_path)
    indices = [r["frame_index"] for r in shard_rows]
    assert indices == sorted(indices)
    row = shard_rows[3]
    image = cv2.imdecode(np.frombuffer(row["image"], np.uint8), cv2.IMREAD_COLOR)
    assert image.shape == (row["height"], row["width"], 3) == (96, 160, 3)
    assert row["sample_id"] == sample_id("test", "walk", row["frame_index"])
    assert row["motion"] is not None and row["motion"] > small_config.filters.static_max_motion


def test_clips_never_cross_a_cut(video_dir, entry, small_config, tmp_path):
    cfg = load_config(overrides={**small_config.model_dump(), "split": {"train_fraction": 1.0, "gap_frames": 0}})
    counts, _, frame_rows = _run(video_dir / "cut.mp4", entry, cfg, tmp_path)
    clip_at = {round(r["timestamp_s"], 1): r["clip_id"] for r in frame_rows}
    assert counts.clips == 2
    assert clip_at[2.9] == 0 and clip_at[3.0] == 1


def test_decimation_keeps_n_every_m_and_starts_new_clips(video_dir, entry, small_config, tmp_path):
    cfg = load_config(
        overrides={
            **small_config.model_dump(),
            "sample": {**small_config.sample.model_dump(), "decimate": {"keep": 10, "every": 25}},
        }
    )
    counts, _, frame_rows = _run(video_dir / "walk.mp4", entry, cfg, tmp_path)
    decimated = [r for r in frame_rows if r["drop_reason"] == "decimated"]
    assert len(decimated) == 15 + 15  # frames 10..24 and 35..49 of the 50
    assert counts.clips >= 2
    assert len({r["clip_id"] for r in frame_rows if r["kept"]}) >= 2


def test_static_camera_frames_are_dropped(tmp_path, entry, small_config):
    from pipeline.synthetic.renderer import SceneSpec, render_video

    video = render_video(
        SceneSpec(width=160, height=96, fps=10, duration_s=4, speed_mps=0, yaw_amplitude_deg=0, seed=7),
        tmp_path / "tripod.mp4",
    )
    counts, shard_rows, _ = _run(video, entry, small_config, tmp_path)
    # The train clip's first frame survives; its other frames are static. The val clip's frames are the same
    # picture more than half the clip later (the dedup separation scaled to a 3 s video): duplicates.
    assert counts.kept == 1 and counts.dropped["duplicate"] >= 1 and counts.dropped["static"] >= 10
    assert counts.dropped["static"] + counts.dropped["duplicate"] == counts.decoded - 1 - counts.dropped["split_gap"]
