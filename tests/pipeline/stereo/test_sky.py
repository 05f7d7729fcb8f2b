"""Sky detection: the weight-free detector against synthetic ground truth, and the TorchScript backend."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from pipeline.config import SkyConfig
from pipeline.stereo import sky as sky_module
from pipeline.stereo.sky import GradientSkyDetector, TorchScriptSkySegmenter, far_mask, make_sky_detector
from pipeline.synthetic.renderer import SceneSpec, intrinsics, render_frames, render_stereo_frames

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


@pytest.mark.parametrize(
    "width,height,seed", [(320, 192, 0), (320, 192, 1), (320, 192, 2), (940, 400, 3), (1880, 800, 4)]
)
def test_gradient_detector_matches_synthetic_sky(width, height, seed):
    frame, disparity = _frame(width, height, seed)
    detector = GradientSkyDetector()
    mono = detector(frame.image)
    stereo = detector(frame.image, disparity, np.ones(disparity.shape, bool))
    assert mono.shape == frame.sky_mask.shape and mono.dtype == bool
    # Measured 0.97-0.99 at 320x192, about 0.98 at 940x400 and 0.94 at 1880x800 (the fogged horizon disagrees).
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


# ---------------------------------------------------------------- the optimised detector equals the original
#
# A frozen copy of the detector's steps as they were before they were optimised (issue 16), in the detector's
# current structure (coarse mask at analysis size, its border band found there and re-decided at half size). The
# library's must give the same masks bit for bit. Helpers the optimisation left alone (texture_map, far_mask,
# _fill_small_holes, and the resizing steps _shrink and _upsampled_edge_band) are shared.


def _ref_detect(det: GradientSkyDetector, image: np.ndarray, far: np.ndarray | None) -> np.ndarray:
    height, width = image.shape[:2]
    empty = np.zeros((height, width), bool)
    texture = sky_module.texture_map(image, det.blur_sigma)
    threshold = float(np.clip(det.noise_factor * np.percentile(texture, 2), det.texture_floor, det.texture_cap))
    smooth = texture < threshold
    if far is not None:
        smooth &= far
    smooth = cv2.morphologyEx(smooth.astype(np.uint8), cv2.MORPH_CLOSE, np.ones((3, 3), np.uint8)) > 0
    if far is not None:
        smooth &= far
    seed = np.logical_and.accumulate(smooth, axis=0)
    seed = cv2.morphologyEx(seed.astype(np.uint8), cv2.MORPH_OPEN, np.ones((3, 3), np.uint8)) > 0
    min_pixels = max(4, int(det.min_sky_fraction * height * width))
    if seed.sum() < min_pixels or texture[seed].mean() > det.max_mean_texture * threshold:
        return empty
    lab = cv2.cvtColor(cv2.GaussianBlur(image, (0, 0), 1.0).astype(np.float32) * (1.0 / 255.0), cv2.COLOR_BGR2LAB)
    grown = (_ref_colour_step(lab) < det.max_colour_step) & (texture < det.grow_factor * threshold)
    if det.colour_max_distance > 0:
        distance = _ref_mahalanobis(lab.reshape(-1, 3), lab[seed]).reshape(height, width)
        grown &= distance < det.colour_max_distance
    if far is not None:
        grown &= far
    sky = _ref_connected_to(grown | seed, seed)
    sky = cv2.morphologyEx(sky.astype(np.uint8), cv2.MORPH_OPEN, np.ones((3, 3), np.uint8)) > 0
    sky = sky_module._fill_small_holes(sky, max_area=max(4, height * width // 500))
    sky = _ref_touching_top(sky)
    return sky if sky.sum() >= min_pixels else empty


def _ref_sky(det: GradientSkyDetector, image: np.ndarray, disparity=None, valid=None) -> np.ndarray:
    height, width = image.shape[:2]
    far = None
    if disparity is not None:
        far = far_mask(disparity, valid, det.disparity_margin_px, det.disparity_margin_fraction)
    scale = min(1.0, det.analysis_width / width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    fine_scale = 0.5 if scale <= 0.5 else 1.0
    fine, fine_far = image, far
    if fine_scale < 1:
        fine = cv2.resize(image, (width // 2, height // 2), interpolation=cv2.INTER_AREA)
        fine_far = None if far is None else _ref_shrink_mask(far, (width // 2, height // 2))
    small, small_far = fine, fine_far
    if scale < 1:
        small = sky_module._shrink(fine, size)
        if far is not None:
            small_far = _ref_shrink_mask(far, size)
    mask = _ref_detect(det, small, small_far)
    if not mask.any():
        return np.zeros((height, width), bool)
    fine_height, fine_width = fine.shape[:2]
    radius = int(np.ceil(det.edge_margin / (scale / fine_scale)))
    if scale < fine_scale:
        coarse = radius * scale / fine_scale
        mask, inner, band = sky_module._upsampled_edge_band(mask, coarse, (fine_width, fine_height))
    else:
        inside = cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, 3)
        outside = cv2.distanceTransform((~mask).astype(np.uint8), cv2.DIST_L2, 3)
        inner = inside > radius if radius >= 1 else mask.copy()
        band = ~inner & (outside <= radius) if radius >= 1 else np.zeros_like(mask)
    mask = _ref_touching_top(_ref_refine_edges(fine, mask, inner, band, fine_far, det.max_colour_step))
    if fine_scale == 1:
        return mask
    mask = cv2.resize(mask.astype(np.uint8), (width, height), interpolation=cv2.INTER_LINEAR) > 0
    return mask if far is None else _ref_touching_top(mask & far)


def _ref_shrink_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return cv2.resize(mask.astype(np.float32), size, interpolation=cv2.INTER_AREA) > 0.5


def _ref_colour_step(lab: np.ndarray) -> np.ndarray:
    dx = np.zeros(lab.shape[:2], np.float32)
    dy = np.zeros(lab.shape[:2], np.float32)
    dx[:, :-1] = _ref_colour_distance(lab[:, 1:], lab[:, :-1])
    dy[:-1] = _ref_colour_distance(lab[1:], lab[:-1])
    step = np.maximum(dx, dy)
    step[:, 1:] = np.maximum(step[:, 1:], dx[:, :-1])
    step[1:] = np.maximum(step[1:], dy[:-1])
    return step


def _ref_colour_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d = a - b
    return np.sqrt(np.einsum("ijk,ijk->ij", d, d))


def _ref_refine_edges(image, mask, inner, band, allowed, max_step) -> np.ndarray:
    if allowed is not None:
        band &= allowed
    if not inner.any() or not band.any():
        return mask
    rows, cols = np.nonzero(band)
    y0, y1 = max(rows.min() - 1, 0), min(rows.max() + 2, mask.shape[0])
    x0, x1 = max(cols.min() - 1, 0), min(cols.max() + 2, mask.shape[1])
    roi = cv2.medianBlur(np.ascontiguousarray(image[y0:y1, x0:x1]), 3)
    lab = cv2.cvtColor(roi.astype(np.float32) * (1.0 / 255.0), cv2.COLOR_BGR2LAB)
    seed, grow = inner[y0:y1, x0:x1], band[y0:y1, x0:x1]
    sky = _ref_connected_to(seed | (grow & (_ref_colour_step(lab) < max_step)), seed)
    shifts = ((0, 1), (0, -1), (1, 0), (-1, 0))
    close = [_ref_colour_distance(lab, _ref_shift(lab, dy, dx)) < max_step for dy, dx in shifts]
    for _ in range(4):
        reached = np.zeros_like(sky)
        for (dy, dx), near in zip(shifts, close):
            reached |= near & _ref_shift(sky, dy, dx)
        sky |= reached & grow
    out = inner.copy()
    out[y0:y1, x0:x1] = sky
    return out


def _ref_shift(array: np.ndarray, dy: int, dx: int) -> np.ndarray:
    out = np.zeros_like(array)
    h, w = array.shape[:2]
    out[max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = array[
        max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)
    ]
    return out


def _ref_mahalanobis(points: np.ndarray, sample: np.ndarray) -> np.ndarray:
    mean = sample.mean(axis=0)
    cov = np.cov(sample, rowvar=False) if len(sample) > 3 else np.zeros((3, 3))
    cov = np.atleast_2d(cov) + np.eye(3, dtype=np.float64) * 4.0
    diff = points - mean
    return np.sqrt(np.einsum("ij,jk,ik->i", diff, np.linalg.inv(cov), diff))


def _ref_connected_to(mask: np.ndarray, seed: np.ndarray) -> np.ndarray:
    count, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    keep = np.zeros(count, bool)
    keep[np.unique(labels[seed & mask])] = True
    keep[0] = False
    return keep[labels]


def _ref_touching_top(mask: np.ndarray) -> np.ndarray:
    top = np.zeros_like(mask)
    top[0] = mask[0]
    return _ref_connected_to(mask, top)


@pytest.mark.parametrize(
    "width,height,seed,sky",
    [(320, 192, 0, True), (640, 360, 1, True), (940, 400, 2, True), (940, 400, 3, True), (940, 400, 4, False),
     (1000, 300, 5, True), (1880, 800, 6, True)],
)  # fmt: skip
def test_gradient_detector_is_bit_identical_to_the_original(width, height, seed, sky):
    spec = SceneSpec(width=width, height=height, seed=seed, duration_s=0.2, fps=10.0, baseline_m=BASELINE_M, sky=sky)
    detector = GradientSkyDetector()
    rng = np.random.default_rng(seed)
    found = 0
    for frame in render_stereo_frames(spec):
        # Sensor noise moves the noise floor, the colour steps and the edge band; a noisy disparity moves far_mask.
        noisy = np.clip(frame.left + rng.normal(0.0, 2.0, frame.left.shape), 0, 255).astype(np.uint8)
        disparity = frame.disparity + rng.normal(0.0, 0.5, frame.disparity.shape).astype(np.float32)
        for args in [(frame.left,), (frame.right,), (noisy,), (frame.left, frame.disparity, ~frame.occluded),
                     (noisy, disparity, None)]:  # fmt: skip
            mask = detector(*args)
            assert np.array_equal(mask, _ref_sky(detector, *args))
            found += int(mask.any())
    assert found == 0 if not sky else found >= 8  # the comparison must cover real sky masks, not only empty ones


@pytest.mark.parametrize("edge_margin,colour_max_distance", [(0.0, 6.0), (3.0, 0.0), (20.0, 3.0)])
def test_gradient_detector_is_bit_identical_with_other_settings(edge_margin, colour_max_distance):
    frame = next(render_stereo_frames(SceneSpec(width=700, height=320, seed=7, duration_s=0.1, baseline_m=0.3)))
    detector = GradientSkyDetector(edge_margin=edge_margin, colour_max_distance=colour_max_distance)
    for args in [(frame.left,), (frame.left, frame.disparity, ~frame.occluded)]:
        mask = detector(*args)
        assert mask.any() and np.array_equal(mask, _ref_sky(detector, *args))


def test_colour_helpers_are_bit_identical_to_the_einsum_forms():
    rng = np.random.default_rng(0)
    image = cv2.GaussianBlur(rng.integers(0, 256, (150, 230, 3), dtype=np.uint8), (0, 0), 1.5)
    lab = cv2.cvtColor(image.astype(np.float32) * (1.0 / 255.0), cv2.COLOR_BGR2LAB)
    assert np.array_equal(sky_module.colour_step(lab), _ref_colour_step(lab))
    dx, dy = sky_module._neighbour_steps(lab)
    assert np.array_equal(dx[:, :-1], _ref_colour_distance(lab[:, 1:], lab[:, :-1]))
    assert np.array_equal(dy[:-1], _ref_colour_distance(lab[1:], lab[:-1]))
    points = lab.reshape(-1, 3)
    assert np.array_equal(sky_module._mahalanobis(points, points[:5000]), _ref_mahalanobis(points, points[:5000]))


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
