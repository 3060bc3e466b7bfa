"""Samples that failed outright: they count in failure_rate and are left out of every other metric."""

from __future__ import annotations

import numpy as np

BLACK_MAX = 0.02  # brightest value of an all-black frame
FLAT_STD = 0.002  # a single flat colour: a diverged model often outputs one


def failure_reason(image: np.ndarray, nsfw: bool = False) -> str | None:
    if nsfw:
        return "nsfw_filtered"
    if not np.isfinite(image).all():
        return "nan"
    if float(image.max()) < BLACK_MAX:
        return "black"
    if float(image.std()) < FLAT_STD:
        return "flat"
    return None
