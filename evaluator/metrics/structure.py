"""SSIM between two sample sets, pairing sample i with sample i (same prompt, same seed), so it says how
much the images changed between checkpoints (ssim_prev) or against the base model (ssim_base)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

SIGMA = 1.5
MIN_SIDE = 11  # the Gaussian window (truncate 3.5, sigma 1.5) is 11 px wide
WORKERS = min(8, os.cpu_count() or 1)


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """scikit-image SSIM with a Gaussian window (sigma 1.5), as in Wang et al. 2004; 1 for identical images."""
    from skimage.metrics import structural_similarity

    return float(structural_similarity(a, b, data_range=1.0, channel_axis=-1, gaussian_weights=True, sigma=SIGMA,
                                       use_sample_covariance=False))


def paired_ssim(a: Sequence[np.ndarray | None], b: Sequence[np.ndarray | None], workers: int = WORKERS) -> float | None:
    """Mean SSIM over indices where both samples exist (None marks a failed one) and have the same shape.

    Pairs run in threads: the Gaussian filters release the GIL. None when no pair qualifies."""
    pairs = [(x, y) for x, y in zip(a, b)
             if x is not None and y is not None and x.shape == y.shape and min(x.shape[:2]) >= MIN_SIDE]
    if not pairs:
        return None
    if len(pairs) == 1 or workers <= 1:
        values = [ssim(x, y) for x, y in pairs]
    else:
        with ThreadPoolExecutor(max_workers=min(workers, len(pairs))) as pool:
            values = list(pool.map(lambda p: ssim(*p), pairs))
    return float(np.mean(values))
