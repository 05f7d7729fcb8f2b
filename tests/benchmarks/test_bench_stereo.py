"""benchmarks/bench_stereo.py: the speed section on tiny pairs, and the real pairs' alternatives (slow)."""

from __future__ import annotations

import pytest

from benchmarks.bench_stereo import _alternating, real_pairs, speed


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
