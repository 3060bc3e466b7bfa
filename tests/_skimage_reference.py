"""The scikit-image implementations the torch metrics replaced, kept as the reference they are tested
(tests/test_speed_metrics_torch.py) and timed (bench/bench_metrics.py) against."""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from evaluator.metrics.color import _QUANTILES, DIRECTIONS, MAX_PIXELS, _pixel_index


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    from skimage.metrics import structural_similarity

    return float(structural_similarity(a, b, data_range=1.0, channel_axis=-1, gaussian_weights=True, sigma=1.5,
                                       use_sample_covariance=False))


def paired_ssim(a: Sequence[np.ndarray | None], b: Sequence[np.ndarray | None],
                workers: int = min(8, os.cpu_count() or 1)) -> float | None:
    """Pairs in threads, as before (scipy's filters release the GIL)."""
    pairs = [(x, y) for x, y in zip(a, b)
             if x is not None and y is not None and x.shape == y.shape and min(x.shape[:2]) >= 11]
    if not pairs:
        return None
    if len(pairs) == 1 or workers <= 1:
        return float(np.mean([ssim(x, y) for x, y in pairs]))
    with ThreadPoolExecutor(max_workers=min(workers, len(pairs))) as pool:
        return float(np.mean(list(pool.map(lambda p: ssim(*p), pairs))))


def lab_pixels(images: Sequence[np.ndarray], max_pixels: int = MAX_PIXELS) -> np.ndarray:
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
    qa = np.quantile(a @ DIRECTIONS.T, _QUANTILES, axis=0)
    qb = np.quantile(b @ DIRECTIONS.T, _QUANTILES, axis=0)
    return float(np.mean(np.abs(qa - qb)))


def delta_e2000(lab_a, lab_b) -> float:
    from skimage.color import deltaE_ciede2000

    return float(deltaE_ciede2000(np.asarray(lab_a, np.float64), np.asarray(lab_b, np.float64)))
