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


# ------------------------------------------------------------------ textures and broken outputs


def gradient(size: int = 64) -> np.ndarray:
    """A smooth two-colour gradient (sky-like)."""
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1)
    return as_png(np.dstack([0.2 + 0.6 * xx, 0.3 + 0.5 * yy, 0.8 - 0.4 * xx * yy]))


def blurred_checkerboard(size: int = 64, cell: int = 8, sigma: float = 1.0) -> np.ndarray:
    """A black/white checkerboard, slightly blurred as a camera would."""
    from scipy.ndimage import gaussian_filter

    yy, xx = np.mgrid[0:size, 0:size]
    board = (((yy // cell) + (xx // cell)) % 2).astype(np.float32)
    return as_png(np.repeat(gaussian_filter(board, sigma)[..., None], 3, axis=-1))


def photo_like(seed: int = 0, size: int = 64) -> np.ndarray:
    """1/f ("pink") colour noise: the power spectrum of natural photographs, with fine grain on top."""
    rng = np.random.default_rng(seed)
    f = np.fft.fftfreq(size)
    amp = 1 / np.maximum(np.hypot(*np.meshgrid(f, f)), 1 / size)
    phase = np.exp(2j * np.pi * rng.random((size, size, 3)))
    img = np.real(np.fft.ifft2(amp[..., None] * phase, axes=(0, 1)))
    img = (img - img.min()) / (img.max() - img.min())
    return as_png(img + rng.normal(0, 0.02, img.shape))


def fine_lines(size: int = 64, period: int = 6) -> np.ndarray:
    """Thin 1-px diagonal lines on white (line art, hatching)."""
    yy, xx = np.mgrid[0:size, 0:size]
    return as_png(np.repeat((((yy + xx) % period) != 0).astype(np.float32)[..., None], 3, axis=-1))


def pure_noise(seed: int = 0, size: int = 64, kind: str = "uniform") -> np.ndarray:
    """i.i.d. pixel noise: uniform RGB, Gaussian RGB, or grey."""
    rng = np.random.default_rng(seed)
    if kind == "gaussian":
        return as_png(rng.normal(0.5, 0.2, (size, size, 3)))
    if kind == "grey":
        return as_png(np.repeat(rng.random((size, size, 1)), 3, axis=-1))
    return as_png(rng.random((size, size, 3)))


def speck(size: int = 64, value: float = 1.0, background: float = 0.0, count: int = 1) -> np.ndarray:
    """A constant frame with ``count`` single pixels of another value (a black image with one white pixel)."""
    img = np.full((size, size, 3), background, np.float32)
    for k in range(count):
        img[(7 * k + 10) % size, (13 * k + 10) % size] = value
    return img
