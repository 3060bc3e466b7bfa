"""Colour distance to the references in CIE Lab: sliced Wasserstein distance of the pixel clouds, and
CIEDE2000 between mean colours. Both are 0 for identical sets and grow with a colour shift."""

from __future__ import annotations

import numpy as np

N_PROJECTIONS = 64
N_QUANTILES = 128
MAX_PIXELS = 8192


def _projections() -> np.ndarray:
    dirs = np.random.default_rng(0).normal(size=(N_PROJECTIONS, 3))
    return dirs / np.linalg.norm(dirs, axis=1, keepdims=True)


_DIRS = _projections()


def lab(image: np.ndarray) -> np.ndarray:
    from skimage.color import rgb2lab

    return rgb2lab(np.clip(image[..., :3], 0, 1))


def lab_pixels(images: list[np.ndarray]) -> np.ndarray:
    """A deterministic subsample of every image's Lab pixels, (N, 3)."""
    pix = np.concatenate([lab(im).reshape(-1, 3) for im in images])
    if len(pix) > MAX_PIXELS:
        idx = np.random.default_rng(0).choice(len(pix), MAX_PIXELS, replace=False)
        pix = pix[np.sort(idx)]
    return pix


def sliced_wasserstein(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over fixed directions of the 1-D Wasserstein distance, compared at fixed quantiles so sets
    of different sizes work."""
    qs = np.linspace(0, 1, N_QUANTILES)
    pa, pb = a @ _DIRS.T, b @ _DIRS.T
    return float(np.mean(np.abs(np.quantile(pa, qs, axis=0) - np.quantile(pb, qs, axis=0))))


def delta_e2000_of_means(sample_lab_pixels: np.ndarray, reference_mean: np.ndarray) -> float:
    """CIEDE2000 between the samples' mean Lab colour and the references' mean Lab colour: the overall
    colour cast a person would notice (0 for identical sets; about 2.3 is a just-noticeable difference)."""
    from skimage.color import deltaE_ciede2000

    return float(deltaE_ciede2000(sample_lab_pixels.mean(axis=0), reference_mean))
