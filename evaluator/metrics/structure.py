"""SSIM between two sample sets, pairing sample i with sample i (same prompt, same seed)."""

from __future__ import annotations

import numpy as np


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """scikit-image SSIM, Gaussian window (sigma 1.5), as in Wang et al. 2004."""
    from skimage.metrics import structural_similarity

    return float(structural_similarity(a, b, data_range=1.0, channel_axis=-1, gaussian_weights=True, sigma=1.5,
                                       use_sample_covariance=False))


def paired_ssim(a: list[np.ndarray | None], b: list[np.ndarray | None]) -> float | None:
    """Mean SSIM over indices where both samples exist, did not fail, and have the same shape."""
    values = [ssim(x, y) for x, y in zip(a, b) if x is not None and y is not None and x.shape == y.shape]
    return float(np.mean(values)) if values else None
