"""open_clip loading from a local checkpoint, and the embeddings it makes."""

from __future__ import annotations

import subprocess
import sys

import cv2
import numpy as np
import pytest

from pipeline.clip.model import ClipModel, get_model, save_random_checkpoint
from pipeline.config import ClipConfig, ConfigError, load_config
from pipeline.synthetic.renderer import SceneSpec, render_frames


def _jpegs(seed: int, n: int = 6) -> list[bytes]:
    spec = SceneSpec(width=160, height=96, fps=10.0, duration_s=n / 10, seed=seed)
    return [cv2.imencode(".jpg", f.image)[1].tobytes() for f in render_frames(spec)][:n]


def test_local_checkpoint_loads_with_its_weights(clip_settings):
    import torch

    model = get_model(ClipConfig(**clip_settings))
    saved = torch.load(clip_settings["checkpoint"], weights_only=True)
    loaded = model.model.state_dict()
    assert saved.keys() == loaded.keys()
    assert all(torch.equal(saved[k], loaded[k].cpu()) for k in saved)
    assert model.device.type == "cpu" and model.amp_dtype is None  # no GPU here: fp32, no autocast
    assert model.checkpoint_sha256 and len(model.model_hash) == 16 and model.dim == 64


def test_model_is_built_once_per_process(clip_settings):
    cfg = ClipConfig(**clip_settings)
    assert get_model(cfg) is get_model(ClipConfig(**clip_settings))


def test_another_checkpoint_is_another_model(clip_settings, tmp_path):
    other = save_random_checkpoint(
        "tiny-clip-test", tmp_path / "other.pt", architecture=clip_settings["architecture"], seed=1
    )
    first = get_model(ClipConfig(**clip_settings))
    second = get_model(ClipConfig(**{**clip_settings, "checkpoint": str(other)}))
    assert second.model_hash != first.model_hash
    jpegs = _jpegs(1, 2)
    assert not np.array_equal(first.embed_jpegs(jpegs), second.embed_jpegs(jpegs))


def test_embeddings_are_unit_float16_and_batch_independent(clip_settings):
    model = get_model(ClipConfig(**clip_settings))
    jpegs = _jpegs(1) + _jpegs(2)
    vectors = model.embed_jpegs(jpegs)
    assert vectors.dtype == np.float16 and vectors.shape == (12, 64)
    assert np.allclose(np.linalg.norm(vectors.astype(np.float32), axis=1), 1, atol=2e-3)
    one_by_one = np.concatenate([model.embed_jpegs([j]) for j in jpegs])
    assert np.abs(one_by_one.astype(np.float32) - vectors.astype(np.float32)).max() < 2e-3
    texts = model.embed_texts(["a photo of a forest", "a black screen"])
    assert texts.shape == (2, 64) and np.allclose(np.linalg.norm(texts, axis=1), 1, atol=2e-3)


def test_missing_checkpoint_and_wrong_architecture_name_are_clear_errors(clip_settings, tmp_path):
    with pytest.raises(FileNotFoundError, match="never downloaded"):
        ClipModel(ClipConfig(**{**clip_settings, "checkpoint": str(tmp_path / "absent.pt")}))
    with pytest.raises(ValueError, match="defines 'tiny-clip-test'"):
        ClipModel(ClipConfig(**{**clip_settings, "model": "ViT-B-32"}))


def test_clip_config_needs_one_weight_source():
    with pytest.raises(ConfigError, match="clip.checkpoint"):
        load_config(overrides={"clip": {"enabled": True}})
    with pytest.raises(ConfigError, match="alternatives"):
        load_config(overrides={"clip": {"checkpoint": "a.pt", "pretrained": "openai"}})


def test_clip_settings_leave_the_processing_hash_alone(clip_settings):
    base = load_config()
    changed = load_config(overrides={"clip": {**clip_settings, "semdedup": {"epsilon": 0.2}}})
    assert changed.processing_hash() == base.processing_hash()  # no video is re-decoded for a corpus setting
    assert changed.full_hash() != base.full_hash()


def test_pipeline_does_not_import_torch_when_clip_is_off():
    code = (
        "import sys; import pipeline.corpus.publish, pipeline.video.ingest, pipeline.video.sampling, "
        "pipeline.corpus.verify, pipeline.clip.curation, pipeline.driver, flows.curate, flows.dedup, flows.cli; "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
