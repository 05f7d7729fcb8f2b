"""benchmarks/bench_variants.py: its paired verdicts and dataset (fast), and a smoke run (slow)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.bench_learning import family_videos, with_objects
from benchmarks.bench_variants import merge, verdict, versus_baseline

REPO = Path(__file__).resolve().parents[2]


def test_verdict_needs_every_seed_on_one_side():
    assert verdict([0.9, 0.95, 0.99]) == "helps"
    assert verdict([1.1, 1.01, 1.2]) == "hurts"
    assert verdict([0.9, 1.05, 0.8]) == "unclear"
    assert verdict([0.9, 1.0]) == "unclear"  # a tie is not a win


def test_versus_baseline_pairs_runs_of_the_same_seed():
    def run(overall: float, moving: float) -> dict:
        regions = {"overall": {"abs_rel": overall}, "moving": {"abs_rel": moving}}
        return {**regions, "moving_world": {"abs_rel": float("nan")}, "with_camera": {}, "held_out_family": {}}

    runs = {
        "baseline": [run(0.40, 0.8), run(0.20, 0.4)],
        "zoom": [run(0.36, 0.9), run(0.19, 0.3)],
    }
    result = versus_baseline(runs)["zoom"]
    # Seed by seed: 0.36 / 0.40 and 0.19 / 0.20, not the ratio of the means.
    assert result["overall"]["per_seed"] == [0.9, 0.95] and result["overall"]["verdict"] == "helps"
    assert result["moving"]["per_seed"] == [1.125, 0.75] and result["moving"]["verdict"] == "unclear"
    assert "moving_world" not in result and "with_camera" not in result  # no such pixels: no ratio
    assert result["seeds"] == 2


def test_merge_keeps_both_levels_of_config_sections():
    base = {"data": {"seed": 2}}
    assert merge(base, {"data": {"augment": {"resize_prob": 0.5}}, "loss": {"x": 1}}) == {
        "data": {"seed": 2, "augment": {"resize_prob": 0.5}},
        "loss": {"x": 1},
    }
    assert base == {"data": {"seed": 2}}


def test_objects_are_added_to_the_scene_and_nothing_else():
    video = family_videos(["terrain"], "corridor", 1, 0, 0, seconds=10.0, val_seconds=4.0)[0]
    assert video.spec.objects == ()
    moved = with_objects(video)
    assert len(moved.spec.objects) > 2 and any(o.attached for o in moved.spec.objects)
    assert (moved.video_id, moved.split, moved.spec.hfov_deg, moved.spec.family) == (
        video.video_id,
        video.split,
        video.spec.hfov_deg,
        video.spec.family,
    )


@pytest.mark.slow  # about a minute on 2 cores: renders, curates and trains two variants for a few steps
def test_quick_run_reports_variants_over_seeds_against_the_baseline(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = tmp_path / "variants.json"
    command = [sys.executable, "-m", "benchmarks.bench_variants", "--quick", "--seeds", "0", "1", "--steps", "2"]
    command += ["--only", "aquanet", "--workdir", str(tmp_path / "work"), "--out", str(out)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=REPO, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert set(result["variants"]) == {"baseline", "aquanet"}
    assert result["setup"]["trained_on"] == ["synth", "synth3d"]
    baseline = result["variants"]["baseline"]
    assert len(baseline["overall"]["abs_rel"]["per_seed"]) == 2
    assert 0 < baseline["held_out_family"]["abs_rel"]["mean"] < 10
    assert baseline["pixel_share"]["moving"] > 0  # the trained families' held-out videos carry moving objects
    assert result["vs_baseline"]["aquanet"]["overall"]["verdict"] in ("helps", "hurts", "unclear")
