"""Synthetic images with known properties for the metrics tests (no generation needed)."""

from __future__ import annotations

import numpy as np


def scene(seed: int, size: int = 64) -> np.ndarray:
    """A distinct, deterministic picture: a coloured background, a disc and a bar, quantised like a PNG."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = np.empty((size, size, 3), np.float32)
    img[:] = rng.uniform(0.1, 0.9, 3)
    cy, cx, r = rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7), rng.uniform(0.15, 0.3)
    img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.uniform(0.1, 0.9, 3)
    top = rng.uniform(0.05, 0.6)
    img[(yy > top) & (yy < top + 0.15)] = rng.uniform(0.1, 0.9, 3)
    img += 0.05 * np.sin(xx[..., None] * rng.uniform(5, 20)) * np.cos(yy[..., None] * rng.uniform(5, 20))
    return as_png(img)


def as_png(image: np.ndarray) -> np.ndarray:
    """What an 8-bit PNG holds."""
    return (np.round(np.clip(image, 0, 1) * 255) / 255).astype(np.float32)


def hue_shift(image: np.ndarray, amount: float) -> np.ndarray:
    """Rotate every pixel's hue by ``amount`` of a full turn (0..1)."""
    from skimage.color import hsv2rgb, rgb2hsv

    hsv = rgb2hsv(image)
    hsv[..., 0] = (hsv[..., 0] + amount) % 1.0
    return hsv2rgb(hsv).astype(np.float32)


def nan_image(size: int = 64) -> np.ndarray:
    img = scene(999, size)
    img[size // 2, size // 2] = np.nan
    return img
