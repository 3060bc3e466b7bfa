"""Colour distances in Lab on images whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.color import rgb2lab

from evaluator.metrics.color import DIRECTIONS, delta_e2000, lab_pixels, sliced_wasserstein
from _metrics_helpers import hue_shift, scene


def _swd(a_images, b_images) -> float:
    return sliced_wasserstein(lab_pixels(a_images), lab_pixels(b_images))


def _de(a_images, b_images) -> float:
    return delta_e2000(lab_pixels(a_images).mean(axis=0), lab_pixels(b_images).mean(axis=0))


def test_identical_sets_are_zero_apart():
    images = [scene(i, 96) for i in range(4)]
    assert _swd(images, [im.copy() for im in images]) == 0.0
    assert _de(images, [im.copy() for im in images]) == 0.0


def test_projection_directions_are_fixed_unit_vectors():
    assert DIRECTIONS.shape == (64, 3) and np.allclose(np.linalg.norm(DIRECTIONS, axis=1), 1)
    from evaluator.metrics.color import _directions

    assert np.array_equal(_directions(), DIRECTIONS)


def test_swd_of_two_flat_colours_is_the_mean_projected_lab_difference():
    """Every pixel of a is colour p, of b colour q: each 1-D distance is |(p - q) . u| exactly."""
    p_rgb, q_rgb = np.array([0.8, 0.3, 0.2], np.float32), np.array([0.2, 0.5, 0.7], np.float32)
    a = [np.tile(p_rgb, (20, 30, 1))]
    b = [np.tile(q_rgb, (10, 10, 1)), np.tile(q_rgb, (40, 8, 1))]  # other sizes and counts
    d = rgb2lab(p_rgb[None, None].astype(np.float64))[0, 0] - rgb2lab(q_rgb[None, None].astype(np.float64))[0, 0]
    assert _swd(a, b) == pytest.approx(np.mean(np.abs(DIRECTIONS @ d)), rel=1e-6)


def test_delta_e2000_matches_sharma_reference_pair():
    """Pair 1 of Sharma, Wu & Dalal (2005), the CIEDE2000 test data: 2.0425."""
    assert delta_e2000([50.0, 2.6772, -79.7751], [50.0, 0.0, -82.7485]) == pytest.approx(2.0425, abs=1e-4)


def test_planted_hue_shift_raises_both_colour_metrics_monotonically():
    images = [scene(i, 64) for i in range(6)]
    shifts = [0.0, 0.03, 0.08, 0.15, 0.3]
    swd = [_swd([hue_shift(im, s) for im in images], images) for s in shifts]
    de = [_de([hue_shift(im, s) for im in images], images) for s in shifts]
    assert swd[0] < 0.5 and de[0] < 0.1  # hsv round trip only
    assert all(x < y for x, y in zip(swd, swd[1:])), swd
    assert all(x < y for x, y in zip(de, de[1:])), de
    assert de[-1] > 10  # a large shift is far beyond a just-noticeable difference (2.3)


def test_brightness_shift_shows_in_swd_and_different_set_sizes_compare():
    images = [scene(i, 64) for i in range(4)]
    darker = [im * 0.7 for im in images]
    assert _swd(darker, images) > 5
    assert _swd(images[:2] * 3, images[:2]) < 0.5  # the same pictures, repeated: about 0


def test_subsample_is_deterministic_and_bounded():
    big = [scene(i, 256) for i in range(8)]
    a, b = lab_pixels(big), lab_pixels([im.copy() for im in big])
    assert np.array_equal(a, b) and len(a) <= 32768 + 8
    assert len(lab_pixels([scene(0, 16)])) == 256  # small images: every pixel


def test_the_references_quantiles_kept_once_give_the_same_distance():
    """compute_metrics passes the references' projected quantiles, computed once per trial, instead of
    sorting the same reference cloud again at every checkpoint: the distance is the same, bit for bit."""
    from evaluator.metrics.color import projected_quantiles

    a, b = lab_pixels([scene(1), scene(2)]), lab_pixels([scene(3)])
    assert sliced_wasserstein(a, b, b_quantiles=projected_quantiles(b)) == sliced_wasserstein(a, b)
