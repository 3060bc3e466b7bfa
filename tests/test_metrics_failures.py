"""Failure detection: known answers for every failure kind, and real textures that must not be flagged."""

from __future__ import annotations

import numpy as np
import pytest
from _metrics_helpers import blurred_checkerboard, fine_lines, gradient, nan_image, photo_like, pure_noise, scene, speck

from evaluator.metrics import load_image
from evaluator.metrics.failures import dominant_colour_share, failure_reason, max_neighbour_correlation


def small_object(size: int = 64, side: int = 10) -> np.ndarray:
    img = np.ones((size, size, 3), np.float32)
    img[20:20 + side, 30:30 + side] = (0.2, 0.3, 0.6)
    return img


@pytest.mark.parametrize("kind", ["uniform", "gaussian", "grey"])
@pytest.mark.parametrize("size", [64, 512])
def test_pure_noise_is_a_failure(kind, size):
    img = pure_noise(3, size, kind)
    assert abs(max_neighbour_correlation(img)) < 0.06
    assert failure_reason(img) == "noise"


@pytest.mark.parametrize("image, reason", [
    (speck(), "near_constant"),  # a black image with one white pixel
    (speck(value=0.0, background=1.0), "near_constant"),  # white with one black pixel
    (speck(value=0.9, background=0.4, count=20), "near_constant"),  # grey with 20 specks (< 1 %)
    (np.zeros((64, 64, 3), np.float32), "black"),
    (np.full((64, 64, 3), 0.6, np.float32), "flat"),
    (nan_image(), "nan"),
])
def test_broken_outputs_are_failures_with_their_reason(image, reason):
    assert failure_reason(image) == reason


def test_nsfw_flag_wins():
    assert failure_reason(scene(1), nsfw=True) == "nsfw_filtered"


@pytest.mark.parametrize("name, image", [
    ("gradient", gradient()),
    ("blurred checkerboard", blurred_checkerboard()),
    ("1-px checkerboard", blurred_checkerboard(cell=1, sigma=0.01)),
    ("photo-like 1/f noise with grain", photo_like(0)),
    ("photo-like 512 px", photo_like(1, 512)),
    ("thin diagonal lines", fine_lines()),
    ("synthetic scene", scene(4)),
    ("scene with heavy grain", np.clip(scene(4) + np.random.default_rng(0).normal(0, 0.08, (64, 64, 3)), 0, 1)),
    ("small object on white (2.4 % of the frame)", small_object()),
])
def test_real_textures_are_not_flagged(name, image):
    assert failure_reason(image.astype(np.float32)) is None, name


def test_demo_dataset_images_are_not_flagged(demo_assets):
    paths = sorted(demo_assets.dataset_dir.rglob("*.png"))
    assert len(paths) >= 12
    for p in paths:
        img = load_image(p)
        assert failure_reason(img) is None, p.name
        assert max_neighbour_correlation(img) > 0.8 and dominant_colour_share(img) < 0.99, p.name


def test_dominant_colour_share_known_values():
    assert dominant_colour_share(speck()) == pytest.approx(1 - 1 / 4096)
    half = np.zeros((10, 10, 3), np.float32)
    half[:, :5] = 1.0
    assert dominant_colour_share(half) <= 0.5


@pytest.mark.parametrize("seed", range(40))
def test_the_variance_bound_never_spares_a_near_constant_image_the_median(seed):
    """failure_reason skips the median when a channel varies too much for 99 % of the pixels to sit near it.
    Frames built at the edge: one colour with noise inside the tolerance, plus up to 1 % outliers at 0 or 1
    (the most variance a near-constant frame can have): each is near-constant, and the bound must say so."""
    from evaluator.metrics.failures import NEAR_SHARE, NEAR_TOLERANCE, _may_be_near_constant, _planes

    rng = np.random.default_rng(seed)
    size = int(rng.integers(16, 96))
    img = rng.uniform(0.05, 0.95, 3) + rng.uniform(-NEAR_TOLERANCE / 2, NEAR_TOLERANCE / 2, (size, size, 3))
    count = int((1 - NEAR_SHARE) * size * size * rng.uniform(0.5, 1.0))
    where = rng.choice(size * size, count, replace=False)
    img.reshape(-1, 3)[where] = rng.choice([0.0, 1.0], size=(count, 3))
    img = np.clip(img, 0, 1).astype(np.float32)
    assert dominant_colour_share(img) >= NEAR_SHARE
    assert _may_be_near_constant(_planes(img)) and failure_reason(img) == "near_constant"
    assert not _may_be_near_constant(_planes(scene(seed, size)))  # a picture is spared the median
