"""The torch SSIM, Lab conversion and colour distances give scikit-image's values (the implementation they
replaced, in tests/_skimage_reference.py) on synthetic images: identical, colour-shifted, noisy, other.

Tolerances (absolute): SSIM 2e-5 (both run in float32; the torch one centres the images first and lands
closer to a float64 computation than scikit-image does); Lab values 1e-3 Lab units (torch runs float64,
scikit-image float32 on these float32 images); the sliced Wasserstein distance 1e-3 and CIEDE2000 1e-3
(Lab units, on Lab inputs of either); CIEDE2000 of the same Lab input 1e-9. The reference mean colour is
taken in float64: the replaced code averaged scikit-image's float32 Lab in float32, which alone moved the
mean by up to 6e-3 Lab units and CIEDE2000 by about 1e-3 on these images.
"""

from __future__ import annotations

import numpy as np
import pytest

import _skimage_reference as ref
from _metrics_helpers import hue_shift, scene
from evaluator.metrics import color, structure

SSIM_TOL = 2e-5
LAB_TOL = 1e-3
DIST_TOL = 1e-3


def _variants(size: int, seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    a = scene(seed, size)
    return {
        "identical": (a, a.copy()),
        "shifted colour": (a, np.clip(a + np.array([0.1, -0.05, 0.02], np.float32), 0, 1)),
        "hue": (a, hue_shift(a, 0.1)),
        "noise": (a, np.clip(a + rng.normal(0, 0.1, a.shape), 0, 1).astype(np.float32)),
        "other picture": (a, scene(seed + 7, size)),
        "black vs white": (np.zeros_like(a), np.ones_like(a)),
    }


@pytest.mark.parametrize("size", [11, 33, 64, (48, 80)])
def test_ssim_equals_scikit_image(size):
    shape = size if isinstance(size, tuple) else (size, size)
    for what, (a, b) in _variants(max(shape)).items():
        a, b = a[: shape[0], : shape[1]], b[: shape[0], : shape[1]]
        assert structure.ssim(a, b) == pytest.approx(ref.ssim(a, b), abs=SSIM_TOL), (size, what)
    assert structure.ssim(a, a) == 1.0


def test_paired_ssim_equals_scikit_image_with_failures_and_mixed_sizes():
    a = [scene(i, 64) for i in range(4)] + [scene(9, 32)]
    b = [np.clip(im + 0.05 * np.random.default_rng(i).normal(size=im.shape), 0, 1).astype(np.float32)
         for i, im in enumerate(a)]
    b[1] = None
    assert structure.paired_ssim(a, b) == pytest.approx(ref.paired_ssim(a, b), abs=SSIM_TOL)


def test_lab_conversion_equals_scikit_image():
    rng = np.random.default_rng(1)
    images = [scene(i, 48) for i in range(3)] + [rng.uniform(0, 1, (20, 30, 3)).astype(np.float32),
                                                 np.zeros((16, 16, 3), np.float32), np.ones((16, 16, 3), np.float32)]
    np.testing.assert_allclose(color.lab_pixels(images), ref.lab_pixels(images), atol=LAB_TOL, rtol=0)
    big = [scene(i, 256) for i in range(8)]  # subsampled: the same pixels are picked
    np.testing.assert_allclose(color.lab_pixels(big), ref.lab_pixels(big), atol=LAB_TOL, rtol=0)


@pytest.mark.parametrize("size", [64, 200])
def test_colour_distances_equal_scikit_image(size):
    for what, (a, b) in _variants(size).items():
        sa, sb = [a, scene(3, size)], [b, scene(3, size)]
        swd = color.sliced_wasserstein(color.lab_pixels(sa), color.lab_pixels(sb))
        assert swd == pytest.approx(ref.sliced_wasserstein(ref.lab_pixels(sa), ref.lab_pixels(sb)), abs=DIST_TOL), what
        la, lb = ref.lab_pixels(sa).mean(axis=0, dtype=np.float64), ref.lab_pixels(sb).mean(axis=0, dtype=np.float64)
        assert color.delta_e2000(la, lb) == pytest.approx(ref.delta_e2000(la, lb), abs=1e-9), what
        de = color.delta_e2000(color.lab_pixels(sa).mean(axis=0), color.lab_pixels(sb).mean(axis=0))
        assert de == pytest.approx(ref.delta_e2000(la, lb), abs=DIST_TOL), what


def test_sliced_wasserstein_on_the_same_clouds_equals_numpy_quantiles():
    rng = np.random.default_rng(2)
    a, b = rng.normal(50, 20, (1000, 3)), rng.normal(55, 10, (37, 3))  # sizes differ; quantiles interpolate
    assert color.sliced_wasserstein(a, b) == pytest.approx(ref.sliced_wasserstein(a, b), abs=1e-9)


def test_ciede2000_on_hue_wrap_and_grey_pairs_equals_scikit_image():
    """Sharma et al.'s special cases: hues either side of 0/360 degrees, achromatic colours (C = 0)."""
    pairs = [([50, 2.5, 0], [50, 0, -2.5]), ([50, -1, 2], [50, -1, -2]), ([50, 0, 0], [60, 0, 0]),
             ([50, 0, 0], [50, -1, 2]), ([60.2574, -34.0099, 36.2677], [60.4626, -34.1751, 39.4387]),
             ([22.7233, 20.0904, -46.6940], [23.0331, 14.9730, -42.5619])]
    for p, q in pairs:
        assert color.delta_e2000(p, q) == pytest.approx(ref.delta_e2000(p, q), abs=1e-9), (p, q)
