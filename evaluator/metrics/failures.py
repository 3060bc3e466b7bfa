"""Samples that failed outright. They count in ``failure_rate`` and are left out of every other metric,
so one diverged image does not drag the CLIP or colour numbers of the rest."""

from __future__ import annotations

import numpy as np

BLACK_MAX = 0.02  # brightest value of an all-black frame (about 5/255)
FLAT_STD = 0.002  # one flat colour (std below half a PNG code): a diverged model often outputs one

NSFW = "nsfw_filtered"
NAN = "nan"
BLACK = "black"
FLAT = "flat"


def failure_reason(image: np.ndarray, nsfw: bool = False) -> str | None:
    """Why ``image`` counts as a failure (``nsfw_filtered``, ``nan``, ``black``, ``flat``), or None.

    NaN or inf anywhere fails the image: a partly diverged LoRA is still diverged."""
    if nsfw:
        return NSFW
    if image.size == 0 or not np.isfinite(image).all():
        return NAN
    if float(image.max()) < BLACK_MAX:
        return BLACK
    if float(image.std()) < FLAT_STD:
        return FLAT
    return None
