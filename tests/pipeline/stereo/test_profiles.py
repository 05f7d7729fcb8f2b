"""Stereo threshold profiles: named sets of the checks' limits, explicit fields winning, recorded with the config."""

from __future__ import annotations

import pytest
import yaml
from pydantic import ValidationError

from pipeline.config import (
    ACCURATE_STEREO,
    STEREO_PROFILES,
    ConfigError,
    CurateConfig,
    OpticalFlowConfig,
    StereoConfig,
    load_config,
)


def test_midas_is_the_default_profile():
    cfg = StereoConfig()
    assert cfg.profile == "midas"
    assert (cfg.lr_max_px, cfg.vertical_max_px) == (2.0, 2.0)
    assert (cfg.max_vertical_fail, cfg.min_lr_pass, cfg.min_disparity_range_px) == (0.10, 0.70, 10.0)


def test_stereo4d_tightens_both_checks_to_one_pixel():
    cfg = StereoConfig(profile="stereo4d")
    assert (cfg.lr_max_px, cfg.vertical_max_px) == (1.0, 1.0)
    assert (cfg.max_vertical_fail, cfg.min_lr_pass, cfg.min_disparity_range_px) == (0.10, 0.70, 10.0)


def test_explicit_fields_override_the_profile(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"stereo": {"profile": "stereo4d", "lr_max_px": 1.5}}))
    cfg = load_config(path).stereo
    assert (cfg.profile, cfg.lr_max_px, cfg.vertical_max_px) == ("stereo4d", 1.5, 1.0)


def test_unknown_profile_is_a_config_error(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"stereo": {"profile": "kitti"}}))
    with pytest.raises(ConfigError, match="profile"):
        load_config(path)


def test_profile_and_its_values_are_recorded_and_hashed():
    midas, stereo4d = CurateConfig(), CurateConfig(stereo=StereoConfig(profile="stereo4d"))
    recorded = stereo4d.recorded()["stereo"]  # what dataset.json keeps
    assert recorded["profile"] == "stereo4d"
    assert {k: recorded[k] for k in STEREO_PROFILES["stereo4d"]} == STEREO_PROFILES["stereo4d"]
    assert midas.processing_hash() != stereo4d.processing_hash()
    # A recorded config read back (a recipe rebuild) is the same config.
    assert CurateConfig.model_validate(stereo4d.recorded()) == stereo4d


def test_accurate_quality_fills_its_flow_and_mask_and_explicit_fields_win(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(
        yaml.safe_dump({"stereo": {"quality": "accurate", "min_confidence": 0.8, "flow": {"batch_size": 2}}})
    )
    cfg = load_config(path).stereo
    assert (cfg.flow.dis_finest_scale, cfg.flow.dis_patch_size, cfg.flow.batch_size) == (0, 6, 2)
    assert cfg.min_confidence == 0.8  # given beside the quality
    assert cfg.max_disparity_gradient == ACCURATE_STEREO["max_disparity_gradient"]
    assert StereoConfig(quality="accurate", flow=OpticalFlowConfig(dis_patch_size=8)).flow.dis_patch_size == 8
    assert StereoConfig(quality="accurate", profile="stereo4d").lr_max_px == 1.0  # the two names combine
    with pytest.raises(ValidationError, match="quality"):
        StereoConfig(quality="best")


def test_quality_is_recorded_only_when_accurate_and_hashes_by_its_values():
    fast, accurate = CurateConfig(), CurateConfig(stereo={"quality": "accurate"})
    spelled_out = CurateConfig(stereo={"flow": ACCURATE_STEREO["flow"], **ACCURATE_STEREO})
    assert "quality" not in fast.recorded()["stereo"]  # dataset.json reads as it did before the key existed
    assert accurate.recorded()["stereo"]["quality"] == "accurate"
    assert accurate.processing_hash() == spelled_out.processing_hash() != fast.processing_hash()
    assert CurateConfig.model_validate(accurate.recorded()) == accurate
