"""Augmentation: shapes of SlowTV's aspect crops, and intrinsics that follow every crop, resize and flip."""

from __future__ import annotations

import numpy as np
import pytest

from trainer import augment
from trainer.config import AugmentConfig


def coordinate_image(height: int, width: int) -> np.ndarray:
    """Each pixel holds its own (x, y): after a geometric op it tells where it came from."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    return np.dstack([xs, ys])


def bilinear(image: np.ndarray, u: float, v: float) -> np.ndarray:
    x0, y0 = int(np.floor(u)), int(np.floor(v))
    a, b = u - x0, v - y0
    return (
        (1 - a) * (1 - b) * image[y0, x0]
        + a * (1 - b) * image[y0, x0 + 1]
        + (1 - a) * b * image[y0 + 1, x0]
        + a * b * image[y0 + 1, x0 + 1]
    )


@pytest.mark.parametrize(
    "box,size,flip",
    [
        ((0, 0, 240, 160), (160, 240), False),  # identity
        ((30, 10, 180, 120), (96, 144), False),  # crop and shrink
        ((30, 10, 180, 120), (256, 384), True),  # crop, enlarge, flip
        ((0, 20, 240, 100), (64, 160), True),  # anisotropic
    ],
)
def test_intrinsics_follow_crop_resize_and_flip(box, size, flip):
    k = np.array([[200.0, 0.0, 117.0], [0.0, 190.0, 83.0], [0.0, 0.0, 1.0]])
    geometry = augment.Geometry(box, size, flip)
    warped = augment.apply(coordinate_image(160, 240), geometry)
    k_new = augment.transform_intrinsics(k, geometry)
    rng = np.random.default_rng(0)
    checked = 0
    for _ in range(200):
        point = np.array([rng.uniform(-1, 1), rng.uniform(-0.5, 0.5), rng.uniform(2, 6)])
        # A flipped image is the mirrored world: the point shows up where its mirror image projects.
        mirrored = point * np.array([-1.0 if flip else 1.0, 1.0, 1.0])
        u, v, _ = (k_new @ mirrored) / point[2]
        if not (1 <= u < size[1] - 2 and 1 <= v < size[0] - 2):
            continue
        source = (k @ point) / point[2]
        # INTER_AREA at fractional scales is off by up to 0.075 px; a wrong K is off by whole pixels.
        np.testing.assert_allclose(bilinear(warped, u, v), source[:2], atol=0.1)
        checked += 1
    assert checked > 20


def test_normalised_intrinsics_round_trip():
    k = augment.pixel_intrinsics(np.array([0.7, 1.2, 0.5, 0.45]), 192, 320)
    np.testing.assert_allclose(augment.normalised_intrinsics(k, 192, 320), [0.7, 1.2, 0.5, 0.45], rtol=1e-6)


def test_batch_shapes_keep_the_pixel_count_and_multiples_of_32():
    cfg = AugmentConfig(aspect_prob=1.0)
    rng = np.random.default_rng(0)
    for _ in range(100):
        height, width, aspect = augment.batch_shape(rng, cfg, 192, 320)
        assert height % 32 == 0 and width % 32 == 0
        assert 0.5 < height * width / (192 * 320) < 1.6
    assert augment.batch_shape(rng, cfg, 192, 320, train=False) == (192, 320, 320 / 192)


def test_batch_shapes_never_go_below_the_encoders_minimum_side():
    # At 64x96 the widest ratios would round the height to 32, which a stride-32 encoder cannot pad.
    cfg = AugmentConfig(aspect_prob=1.0)
    rng = np.random.default_rng(0)
    shapes = {augment.batch_shape(rng, cfg, 64, 96)[:2] for _ in range(200)}
    assert min(min(shape) for shape in shapes) == augment.MIN_SIDE


def test_centre_crop_box_has_the_aspect():
    assert augment.centre_crop_box(100, 200, 1.0) == (50, 0, 100, 100)
    assert augment.centre_crop_box(100, 200, 4.0) == (0, 25, 200, 50)


def test_disparity_scales_with_the_horizontal_zoom():
    disparity = np.full((40, 80), 6.0, np.float32)
    out = augment.apply_disparity(disparity, augment.Geometry((0, 0, 80, 40), (80, 160), True))
    assert out.shape == (80, 160) and np.allclose(out, 12.0)


def test_colour_jitter_is_shared_and_bounded():
    rng = np.random.default_rng(3)
    jitter = augment.ColourJitter.draw(rng, AugmentConfig(jitter_prob=1.0))
    image = np.random.default_rng(1).random((8, 8, 3), dtype=np.float32)
    out = jitter(image)
    assert out.dtype == np.float32 and out.min() >= 0 and out.max() <= 1
    assert not np.allclose(out, image) and np.array_equal(out, jitter(image))
    assert augment.ColourJitter()(image) is image


def test_zoom_is_off_by_default_and_draws_nothing():
    rng = np.random.default_rng(0)
    state = rng.bit_generator.state
    assert augment.draw_zoom(rng, AugmentConfig()) == 1.0
    assert rng.bit_generator.state == state  # the default run's random stream is untouched
    zooms = [augment.draw_zoom(rng, AugmentConfig(resize_prob=1.0)) for _ in range(200)]
    assert min(zooms) >= 0.5 and max(zooms) <= 1.5 and min(zooms) < 0.7 and max(zooms) > 1.3
    assert augment.draw_zoom(rng, AugmentConfig(resize_prob=1.0), train=False) == 1.0
    with pytest.raises(ValueError, match="resize_range"):
        AugmentConfig(resize_range=(1.5, 0.5))


@pytest.mark.parametrize("zoom", [0.5, 0.8, 1.0, 1.25, 1.5])
def test_zoom_geometry_reports_the_zoom_it_applied(zoom):
    rng = np.random.default_rng(1)
    size, aspect = (192, 320), 320 / 192
    reference = augment.Geometry(augment.centre_crop_box(480, 640, aspect), size, False)
    zoomed = augment.zoomed_size(size, zoom)
    box = augment.zoom_box(rng, 480, 640, zoomed[1] / zoomed[0] if zoom < 1 else aspect, zoom)
    geometry = augment.Geometry(box, zoomed, False)
    x0, y0, w, h = box
    assert x0 >= 0 and x0 + w <= 640 and y0 >= 0 and y0 + h <= 480
    assert zoomed[0] % 32 == 0 and zoomed[1] % 32 == 0
    # Sides are rounded to multiples of 32 (zoom out) or whole pixels (zoom in): the factor is the one applied.
    factor = augment.zoom_factor(geometry, reference)
    assert factor == pytest.approx(zoom, rel=0.1)
    # The pixel focal length grows by the factor: what makes the scene look 1/factor as far.
    k = augment.pixel_intrinsics(np.array([0.8, 1.1, 0.5, 0.5]), 480, 640)
    ref_k, new_k = augment.transform_intrinsics(k, reference), augment.transform_intrinsics(k, geometry)
    assert np.sqrt(new_k[0, 0] * new_k[1, 1] / (ref_k[0, 0] * ref_k[1, 1])) == pytest.approx(factor, rel=1e-9)
