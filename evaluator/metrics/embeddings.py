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
    """CMMD (Jayasumana et al. 2024, "Rethinking FID"): MMD^2 between two embedding sets, x1000.

    The paper's estimator (its reference code ``cmmd/distance.py``): Gaussian RBF kernel
    k(a, b) = exp(-|a - b|^2 / (2 sigma^2)), sigma = 10, and the full kernel means, diagonals included:
    mean k(x, x) + mean k(y, y) - 2 mean k(x, y). That is the squared distance between the two sets' mean
    embeddings in the kernel's feature space, so it is >= 0, exactly 0 for identical sets and grows with
    the distance between them. Tiny negative rounding residue is clipped to 0. With few images it carries
    a positive floor: two independent draws of m and n images from one distribution give about
    1000 (1/m + 1/n) (1 - mean k between distinct images). None below 2 rows per set."""
    if len(x) < 2 or len(y) < 2:
        return None
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    gamma = 1.0 / (2 * sigma**2)

    def k(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T
        return np.exp(-gamma * np.maximum(d, 0))

    value = k(x, x).mean() + k(y, y).mean() - 2 * k(x, y).mean()
    return float(max(value, 0.0) * CMMD_SCALE)


def cmmd_floor(n_x: int, n_y: int, mean_cosine: float, sigma: float = CMMD_SIGMA) -> float | None:
    """About what ``cmmd`` gives for two sets of n_x and n_y unit embeddings drawn from one distribution
    whose distinct members have mean cosine ``mean_cosine``: the small-sample floor (x1000).

    For unit vectors |a - b|^2 = 2 - 2 cos, so 1 - k = 1 - exp(-(1 - cos) / sigma^2)."""
    if n_x < 1 or n_y < 1:
        return None
    return float(CMMD_SCALE * (1 / n_x + 1 / n_y) * (1 - np.exp(-(1 - mean_cosine) / sigma**2)))
