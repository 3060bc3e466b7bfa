"""Per-image statistics a person would eyeball: brightness, contrast, saturation, clipping.

Each is computed per image and averaged over the images, so one large image does not outweigh others."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

STAT_NAMES = ("brightness", "contrast_rms", "saturation", "clipped_fraction")
LUMA = np.array([0.299, 0.587, 0.114], np.float32)  # Rec. 601, on the sRGB values as stored
CLIP_LOW = 0.5 / 255  # values that an 8-bit PNG stores as 0 ...
CLIP_HIGH = 254.5 / 255  # ... or as 255


def image_stats(image: np.ndarray) -> dict[str, float]:
    """Statistics of one HxWx3 image in [0, 1].

    brightness: mean luma; contrast_rms: standard deviation of luma; saturation: mean HSV saturation
    (max - min) / max (0 for black); clipped_fraction: share of channel values stored as 0 or 255."""
    return {k: float(v[0]) for k, v in _batch_stats(image[None]).items()}


def mean_stats(images: Sequence[np.ndarray]) -> dict[str, float] | None:
    """Mean of each statistic over ``images`` (None when there are none). Same-size images go as one batch."""
    if not images:
        return None
    groups: dict[tuple[int, ...], list[np.ndarray]] = {}
    for im in images:
        groups.setdefault(im.shape, []).append(im)
    per: dict[str, list[np.ndarray]] = {k: [] for k in STAT_NAMES}
    for same in groups.values():
        for k, v in _batch_stats(np.stack(same)).items():
            per[k].append(v)
    return {k: float(np.concatenate(v).mean()) for k, v in per.items()}


def _batch_stats(x: np.ndarray) -> dict[str, np.ndarray]:
    x = np.asarray(x[..., :3], np.float32)
    n = x.shape[0]
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    y = (LUMA[0] * r + LUMA[1] * g + LUMA[2] * b).reshape(n, -1)
    mx, mn = np.maximum(np.maximum(r, g), b), np.minimum(np.minimum(r, g), b)
    sat = ((mx - mn) / np.maximum(mx, 1e-6)).reshape(n, -1)  # 0 where mx = 0 since then mx - mn = 0
    clipped = np.count_nonzero(((x <= CLIP_LOW) | (x >= CLIP_HIGH)).reshape(n, -1), axis=1) / (x[0].size)
    return {"brightness": y.mean(axis=1, dtype=np.float64), "contrast_rms": y.std(axis=1, dtype=np.float64),
            "saturation": sat.mean(axis=1, dtype=np.float64), "clipped_fraction": clipped}
