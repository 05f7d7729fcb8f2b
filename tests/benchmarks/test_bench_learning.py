"""benchmarks/bench_learning.py: its dataset plan and seed summaries (fast), and a smoke run of it all (slow)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.bench_learning import compare_to_prior, family_videos, over_seeds, spread

REPO = Path(__file__).resolve().parents[2]


def test_family_videos_hold_out_scenes_and_a_whole_family():
    videos = family_videos(["canyon", "corridor"], "terrain", 2, 1, 2, seconds=10.0, val_seconds=4.0)
    by_set: dict[tuple[str, str], set[str]] = {}
    for v in videos:
        by_set.setdefault((v.dataset, v.split), set()).add(v.spec.family)
    assert by_set == {
        ("synth", "train"): {"canyon", "corridor"},
        ("synth", "val"): {"canyon", "corridor"},
        ("synth_heldout", "val"): {"terrain"},
    }
    assert [v.split for v in videos].count("train") == 4 and len(videos) == 8
    assert len({v.video_id for v in videos}) == len(videos)
    # Each video has a camera of its own: the layout changes within a family too.
    assert len({(v.spec.hfov_deg, v.spec.pitch_deg, v.spec.eye_height_m) for v in videos}) == len(videos)
    assert all(v.spec.duration_s == (10.0 if v.split == "train" else 4.0) for v in videos)
    assert videos == family_videos(["canyon", "corridor"], "terrain", 2, 1, 2, seconds=10.0, val_seconds=4.0)


def test_spread_over_seeds():
    result = over_seeds([{"abs_rel": 0.2, "a1": 0.7}, {"abs_rel": 0.1, "a1": 0.9}, {"abs_rel": 0.3, "a1": 0.8}])
    assert result["abs_rel"] == {"mean": 0.2, "std": 0.0816, "min": 0.1, "max": 0.3, "per_seed": [0.2, 0.1, 0.3]}
    assert result["a1"]["mean"] == 0.8
    assert spread([0.5])["std"] == 0.0


def test_beating_the_layout_prior_needs_a_gap_larger_than_the_seed_spread():
    trained = {"abs_rel": spread([0.10, 0.12, 0.14])}  # spread 0.04
    assert compare_to_prior(trained, {"abs_rel": 0.20}) == {"abs_rel_vs_layout_prior": 0.6, "beats_layout_prior": True}
    assert not compare_to_prior(trained, {"abs_rel": 0.15})["beats_layout_prior"]  # 0.03 below: within the spread
    assert not compare_to_prior(trained, {"abs_rel": 0.10})["beats_layout_prior"]


@pytest.mark.slow  # about a minute on 2 cores: renders, curates and trains 2 seeds of each recipe for a few steps
def test_quick_run_reports_every_baseline_over_seeds(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = tmp_path / "learning.json"
    command = [sys.executable, "-m", "benchmarks.bench_learning", "--quick", "--seeds", "0", "1", "--motion-seeds", "1"]
    command += ["--only", "video", "--only", "motion", "--only", "mixed", "--steps", "3"]
    command += ["--workdir", str(tmp_path / "work")]
    done = subprocess.run([*command, "--out", str(out)], env=env, capture_output=True, text=True, cwd=REPO, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    video = json.loads(out.read_text())["video"]
    for held_out in ("held_out_scenes", "held_out_family"):
        assert len(video["untrained"][held_out]["abs_rel"]["per_seed"]) == 2
        assert len(video["trained_category"][held_out]["abs_rel"]["per_seed"]) == 2
        assert len(video["trained_motion"][held_out]["abs_rel"]["per_seed"]) == 1
        assert len(video["trained_mixed"][held_out]["abs_rel"]["per_seed"]) == 2  # video and stereo batches
        for baseline in ("constant_lsq", "constant_median", "train_mean_disparity_map"):
            assert 0 < video[baseline][held_out]["abs_rel"] < 10
        for name in ("category", "mixed"):
            assert isinstance(video[f"{name}_{held_out}"]["beats_layout_prior"], bool)
    assert len(video["trained_category"]["collapse"]) == 2
    # The rendered depth and motion explain the views better than a flat depth, which beats no warp at all.
    oracle = video["photometric_oracle"]
    assert oracle["true_depth_and_motion"] < oracle["flat_depth_true_motion"] < oracle["no_warp"]
