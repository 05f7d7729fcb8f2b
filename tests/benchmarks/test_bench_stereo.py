"""benchmarks/bench_stereo.py: the speed section on tiny pairs, and the real pairs' alternatives (slow)."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.bench_stereo import (
    _alternating,
    _occluded_side_cue,
    _range_cue,
    _splat_count,
    _true_occlusions,
    real_pairs,
    speed,
)


def test_alternating_runs_every_step_in_turn_and_keeps_each_best():
    calls: list[str] = []
    best = _alternating([lambda: calls.append("flows"), lambda: calls.append("pipeline")], 3)
    assert calls == ["flows", "pipeline"] * 3
    assert len(best) == 2 and all(0 <= t < float("inf") for t in best)


def test_speed_times_whole_batches_and_reports_the_ratio():
    result = speed(160, 96, 3, 1)
    assert result["size"] == "160x96" and result["pairs"] == 3 and result["batch_size"] == 8
    assert result["flow_pairs_per_s"] > 0 and result["pipeline_pairs_per_s"] > 0
    ratio = result["flow_pairs_per_s"] / result["pipeline_pairs_per_s"]
    assert result["pipeline_over_flow"] == pytest.approx(ratio, rel=0.01)
    assert set(result["stages_ms"]) >= {"flows", "checks_and_confidence", "sky", "disparity_png", "confidence_png"}


@pytest.mark.slow
def test_real_pairs_score_every_method_at_every_parallax():
    result = real_pairs()
    assert set(result["flow_ms"]) == {
        "dis_medium_finest_scale_preset",
        "dis_medium_finest_scale_0",
        "dis_medium_finest_scale_0_patch_6",
    }
    names = ("native", "large", "movie", "aloe", "aloe_movie")
    assert set(names) <= set(result)
    for name in (name for name in names if result[name] != "absent"):  # Aloe only where opencv-doc is installed
        rows = result[name]
        for method in (
            "pipeline_midas",
            "pipeline_midas_finest_scale_0",
            "pipeline_midas_accurate",
            "sgbm",
            "fusion_dis_sgbm",
            "dis_seeded_with_truth",
        ):
            assert 0 < rows[method]["density"] <= 1 and 0 <= rows[method]["bad_3"] <= rows[method]["bad_1"] <= 1
        # Agreement with SGBM only removes pixels; a stricter threshold only removes pixels.
        assert rows["fusion_dis_sgbm"]["density"] <= rows["pipeline_midas"]["density"]
        assert rows["pipeline_midas_confidence_0.6"]["density"] <= rows["pipeline_midas"]["density"]
        for curve in rows["tradeoff"].values():  # a rising threshold keeps fewer pixels
            densities = [point["density"] for point in curve]
            assert densities == sorted(densities, reverse=True) and len(curve) >= 5
        assert rows["tradeoff"]["pipeline_midas"][0]["density"] == rows["pipeline_midas"]["density"]


def test_occlusion_cues_find_the_band_a_foreground_bar_hides():
    # Background at disparity 2, a bar at 10 on left columns 40-59: in the right view the bar sits at 30-49 and hides
    # the background left columns 32-39 see. No right pixel lands there, nor on columns 0-1 (out of the right view).
    h, w = 12, 100
    cols = np.arange(w)
    d_left = np.tile(np.where((cols >= 40) & (cols < 60), 10.0, 2.0), (h, 1)).astype(np.float32)
    d_right = np.tile(np.where((cols >= 30) & (cols < 50), 10.0, 2.0), (h, 1))
    flow_rl = np.dstack([d_right, np.zeros((h, w))]).astype(np.float32)
    reached = _splat_count(flow_rl)[h // 2]
    assert set(np.flatnonzero(reached == 0)) == set(range(32, 40)) | {0, 1}
    assert (reached[2:32] >= 1).all() and (reached[40:] >= 1).all()
    assert set(np.flatnonzero(_true_occlusions(d_left)[h // 2])) == set(range(32, 40))
    cue = _range_cue(flow_rl)[h // 2]
    assert (cue[33:39] > 1).all() and (cue[45:] == 0).all()  # over its limit inside the band, nothing past the bar
    # Left-right failures on the band spread right, into the bar's first 4 columns, and not left of it.
    lr_error = np.where(_true_occlusions(d_left), np.float32(8), np.float32(0))
    assert set(np.flatnonzero(_occluded_side_cue(lr_error, 2.0)[h // 2])) == set(range(32, 44))
