"""Per-video intrinsics with COLMAP: a synthetic video of known focal length, failures as named reasons, publish."""

from __future__ import annotations

import dataclasses
import json

import cv2
import pyarrow.parquet as pq
import pytest

from pipeline.config import IntrinsicsConfig, load_config
from pipeline.corpus.intrinsics import FAILED, TOO_FEW_FRAMES, estimate_from_jpegs, estimate_video
from pipeline.corpus.publish import publish
from pipeline.io.data_root import DataRoot
from pipeline.sources.catalog import CatalogEntry
from pipeline.synthetic.renderer import SceneSpec, normalized_intrinsics, render_frames, render_video
from pipeline.video.ingest import ingest_video

# Forward motion with a stronger sway than the default scene: COLMAP needs some rotation and baseline.
SPEC = SceneSpec(width=320, height=180, fps=10.0, duration_s=4.0, seed=1, speed_mps=6.0, yaw_amplitude_deg=10.0)
FOCAL_TOLERANCE = 0.10  # relative; measured on this scene: 0.4% with all 36 frames, 7% with the first 30
SETTINGS = {"enabled": True, "min_frames": 10}


@pytest.fixture(scope="module")
def curated(tmp_path_factory):
    """One synthetic video of known intrinsics, ingested as a single clip, with its camera estimated."""
    directory = tmp_path_factory.mktemp("intrinsics")
    video = render_video(SPEC, directory / "canyon.mp4")
    cfg = load_config(
        overrides={
            "sample": {"fps": 10, "max_height": 180, "trim": {"head_s": 0.2, "tail_s": 0.2}, "decimate": None},
            "split": {"train_fraction": 1.0, "gap_frames": 0},
            "intrinsics": SETTINGS,
        }
    )
    root = DataRoot(directory / "root")
    entry = CatalogEntry(video_id="canyon", url="http://127.0.0.1/canyon.mp4", dataset="test", category="driving")
    record = ingest_video(entry, video, root, cfg)
    assert record.status == "ok", record
    camera, computed = estimate_video(root, record, cfg.intrinsics)
    return root, cfg, entry, video, record, camera, computed


def test_focal_length_within_tolerance_of_the_truth(curated):
    *_, record, camera, computed = curated
    fx, fy, cx, cy = normalized_intrinsics(SPEC)
    assert computed and camera["status"] == "ok", camera
    assert camera["fx"] == pytest.approx(fx, rel=FOCAL_TOLERANCE)
    assert camera["fy"] == pytest.approx(fy, rel=FOCAL_TOLERANCE)
    assert camera["fx"] * camera["width"] == pytest.approx(camera["fy"] * camera["height"])  # one focal length
    assert (camera["cx"], camera["cy"]) == pytest.approx((cx, cy), abs=0.05)
    assert abs(camera["k1"]) < 0.1  # the renderer is a pinhole
    assert camera["registered"] >= 0.5 * camera["frames"] and camera["frames"] == record.frames_kept
    assert camera["model"] == "SIMPLE_RADIAL" and "skew" not in camera


def test_a_current_estimate_is_not_redone(curated):
    root, cfg, _, _, record, camera, _ = curated
    path = root.camera("test", "canyon")
    before = path.stat().st_mtime_ns
    again, computed = estimate_video(root, record, cfg.intrinsics)
    assert not computed and again == camera and path.stat().st_mtime_ns == before


def test_publish_fills_manifest_and_cameras_table(curated):
    root, cfg, *_ = curated
    description = publish(root, cfg)
    manifest = pq.read_table(root.manifest("test")).to_pylist()
    camera = json.loads(root.camera("test", "canyon").read_bytes())
    assert manifest and all(row["intrinsics_source"] == "colmap" for row in manifest)
    for name in ("fx", "fy", "cx", "cy", "k1"):
        assert [row[name] for row in manifest] == pytest.approx([camera[name]] * len(manifest), rel=1e-6)
    cameras = pq.read_table(root.cameras_table).to_pylist()
    assert [(c["video_id"], c["status"], c["k1"]) for c in cameras] == [("canyon", "ok", pytest.approx(camera["k1"]))]
    assert description["counts"]["cameras"] == {"ok": 1}


def test_catalog_intrinsics_take_precedence(curated, tmp_path):
    _, cfg, entry, video, _, camera, _ = curated
    root = DataRoot(tmp_path)
    given = dataclasses.replace(entry, fx=0.9, fy=1.6, cx=0.5, cy=0.5)
    record = ingest_video(given, video, root, cfg)
    # The estimate made from the same frames, current for these shards (COLMAP itself is tested above).
    root.write_bytes(root.camera("test", "canyon"), json.dumps({**camera, "source": record.shards_digest()}).encode())
    assert estimate_video(root, record, cfg.intrinsics)[1] is False
    publish(root, cfg)
    manifest = pq.read_table(root.manifest("test")).to_pylist()
    assert manifest and {(r["k1"], r["intrinsics_source"]) for r in manifest} == {(None, "catalog")}
    assert [r["fx"] for r in manifest] == pytest.approx([0.9] * len(manifest))
    assert [r["fy"] for r in manifest] == pytest.approx([1.6] * len(manifest))
    assert pq.read_table(root.cameras_table)["status"].to_pylist() == ["ok"]  # the estimate is still listed


def test_too_short_a_clip_is_a_named_reason(curated, tmp_path):
    root, cfg, _, _, record, *_ = curated
    settings = IntrinsicsConfig(**{**SETTINGS, "min_frames": 1000})
    camera, computed = estimate_video(root, record, settings)
    assert computed and camera["status"] == TOO_FEW_FRAMES and camera["fx"] is None and camera["error"]


def test_a_view_without_parallax_fails_with_a_named_reason():
    """The same frame over and over: no baseline, no model, every seed tried."""
    image = next(iter(render_frames(SPEC))).image
    jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()
    result = estimate_from_jpegs([jpeg] * 12, IntrinsicsConfig(attempts=2))
    assert result["status"] == FAILED and result["attempts"] == 2 and result["fx"] is None
    assert "seed 0" in result["error"] and "seed 1" in result["error"]


def test_not_in_the_processing_hash():
    base = load_config()
    enabled = load_config(overrides={"intrinsics": SETTINGS})
    assert enabled.processing_hash() == base.processing_hash()  # switching it on re-decodes nothing
    assert enabled.full_hash() != base.full_hash()  # but dataset.json records it
