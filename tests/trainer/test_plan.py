"""The epoch plan: every sample once per epoch across ranks and workers, equal steps, supports in clips."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from trainer.config import SupportConfig, load_train_config
from trainer.manifest import load_manifests
from trainer.plan import EpochPlan, steps_per_epoch, support_ranges


@pytest.fixture(scope="module")
def manifests(train_root):
    return [str(train_root / "manifest" / "mono.parquet"), str(train_root / "manifest" / "stereo.parquet")]


def make_plan(manifests, split="train", **data) -> EpochPlan:
    cfg = load_train_config(overrides={"data": {"batch_size": 2, "shuffle_buffer": 8, **data}})
    return EpochPlan(load_manifests(manifests, split, cfg.data.filters), cfg.data)


def clip_keys(plan: EpochPlan, rows: np.ndarray) -> list[tuple]:
    return list(map(tuple, plan.frame.loc[rows, ["root", "dataset", "video_id", "clip_id"]].to_numpy()))


def test_no_sample_twice_in_an_epoch_across_two_ranks_of_two_workers(manifests):
    plan = make_plan(manifests)
    epoch = plan.epoch(0, 4)
    targets = np.concatenate([b.targets for worker in epoch for b in worker])
    assert len(targets) == len(set(targets.tolist())) > 0
    assert plan.eligible[targets].all()
    # What is left out is less than one batch per worker and source.
    assert plan.eligible.sum() - len(targets) < 4 * len(plan.sources) * 2
    assert len({len(worker) for worker in epoch}) == 1  # equal steps everywhere: no DDP hang
    sources = [[b.source for b in worker] for worker in epoch]
    assert all(s == sources[0] for s in sources)  # every rank trains the same kind at the same step
    assert {plan.sources[s][1] for s in sources[0]} == {"video", "stereo"}
    assert steps_per_epoch(epoch) == len(epoch[0])


def test_epochs_reshuffle_but_are_reproducible(manifests):
    plan = make_plan(manifests)
    first = [b.targets.tolist() for b in plan.epoch(0, 2)[0]]
    assert first == [b.targets.tolist() for b in make_plan(manifests).epoch(0, 2)[0]]
    assert first != [b.targets.tolist() for b in plan.epoch(1, 2)[0]]


def test_supports_stay_inside_the_clip_and_the_category_range(manifests):
    plan = make_plan(manifests)
    video = np.flatnonzero(plan.eligible & (plan.frame["kind"] == "video").to_numpy())
    for u in (0.0, 0.3, 0.99):
        before, after = plan.supports(video, u)
        assert clip_keys(plan, before) == clip_keys(plan, video) == clip_keys(plan, after)
        k = video - before
        assert (after - video == k).all() and (k >= 1).all()
        assert (k <= plan.k_range[video, 1]).all()
    driving = video[(plan.frame.loc[video, "category"] == "driving").to_numpy()]
    assert len(driving) and (plan.supports(driving, 0.99)[0] == driving - 1).all()  # SlowTV: driving k = 1
    natural = video[(plan.frame.loc[video, "category"] == "natural").to_numpy()]
    assert driving.size and (natural - plan.supports(natural, 0.99)[0]).max() > 1


def test_motion_rule_gives_slow_clips_larger_offsets():
    frame = pd.DataFrame(
        {
            "root": "r",
            "dataset": "d",
            "video_id": "v",
            "category": "natural",
            "clip_id": [0] * 4 + [1] * 4 + [2] * 2,
            "motion": [np.nan, 0.01, 0.01, 0.01, np.nan, 0.001, 0.001, 0.001, np.nan, np.nan],
        }
    )
    cfg = SupportConfig(mode="motion", target_px=(4.0, 12.0), motion_k_cap=10)
    ranges = support_ranges(frame, cfg, train_width=320)
    assert ranges[0].tolist() == [1, 3]  # 3.2 px per step: 3 steps stay under 12 px
    assert ranges[4].tolist() == [1, 10]  # 0.32 px per step: capped
    assert ranges[8].tolist() == [1, 5]  # no motion recorded: the category rule
    assert support_ranges(frame, SupportConfig(), 320)[0].tolist() == [1, 5]


def test_motion_rule_reaches_the_lower_target_and_keeps_small_offsets():
    """k_high is at least the first offset past target_px[0], even past target_px[1]; k_low is always 1 (issue 18:
    offsets of target_px[0] and more only let a net that starts with its translation reversed settle there)."""
    frame = pd.DataFrame(
        {
            "root": "r",
            "dataset": "d",
            "video_id": "v",
            "category": "natural",
            "clip_id": [0] * 3 + [1] * 3,
            "motion": [np.nan, 0.0075, 0.0075, np.nan, 0.05, 0.05],  # 2.4 and 16 px per step at 320
        }
    )
    ranges = support_ranges(frame, SupportConfig(mode="motion", target_px=(6.0, 7.0)), train_width=320)
    assert ranges[0].tolist() == [1, 3]  # 2 steps stay under 7 px but miss 6 px: 3 steps reach it
    assert ranges[3].tolist() == [1, 1]  # one step is already past both


def test_motion_mode_draws_offsets_from_one(manifests):
    plan = make_plan(manifests, support={"mode": "motion", "target_px": [40.0, 80.0]})
    video = np.flatnonzero(plan.eligible & (plan.frame["kind"] == "video").to_numpy())
    assert (plan.k_range[video, 0] == 1).all() and (plan.k_range[video, 1] > 1).any()
    assert (video - plan.supports(video, 0.0)[0] == 1).all()
    k = video - plan.supports(video, 0.99)[0]
    assert (k > 1).any() and (k <= plan.k_range[video, 1]).all()


def test_mix_weights_set_the_share_of_batches(manifests):
    natural = make_plan(manifests).epoch(0, 1)[0]
    only_mono = make_plan(manifests, mix={"mono": 1.0, "stereo": 0.0}).epoch(0, 1)[0]
    assert only_mono and {b.source for b in only_mono} == {0}
    even = make_plan(manifests, mix={"mono": 1.0, "stereo": 1.0}).epoch(0, 1)[0]
    counts = np.bincount([b.source for b in even], minlength=2)
    assert counts[0] == counts[1] > 0
    assert len(even) <= len(natural)
    with pytest.raises(ValueError, match="not in the manifests"):
        make_plan(manifests, mix={"nope": 1.0}).epoch(0, 1)


def test_filters_select_rows(manifests):
    plan = make_plan(manifests, filters={"categories": ["driving"]})
    assert set(plan.frame["category"]) == {"driving"}
    plan = make_plan(manifests, filters={"datasets": ["stereo"], "ranges": {"lr_pass_fraction": [0.5, None]}})
    assert set(plan.frame["kind"]) == {"stereo"} and (plan.frame["lr_pass_fraction"] >= 0.5).all()
    assert set(make_plan(manifests, split="val").frame["split"]) == {"val"}
