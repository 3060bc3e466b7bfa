"""Image statistics, SSIM and the failure check on constructed images with known values."""

from __future__ import annotations

import numpy as np
import pytest

from evaluator.metrics.failures import failure_reason
from evaluator.metrics.image_stats import image_stats, mean_stats
from evaluator.metrics.structure import paired_ssim, ssim
from _metrics_helpers import nan_image, scene


def test_half_white_half_grey():
    img = np.full((10, 10, 3), 0.5, np.float32)
    img[:5] = 1.0
    s = image_stats(img)
    assert s["clipped_fraction"] == pytest.approx(0.5)
    assert s["brightness"] == pytest.approx(0.75) and s["contrast_rms"] == pytest.approx(0.25)
    assert s["saturation"] == 0


def test_checkerboard_and_pure_colours():
    board = np.zeros((8, 8, 3), np.float32)
    board[::2, ::2] = board[1::2, 1::2] = 1.0
    s = image_stats(board)
    assert s["brightness"] == pytest.approx(0.5) and s["contrast_rms"] == pytest.approx(0.5)
    assert s["clipped_fraction"] == 1.0 and s["saturation"] == 0
    red = np.zeros((4, 4, 3), np.float32)
    red[..., 0] = 1
    s = image_stats(red)
    assert s["saturation"] == 1 and s["brightness"] == pytest.approx(0.299) and s["contrast_rms"] == 0
    pastel = np.tile(np.array([0.8, 0.4, 0.4], np.float32), (4, 4, 1))
    assert image_stats(pastel)["saturation"] == pytest.approx(0.5)
    assert image_stats(pastel)["clipped_fraction"] == 0
    # clipped = what an 8-bit PNG stores as 0 or 255
    assert image_stats(np.full((4, 4, 3), 254.6 / 255, np.float32))["clipped_fraction"] == 1
    assert image_stats(np.full((4, 4, 3), 254.4 / 255, np.float32))["clipped_fraction"] == 0
    assert image_stats(np.full((4, 4, 3), 0.4 / 255, np.float32))["clipped_fraction"] == 1
    assert image_stats(np.full((4, 4, 3), 0.6 / 255, np.float32))["clipped_fraction"] == 0


def test_mean_stats_average_per_image_whatever_the_size():
    small = np.ones((2, 2, 3), np.float32)
    large = np.zeros((50, 50, 3), np.float32)
    large[...] = 0.5
    m = mean_stats([small, large])
    assert m["brightness"] == pytest.approx(0.75) and m["clipped_fraction"] == pytest.approx(0.5)
    assert mean_stats([]) is None


def test_ssim_is_one_for_identical_images_and_falls_with_noise():
    img = scene(0)
    rng = np.random.default_rng(0)
    noisy = [np.clip(img + a * rng.normal(size=img.shape), 0, 1).astype(np.float32) for a in (0.02, 0.1, 0.3)]
    assert ssim(img, img.copy()) == pytest.approx(1.0)
    values = [ssim(img, n) for n in noisy]
    assert 1 > values[0] > values[1] > values[2]


def test_paired_ssim_pairs_by_index_and_skips_failed_or_mismatched():
    a = [scene(0), scene(1), scene(2)]
    assert paired_ssim(a, [x.copy() for x in a]) == pytest.approx(1.0)
    swapped = [a[1], a[0], a[2]]
    assert paired_ssim(a, swapped) < 0.9  # sample i meets sample i, not any sample
    assert paired_ssim(a, [None, a[1], None]) == pytest.approx(1.0)  # failed pairs are skipped
    assert paired_ssim(a, [scene(0, 32), None, None]) is None  # other resolution: not comparable
    assert paired_ssim([np.ones((4, 4, 3))], [np.ones((4, 4, 3))]) is None  # smaller than the window
    assert paired_ssim(a, a, workers=1) == paired_ssim(a, a, workers=3)


def test_failure_reasons():
    assert failure_reason(scene(0)) is None
    assert failure_reason(nan_image()) == "nan"
    inf = scene(0)
    inf[0, 0, 0] = np.inf
    assert failure_reason(inf) == "nan"
    assert failure_reason(np.zeros((8, 8, 3), np.float32)) == "black"
    assert failure_reason(np.full((8, 8, 3), 0.015, np.float32)) == "black"
    assert failure_reason(np.full((8, 8, 3), 0.6, np.float32)) == "flat"
    assert failure_reason(scene(0), nsfw=True) == "nsfw_filtered"
    dark_but_drawn = scene(0) * 0.1  # a dark picture, not a failure
    assert failure_reason(dark_but_drawn) is None
