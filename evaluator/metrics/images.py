"""Reading images into the one in-memory form every metric takes: HxWx3 float32 in [0, 1]."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from shared.errors import EpochscopeError


def load_image(path: Path | str) -> np.ndarray:
    """A PNG/JPEG/WebP file as HxWx3 float32 in [0, 1]. 16-bit files keep their precision; alpha is dropped.

    Raises:
        EpochscopeError: naming the file, when it is missing, truncated or not an image.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                gray = np.asarray(im, np.float32) / 65535.0  # 16-bit grayscale PNG
                return np.repeat(np.clip(gray, 0, 1)[..., None], 3, axis=-1)
            return np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise EpochscopeError(f"{path}: cannot read image ({type(e).__name__}: {e}); replace or remove the "
                              "file") from None


def as_rgb(image: np.ndarray) -> np.ndarray:
    """Validate and normalise one in-memory image: float32, HxWx3 (grayscale HxW is repeated, alpha dropped).

    Values are not clipped here, so NaN/inf stay visible to the failure check."""
    a = np.asarray(image, np.float32)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=-1)
    if a.ndim != 3 or a.shape[-1] not in (1, 3, 4):
        raise ValueError(f"expected an HxWx3 image, got shape {a.shape}")
    if a.shape[-1] == 1:
        a = np.repeat(a, 3, axis=-1)
    return a[..., :3]
