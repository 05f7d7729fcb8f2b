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
    return ((1 - a) * (1 - b) * image[y0, x0] + a * (1 - b) * image[y0, x0 + 1]
            + (1 - a) * b * image[y0 + 1, x0] + a * b * image[y0 + 1, x0 + 1])


@pytest.mark.parametrize("box,size,flip", [
    ((0, 0, 240, 160), (160, 240), False),  # identity
    ((30, 10, 180, 120), (96, 144), False),  # crop and shrink
    ((30, 10, 180, 120), (256, 384), True),  # crop, enlarge, flip
    ((0, 20, 240, 100), (64, 160), True),  # anisotropic
])
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
