"""Metrics in CLIP embedding space. Rows are L2-normalised, so dot products are cosines."""

from __future__ import annotations

import numpy as np

CMMD_SIGMA = 10.0
CMMD_SCALE = 1000.0


def mean_offdiag(sim: np.ndarray) -> float | None:
    """Mean of a square similarity matrix without its diagonal (None below 2 rows)."""
    n = sim.shape[0]
    if n < 2:
        return None
    return float((sim.sum(dtype=np.float64) - np.trace(sim, dtype=np.float64)) / (n * (n - 1)))


def clip_t(image_emb: np.ndarray, text_emb: np.ndarray) -> float:
    """Mean cosine of each image with its own prompt (row i with row i)."""
    return float(np.mean(np.sum(image_emb * text_emb, axis=1, dtype=np.float64)))


def clip_i(sample_emb: np.ndarray, ref_emb: np.ndarray) -> float:
    """Mean cosine over every (sample, reference) pair."""
    return float(np.mean(sample_emb @ ref_emb.T, dtype=np.float64))


def ref_self_sim(ref_emb: np.ndarray) -> float | None:
    """Mean pairwise cosine among the references: what clip_i would be for a perfect sampler."""
    return mean_offdiag(ref_emb @ ref_emb.T)


def diversity(sample_emb: np.ndarray) -> float | None:
    """1 - mean pairwise cosine among samples (0 when all are one image; None below 2 samples)."""
    m = mean_offdiag(sample_emb @ sample_emb.T)
    return None if m is None else 1.0 - m


def max_ref_sim(sample_emb: np.ndarray, ref_emb: np.ndarray) -> float:
    """Highest cosine of any sample to any reference: near 1 means a training image was reproduced."""
    return float(np.max(sample_emb @ ref_emb.T))


def cmmd(x: np.ndarray, y: np.ndarray, sigma: float = CMMD_SIGMA) -> float | None:
    """Unbiased MMD^2 between two embedding sets, RBF kernel, x1000 (CMMD, Jayasumana et al. 2024).

    k(a, b) = exp(-gamma |a - b|^2) with gamma = 1 / (2 sigma^2), sigma = 10 and the x1000 scale as in the
    paper's reference code. That code averages the full kernel matrices (the biased V-statistic); here
    the diagonals of k(x, x) and k(y, y) are left out (the unbiased U-statistic), so two sets drawn from one
    distribution give about 0 and can give slightly negative values. None below 2 rows per set."""
    if len(x) < 2 or len(y) < 2:
        return None
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    gamma = 1.0 / (2 * sigma**2)

    def k(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T
        return np.exp(-gamma * np.maximum(d, 0))

    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    m, n = len(x), len(y)
    value = ((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
             - 2 * kxy.mean())
    return float(value * CMMD_SCALE)
