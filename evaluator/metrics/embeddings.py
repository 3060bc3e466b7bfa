"""Metrics in CLIP embedding space (rows are L2-normalised, so dot products are cosines)."""

from __future__ import annotations

import numpy as np

CMMD_SIGMA = 10.0
CMMD_SCALE = 1000.0


def mean_offdiag(sim: np.ndarray) -> float | None:
    n = sim.shape[0]
    if n < 2:
        return None
    return float((sim.sum() - np.trace(sim)) / (n * (n - 1)))


def clip_t(image_emb: np.ndarray, text_emb: np.ndarray) -> float:
    """Mean cosine of each image with its own prompt."""
    return float(np.mean(np.sum(image_emb * text_emb, axis=1)))


def clip_i(sample_emb: np.ndarray, ref_emb: np.ndarray) -> float:
    return float(np.mean(sample_emb @ ref_emb.T))


def diversity(sample_emb: np.ndarray) -> float | None:
    m = mean_offdiag(sample_emb @ sample_emb.T)
    return None if m is None else 1.0 - m


def max_ref_sim(sample_emb: np.ndarray, ref_emb: np.ndarray) -> float:
    return float(np.max(sample_emb @ ref_emb.T))


def cmmd(x: np.ndarray, y: np.ndarray, sigma: float = CMMD_SIGMA) -> float | None:
    """Unbiased MMD^2 with an RBF kernel exp(-|a-b|^2 / (2 sigma^2)), x1000 (CMMD, Jayasumana et al. 2024).

    Unbiased means it can be slightly negative when both sets come from one distribution."""
    if len(x) < 2 or len(y) < 2:
        return None
    gamma = 1.0 / (2 * sigma**2)

    def k(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T
        return np.exp(-gamma * np.maximum(d, 0))

    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    m, n = len(x), len(y)
    value = ((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
             - 2 * kxy.mean())
    return float(value * CMMD_SCALE)
