"""Weights-only export: the model and its config without the training state; predict and evaluate take it."""

from __future__ import annotations

import json

import cv2
import pytest
import torch

from pipeline.synthetic.renderer import SceneSpec, render_frames
from trainer.checkpoint import WEIGHTS, load_checkpoint, load_weights
from trainer.cli import main


@pytest.fixture(scope="module")
def exported(tiny_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "model.pt"
    assert main(["export", "--checkpoint", str(tiny_checkpoint), "--out", str(out)]) == 0
    return out


def test_export_keeps_the_weights_and_config_and_drops_the_training_state(tiny_checkpoint, exported):
    full, weights = load_weights(tiny_checkpoint), load_weights(exported)
    assert weights["kind"] == WEIGHTS and set(weights) == {"format", "kind", "model", "config", "step", "metrics"}
    assert weights["config"] == full["config"] and weights["step"] == full["step"]
    assert weights["model"].keys() == full["model"].keys()
    assert all(torch.equal(weights["model"][k], full["model"][k]) for k in full["model"])
    assert exported.stat().st_size < tiny_checkpoint.stat().st_size
    assert [p.name for p in exported.parent.iterdir()] == ["model.pt"]  # written through a renamed temporary


def test_an_export_cannot_resume_training(exported, tiny_checkpoint):
    assert load_checkpoint(tiny_checkpoint)["optimizer"]
    with pytest.raises(ValueError, match="weights-only export"):
        load_checkpoint(exported)


def test_export_refuses_to_overwrite_its_checkpoint(tiny_checkpoint, capsys):
    before = tiny_checkpoint.read_bytes()
    assert main(["export", "--checkpoint", str(tiny_checkpoint), "--out", str(tiny_checkpoint)]) == 2
    assert "is the checkpoint itself" in capsys.readouterr().err and tiny_checkpoint.read_bytes() == before


def test_predict_gives_the_same_depth_from_the_export(tiny_checkpoint, exported, tmp_path):
    image = tmp_path / "frame.png"
    cv2.imwrite(str(image), next(render_frames(SceneSpec(width=120, height=72, fps=10.0, duration_s=0.2))).image)
    for name, source in (("full", tiny_checkpoint), ("weights", exported)):
        argv = ["predict", "--checkpoint", str(source), "--out", str(tmp_path / name), "--device", "cpu", str(image)]
        assert main(argv) == 0
    assert (tmp_path / "full" / "frame_depth.png").read_bytes() == (
        tmp_path / "weights" / "frame_depth.png"
    ).read_bytes()


def test_evaluate_gives_the_same_metrics_from_the_export(tiny_checkpoint, exported, train_root, capsys):
    manifest = str(train_root / "manifest" / "stereo.parquet")
    results = []
    for source in (tiny_checkpoint, exported):
        argv = ["evaluate", "--checkpoint", str(source), "--manifest", manifest, "--max-batches", "1", "--json"]
        assert main([*argv, "--device", "cpu"]) == 0
        results.append(json.loads(capsys.readouterr().out))
    assert results[0] == results[1] and results[0]
