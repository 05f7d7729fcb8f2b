"""Tests for pipeline.video.shots: the streaming cut detector on real decodes and on controlled frames."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.config import ShotConfig
from pipeline.media.decode import FrameReader
from pipeline.video.shots import CutDetector

CFG = ShotConfig()


def _cuts(frames, cfg: ShotConfig = CFG) -> list[int]:
    detector = CutDetector(cfg)
    return [i for i, image in enumerate(frames) if detector.update(image)]


def _grey(level: int, shape=(24, 32)) -> np.ndarray:
    """A flat grey BGR frame: hue and saturation 0, value = level, so scores are |dV| / 3."""
    return np.full((*shape, 3), level, np.uint8)


@pytest.fixture(scope="module")
def decoded(video_dir) -> dict[str, list]:
    return {
        name: list(FrameReader(video_dir / name, fps=10, start_s=0.0, end_s=6.0, size=(160, 96)))
        for name in ("cut.mp4", "walk.mp4")
    }


def test_one_cut_at_the_scene_change(decoded):
    frames = decoded["cut.mp4"]
    cuts = _cuts(f.image for f in frames)
    assert len(cuts) == 1
    assert frames[cuts[0]].timestamp_s == pytest.approx(3.0, abs=0.15)


def test_no_cut_in_continuous_footage(decoded):
    assert _cuts(f.image for f in decoded["walk.mp4"]) == []


def test_cut_found_at_any_sampling_rate(video_dir):
    frames = list(FrameReader(video_dir / "cut.mp4", fps=5, start_s=1.0, end_s=5.0, size=(80, 48)))
    cuts = _cuts(f.image for f in frames)
    assert [round(frames[i].timestamp_s, 1) for i in cuts] == [3.0]


def test_the_first_frame_is_never_a_cut():
    detector = CutDetector(ShotConfig(min_frames=1))
    assert detector.update(_grey(255)) is False


def test_fixed_threshold():
    # 0 -> 240 in value is a score of 80: a cut whatever came before, even with no history.
    assert _cuts([_grey(0), _grey(0), _grey(0), _grey(240)]) == [3]
    # score 26 (under threshold 27) with no history to compare against: not a cut
    assert _cuts([_grey(0), _grey(78)], ShotConfig(min_frames=1)) == []


@pytest.mark.parametrize("min_frames", [1, 2, 3, 4, 7])
def test_min_frames_is_the_shortest_shot(min_frames):
    # Every frame differs hugely from the previous one; only min_frames limits how often cuts fire.
    frames = [_grey(0 if i % 2 == 0 else 255) for i in range(30)]
    cuts = _cuts(frames, ShotConfig(min_frames=min_frames))
    assert cuts == list(range(min_frames, 30, min_frames))
    starts = [0, *cuts, 30]
    assert all(b - a >= min_frames for a, b in zip(starts, starts[1:-1]))  # the first shot included


def test_min_frames_suppresses_a_second_cut_inside_the_window():
    frames = [_grey(0)] * 5 + [_grey(255)] + [_grey(0)] + [_grey(0)] * 5
    assert _cuts(frames, ShotConfig(min_frames=3)) == [5]  # the flash back at 6 is within 3 frames
    assert _cuts(frames, ShotConfig(min_frames=1)) == [5, 6]


def _ramp(start: int, step: int, n: int) -> list[np.ndarray]:
    return [_grey(start + step * i) for i in range(n)]


def test_adaptive_rule_catches_a_jump_under_the_threshold_after_steady_motion():
    steady = _ramp(60, 3, 10)  # scores of 1
    jump = [_grey(60 + 3 * 9 + 60)]  # score 20: under 27, but >= 15 and >= 3x the recent mean
    after = _ramp(60 + 3 * 9 + 60 + 3, 3, 5)
    assert _cuts(steady + jump + after) == [10]


def test_adaptive_rule_ignores_the_same_jump_in_busy_footage():
    busy = [_grey(100 if i % 2 else 150) for i in range(10)]  # scores of ~16.7 every frame
    jump = [_grey(160)]  # from 100, score 20: not 3x the recent mean
    assert _cuts(busy + jump) == []


def test_adaptive_rule_needs_min_score():
    still = [_grey(100)] * 10  # scores of 0: any change is "3x the baseline"
    small = [_grey(130)]  # score 10 < min_score 15
    assert _cuts(still + small) == []
    assert _cuts(still + small, ShotConfig(min_score=5)) == [10]


def test_new_shot_gets_its_own_baseline():
    # After a cut the history restarts, so a busy first shot does not mask a jump in a calm second one.
    busy = [_grey(100 if i % 2 else 150) for i in range(10)]
    cut = [_grey(10)]  # from 100, score 30: a cut by the fixed threshold
    calm = _ramp(13, 3, 8)
    jump = [_grey(13 + 3 * 7 + 57)]  # score 19
    assert _cuts(busy + cut + calm + jump) == [10, 19]


def test_a_change_of_frame_size_is_not_scored():
    detector = CutDetector(ShotConfig(min_frames=1))
    detector.update(_grey(0, (24, 32)))
    assert detector.update(_grey(255, (48, 64))) is False
    assert detector.update(_grey(0, (48, 64))) is True
