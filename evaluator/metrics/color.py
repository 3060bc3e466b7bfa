"""Colour distance to the references in CIE Lab (D65): the sliced Wasserstein distance of the pixel
clouds, and CIEDE2000 between the mean colours. Both are 0 for identical sets and grow with a colour
shift. Pixels are subsampled deterministically before the Lab conversion, so the cost does not grow
with resolution and the same images always give the same numbers."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

N_PROJECTIONS = 64
N_QUANTILES = 256
MAX_PIXELS = 32768  # over the whole set: enough for stable quantiles and mean colours
SEED = 0


def _directions() -> np.ndarray:
    dirs = np.random.default_rng(SEED).normal(size=(N_PROJECTIONS, 3))
    return dirs / np.linalg.norm(dirs, axis=1, keepdims=True)


DIRECTIONS = _directions()  # fixed unit vectors in Lab space, the same for every run
_QUANTILES = (np.arange(N_QUANTILES) + 0.5) / N_QUANTILES


def _pixel_index(n_pixels: int, k: int) -> np.ndarray:
    """The same k pixel positions for every image with n_pixels pixels (all of them when k >= n)."""
    if k >= n_pixels:
        return np.arange(n_pixels)
    return np.sort(np.random.default_rng(SEED).choice(n_pixels, k, replace=False))


def lab_pixels(images: Sequence[np.ndarray], max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Lab values of a deterministic subsample of every image's pixels, (M, 3) float64.

    Each image gives the same share (max_pixels / len(images)), so the set's colours are weighted by image,
    not by resolution."""
    from skimage.color import rgb2lab

    if not images:
        return np.zeros((0, 3))
    per_image = max(1, -(-max_pixels // len(images)))
    picked = []
    for im in images:
        flat = np.asarray(im, np.float32)[..., :3].reshape(-1, 3)
        picked.append(flat[_pixel_index(len(flat), per_image)])
    rgb = np.clip(np.concatenate(picked), 0, 1)
    return rgb2lab(rgb[:, None, :]).reshape(-1, 3)


def sliced_wasserstein(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over the fixed directions of the 1-D Wasserstein-1 distance between the projected clouds.

    Each 1-D distance is the mean absolute difference of N_QUANTILES quantiles, so sets of different
    sizes compare fine. Lab units (L runs 0..100)."""
    qa = np.quantile(a @ DIRECTIONS.T, _QUANTILES, axis=0)
    qb = np.quantile(b @ DIRECTIONS.T, _QUANTILES, axis=0)
    return float(np.mean(np.abs(qa - qb)))


def delta_e2000(lab_a: np.ndarray, lab_b: np.ndarray) -> float:
    """CIEDE2000 between two Lab colours (about 2.3 is a just-noticeable difference)."""
    from skimage.color import deltaE_ciede2000

    return float(deltaE_ciede2000(np.asarray(lab_a, np.float64), np.asarray(lab_b, np.float64)))
