"""Sky detection: the weight-free detector against synthetic ground truth, and the TorchScript backend."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.config import SkyConfig
from pipeline.stereo.sky import GradientSkyDetector, TorchScriptSkySegmenter, far_mask, make_sky_detector
from pipeline.synthetic.renderer import SceneSpec, intrinsics, render_frames

BASELINE_M = 0.3


def _frame(width: int, height: int, seed: int, sky: bool = True):
    spec = SceneSpec(width=width, height=height, seed=seed, duration_s=0.1, fps=10.0, baseline_m=BASELINE_M, sky=sky)
    frame = next(render_frames(spec))
    # Ground-truth disparity of the left view: fx * baseline / depth, 0 for the sky (depth inf).
    disparity = (intrinsics(spec)[0, 0] * BASELINE_M / frame.depth).astype(np.float32)
    return frame, disparity


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def _texture(shape: tuple[int, int], amplitude: float, rng: np.random.Generator, base=(90, 110, 120)) -> np.ndarray:
    noise = rng.normal(0.0, amplitude, shape).astype(np.float32)
    return np.clip(np.array(base, np.float32) + noise[..., None], 0, 255).astype(np.uint8)


def _sky_gradient(height: int, width: int) -> np.ndarray:
    t = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
    zenith, horizon = np.array([200, 140, 90], np.float32), np.array([235, 215, 200], np.float32)
    return np.broadcast_to((1 - t) * zenith + t * horizon, (height, width, 3)).astype(np.uint8)


@pytest.mark.parametrize("width,height,seed", [(320, 192, 0), (320, 192, 1), (320, 192, 2), (940, 400, 3)])
def test_gradient_detector_matches_synthetic_sky(width, height, seed):
    frame, disparity = _frame(width, height, seed)
    detector = GradientSkyDetector()
    mono = detector(frame.image)
    stereo = detector(frame.image, disparity, np.ones(disparity.shape, bool))
    assert mono.shape == frame.sky_mask.shape and mono.dtype == bool
    # Measured 0.97-0.99 at 320x192 and about 0.96 at 940x400 (the fogged horizon is the disagreement).
    assert _iou(mono, frame.sky_mask) > 0.92
    assert _iou(stereo, frame.sky_mask) > 0.92


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_no_sky_in_a_closed_canyon(seed):
    frame, disparity = _frame(320, 192, seed, sky=False)
    detector = GradientSkyDetector()
    assert not detector(frame.image).any()
    assert not detector(frame.image, disparity).any()


def test_stereo_cue_removes_a_near_textureless_top_region():
    rng = np.random.default_rng(0)
    image = np.concatenate([_sky_gradient(60, 200), _texture((100, 200), 25.0, rng)])
    disparity = np.empty((160, 200), np.float32)
    disparity[60:] = np.linspace(2.0, 20.0, 100, dtype=np.float32)[:, None]  # textured ground, far to near
    detector = GradientSkyDetector()
    assert detector(image)[:60].mean() > 0.95  # alone, the smooth top looks like sky

    disparity[:60] = 40.0  # ... but it is nearer than everything else: a ceiling, not sky
    assert not detector(image, disparity).any()
    disparity[:60] = 0.0  # at the frame's minimum disparity it stays sky
    assert detector(image, disparity)[:60].mean() > 0.95
    disparity[:60] = 40.0
    valid = np.ones(disparity.shape, bool)
    valid[:60] = False  # unmatched (textureless) pixels carry no evidence either way
    assert detector(image, disparity, valid)[:60].mean() > 0.95


def test_far_mask_uses_a_margin_above_the_frame_minimum():
    disparity = np.linspace(0.0, 100.0, 101, dtype=np.float32)[None, :].repeat(4, axis=0)
    far = far_mask(disparity, margin_px=1.0, margin_fraction=0.1)
    assert far[:, :10].all() and not far[:, 12:].any()
    valid = np.ones(disparity.shape, bool)
    valid[:, 90:] = False
    assert far_mask(disparity, valid, margin_fraction=0.1)[:, 90:].all()  # invalid: may be sky
    assert far_mask(np.full((4, 4), np.nan, np.float32)).all()


def test_uniform_bright_wall_at_the_bottom_is_not_sky():
    rng = np.random.default_rng(1)
    image = np.concatenate([_texture((90, 240), 30.0, rng), np.full((90, 240, 3), 235, np.uint8)])
    assert not GradientSkyDetector()(image).any()


def test_textured_ceiling_and_close_up_wall_are_not_sky():
    rng = np.random.default_rng(2)
    ceiling = np.concatenate([_texture((60, 240), 12.0, rng, base=(200, 200, 200)), _texture((120, 240), 30.0, rng)])
    wall = _texture((180, 240), 20.0, rng)
    detector = GradientSkyDetector()
    assert not detector(ceiling).any()
    assert not detector(wall).any()


def test_sky_must_touch_the_top_border():
    rng = np.random.default_rng(3)
    image = _texture((180, 240), 30.0, rng)
    image[60:120, 60:180] = _sky_gradient(60, 120)  # a sky-like window inside a textured frame
    assert not GradientSkyDetector()(image).any()
    image[:120, 60:180] = _sky_gradient(120, 120)  # opened to the top, it is sky
    mask = GradientSkyDetector()(image)
    assert mask[5:115, 65:175].all() and not mask[130:].any() and not mask[:, :50].any()


def test_detector_checks_its_inputs():
    detector = GradientSkyDetector()
    with pytest.raises(ValueError, match="BGR uint8"):
        detector(np.zeros((10, 10), np.uint8))
    with pytest.raises(ValueError, match="must match"):
        detector(np.zeros((10, 10, 3), np.uint8), np.zeros((5, 5), np.float32))


# ---------------------------------------------------------------- TorchScript backend

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*:DeprecationWarning")  # the tests script and trace


class _BlueIsSky(torch.nn.Module):
    """1x1 conv to 3 classes: class 2 wins where the (normalised) blue channel is high."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, kernel_size=1)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.bias.copy_(torch.tensor([0.0, -1.0, -5.0]))
            self.conv.weight[2, 2, 0, 0] = 10.0  # input channel 2 is blue: the model sees RGB

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)[:, :, ::2, ::2]  # logits at half resolution, as many segmenters give them


