"""Samples that failed outright. They count in ``failure_rate`` and are left out of every other metric,
so one diverged image does not drag the CLIP or colour numbers of the rest.

The checks, in order (the first that applies names the reason):

- ``nsfw_filtered``: the pipeline's safety checker blanked it;
- ``nan``: any NaN or infinite value (a diverged LoRA);
- ``black``: brightest value below 0.02 (about 5/255);
- ``flat``: one colour, standard deviation below 0.002 (under half an 8-bit step);
- ``near_constant``: at least 99 % of the pixels within 0.02 (about 5 codes, every channel) of the median
  colour, e.g. a black frame with one white pixel or a few specks;
- ``noise``: pure pixel noise, i.e. neighbouring pixels are unrelated: the lag-1 autocorrelation is below
  0.2 in each colour channel and each of four directions (horizontal, vertical, both diagonals). Real
  images, including fine textures, thin lines, blurred checkerboards and gradients, correlate strongly in
  at least one (photos: above 0.8); i.i.d. noise gives about 0 in all twelve (±0.05 at 64 px).
"""

from __future__ import annotations

import numpy as np

BLACK_MAX = 0.02  # brightest value of an all-black frame (about 5/255)
FLAT_STD = 0.002  # one flat colour (std below half a PNG code): a diverged model often outputs one
NEAR_TOLERANCE = 0.02  # a pixel "is" the dominant colour when every channel is this close to the median
NEAR_SHARE = 0.99  # ... and a frame is near-constant when this share of its pixels is
NOISE_MAX_CORRELATION = 0.2  # i.i.d. noise: |r| < 0.05 at 64 px; the demo's outlined shapes: > 0.9
MIN_NOISE_SIDE = 8  # below this many pixels a side, the noise test is not made

NSFW = "nsfw_filtered"
NAN = "nan"
BLACK = "black"
FLAT = "flat"
NEAR_CONSTANT = "near_constant"
NOISE = "noise"
REASONS = (NSFW, NAN, BLACK, FLAT, NEAR_CONSTANT, NOISE)


def failure_reason(image: np.ndarray, nsfw: bool = False) -> str | None:
    """Why ``image`` counts as a failure (one of ``REASONS``), or None for a sound image.

    NaN or inf anywhere fails the image: a partly diverged LoRA is still diverged."""
    if nsfw:
        return NSFW
    if image.size == 0 or not np.isfinite(image).all():
        return NAN
    if float(image.max()) < BLACK_MAX:
        return BLACK
    if float(image.std()) < FLAT_STD:
        return FLAT
    if dominant_colour_share(image) >= NEAR_SHARE:
        return NEAR_CONSTANT
    if min(image.shape[:2]) >= MIN_NOISE_SIDE and max_neighbour_correlation(image) < NOISE_MAX_CORRELATION:
        return NOISE
    return None


def dominant_colour_share(image: np.ndarray) -> float:
    """Share of pixels whose every channel lies within NEAR_TOLERANCE of the image's median colour."""
    px = np.asarray(image, np.float32).reshape(-1, image.shape[-1])
    median = np.median(px, axis=0)
    return float(np.mean(np.all(np.abs(px - median) <= NEAR_TOLERANCE, axis=1)))


def max_neighbour_correlation(image: np.ndarray) -> float:
    """Highest lag-1 autocorrelation over the colour channels and four directions (1 = smooth, about 0 =
    i.i.d. noise). Channels with no variance are skipped; 0 for a constant image."""
    a = np.asarray(image, np.float64)
    a = a[..., None] if a.ndim == 2 else a[..., :3]
    a = a - a.mean(axis=(0, 1))
    var = (a * a).mean(axis=(0, 1))
    ok = var > 1e-12
    if not ok.any():
        return 0.0
    pairs = ((a[:, 1:], a[:, :-1]), (a[1:, :], a[:-1, :]), (a[1:, 1:], a[:-1, :-1]), (a[1:, :-1], a[:-1, 1:]))
    return max(float(np.max((x * y).mean(axis=(0, 1))[ok] / var[ok])) for x, y in pairs)
