from __future__ import annotations

import pytest

from pipeline.config import ConfigError, CurateConfig, load_config


def test_defaults_are_slowtvs():
    cfg = load_config()
    assert cfg.sample.fps == 10 and cfg.sample.trim.head_s == 300 and cfg.sample.trim.tail_s == 300
    assert (cfg.sample.decimate.keep, cfg.sample.decimate.every) == (100, 250)
    assert (cfg.split.train_fraction, cfg.split.gap_frames) == (0.9, 100)
    assert cfg.download.format.startswith("136/")


def test_yaml_overrides_defaults(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("sample:\n  fps: 5\n  decimate: null\nrun:\n  workers: 3\n")
    cfg = load_config(path)
    assert cfg.sample.fps == 5 and cfg.sample.decimate is None and cfg.run.workers == 3
    assert cfg.sample.trim.head_s == 300  # untouched keys keep their defaults


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("sample:\n  fsp: 5\n", "sample.fsp"),
        ("nonsense: 1\n", "nonsense"),
        ("sample:\n  fps: -1\n", "sample.fps"),
        ("sample:\n  decimate: {keep: 300, every: 250}\n", "keep"),
        ("- a list\n", "mapping"),
    ],
)
def test_bad_config_is_a_clear_error(tmp_path, text, fragment):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert fragment in str(err.value) and str(path) in str(err.value)


def test_processing_hash_ignores_run_and_download_settings():
    base = CurateConfig()
    assert load_config(overrides={"run": {"workers": 7}}).processing_hash() == base.processing_hash()
    assert load_config(overrides={"download": {"rate_limit": "1M"}}).processing_hash() == base.processing_hash()
    assert load_config(overrides={"sample": {"fps": 5}}).processing_hash() != base.processing_hash()
    assert load_config(overrides={"run": {"workers": 7}}).full_hash() != base.full_hash()
    full_resolution = load_config(overrides={"stereo": {"flow": {"dis_finest_scale": 0}}})
    assert full_resolution.processing_hash() != base.processing_hash()  # unset, it is left out (the demo digest)


def test_shipped_configs_load():
    from pipeline.synthetic.demo import CONFIG_PATH

    assert load_config(CONFIG_PATH).sample.max_height == 192
    assert load_config(CONFIG_PATH.parent / "slowtv.yaml").processing_hash() == CurateConfig().processing_hash()
