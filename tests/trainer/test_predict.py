"""Depth maps from a checkpoint for images and videos, through the CLI."""

from __future__ import annotations

import cv2
import numpy as np

from pipeline.synthetic.renderer import SceneSpec, render_frames, render_video
from trainer.cli import main


def test_predict_images_and_video(tiny_checkpoint, tmp_path):
    spec = SceneSpec(width=120, height=72, fps=10.0, duration_s=0.5, seed=3)
    image = next(render_frames(spec)).image
    cv2.imwrite(str(tmp_path / "frame.png"), image)
    video = render_video(spec, tmp_path / "clip.mp4")
    assert (
        main(
            [
                "predict",
                "--checkpoint",
                str(tiny_checkpoint),
                "--out",
                str(tmp_path / "out"),
                "--device",
                "cpu",
                str(tmp_path / "frame.png"),
                str(video),
            ]
        )
        == 0
    )
    depth = cv2.imread(str(tmp_path / "out" / "frame_depth.png"), cv2.IMREAD_UNCHANGED)
    assert depth.dtype == np.uint16 and depth.shape == (72, 120) and depth.max() > 0
    preview = cv2.imread(str(tmp_path / "out" / "frame_depth.jpg"))
    assert preview.shape == (72, 120, 3)
    assert len(list((tmp_path / "out").glob("clip_*_depth.png"))) == 5


def test_predict_reports_bad_input(tiny_checkpoint, tmp_path, capsys):
    (tmp_path / "bad.png").write_bytes(b"not an image")
    assert main(["predict", "--checkpoint", str(tiny_checkpoint), "--out", str(tmp_path / "o"), "bad.png"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert (
        main(["predict", "--checkpoint", str(tiny_checkpoint), "--out", str(tmp_path / "o"), str(tmp_path / "bad.png")])
        == 2
    )
    assert "cannot decode image" in capsys.readouterr().err