class _DictOutput(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = _BlueIsSky()

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"out": self.inner(x), "aux": x}


def _blue_left_red_right(height: int, width: int) -> np.ndarray:
    image = np.zeros((height, width, 3), np.uint8)
    image[:, : width // 2] = (255, 0, 0)  # BGR blue
    image[:, width // 2 :] = (0, 0, 255)  # BGR red
    return image


def _segmenter(path, **kwargs) -> TorchScriptSkySegmenter:
    # Identity normalisation keeps the test's logits easy to reason about: x = pixel / 255.
    return TorchScriptSkySegmenter(
        path, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), input_size=(64, 48), device="cpu", **kwargs
    )


def test_torchscript_segmenter_scripted_model(tmp_path):
    path = tmp_path / "sky.pt"
    torch.jit.script(_BlueIsSky()).save(str(path))
    image = _blue_left_red_right(90, 160)
    mask = _segmenter(path)(image)
    assert mask.shape == (90, 160) and mask.dtype == bool
    assert mask[:, :76].all() and not mask[:, 84:].any()  # a few columns of slack for the resize round trip


def test_torchscript_segmenter_traced_model_batch_and_class_id(tmp_path):
    path = tmp_path / "sky_traced.pt"
    torch.jit.trace(_BlueIsSky(), torch.zeros(1, 3, 48, 64)).save(str(path))
    images = [_blue_left_red_right(90, 160), _blue_left_red_right(40, 40)[:, ::-1].copy()]
    masks = _segmenter(path).segment_batch(images)
    assert [m.shape for m in masks] == [(90, 160), (40, 40)]
    assert masks[0][:, :76].all() and not masks[0][:, 84:].any()
    assert masks[1][:, 22:].all() and not masks[1][:, :18].any()  # the flipped image: blue on the right
    assert _segmenter(path).segment_batch([]) == []
    # Class 0 wins where blue is low: with sky_class_id=0 the red half is "sky".
    assert _segmenter(path, sky_class_id=0)(images[0])[:, 84:].all()
    with pytest.raises(ValueError, match="sky_class_id 5"):
        _segmenter(path, sky_class_id=5)(images[0])


def test_torchscript_segmenter_accepts_dict_output(tmp_path):
    path = tmp_path / "sky_dict.pt"
    torch.jit.script(_DictOutput()).save(str(path))
    mask = _segmenter(path)(_blue_left_red_right(90, 160))
    assert mask[:, :76].all() and not mask[:, 84:].any()


def test_torchscript_segmenter_missing_or_bad_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        TorchScriptSkySegmenter(tmp_path / "nope.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a torchscript archive")
    with pytest.raises(ValueError, match="TorchScript"):
        TorchScriptSkySegmenter(bad)


def test_make_sky_detector_for_each_backend(tmp_path):
    assert make_sky_detector(SkyConfig(backend="none")) is None
    assert isinstance(make_sky_detector(SkyConfig()), GradientSkyDetector)
    with pytest.raises(ValueError, match="model_path"):
        make_sky_detector(SkyConfig(backend="torchscript"))
    path = tmp_path / "sky.pt"
    torch.jit.script(_BlueIsSky()).save(str(path))
    cfg = SkyConfig(
        backend="torchscript",
        model_path=str(path),
        sky_class_id=2,
        input_size=(64, 48),
        mean=(0.0, 0.0, 0.0),
        std=(1.0, 1.0, 1.0),
    )
    detector = make_sky_detector(cfg)
    assert isinstance(detector, TorchScriptSkySegmenter)
    assert detector.input_size == (64, 48) and detector.sky_class_id == 2
    mask = detector(_blue_left_red_right(90, 160))
    assert mask[:, :76].all() and not mask[:, 84:].any()
