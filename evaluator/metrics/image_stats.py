"""Per-image statistics a person would eyeball: brightness, contrast, saturation, clipping."""

from __future__ import annotations

import numpy as np

STAT_NAMES = ("brightness", "contrast_rms", "saturation", "clipped_fraction")
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def luma(image: np.ndarray) -> np.ndarray:
    return image[..., :3] @ _LUMA


def image_stats(image: np.ndarray) -> dict[str, float]:
    """brightness: mean luma in [0,1]; contrast_rms: std of luma; saturation: mean HSV saturation;
    clipped_fraction: share of channel values at 0 or 1 (blown highlights, crushed shadows)."""
    y = luma(image)
    mx, mn = image.max(axis=-1), image.min(axis=-1)
    sat = np.where(mx > 1e-6, (mx - mn) / np.maximum(mx, 1e-6), 0.0)
    clipped = (image <= 1.0 / 255) | (image >= 254.0 / 255)
    return {"brightness": float(y.mean()), "contrast_rms": float(y.std()), "saturation": float(sat.mean()),
            "clipped_fraction": float(clipped.mean())}


def mean_stats(images: list[np.ndarray]) -> dict[str, float] | None:
    if not images:
        return None
    per = [image_stats(im) for im in images]
    return {k: float(np.mean([p[k] for p in per])) for k in STAT_NAMES}
