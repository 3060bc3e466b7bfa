"""kohya-style dataset folders: ``10_concept/`` holds images repeated 10 times per epoch, each with a
caption file beside it. Everything is validated up front so a bad image fails before training starts."""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shared.errors import EpochscopeError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}
_REPEATS_RE = re.compile(r"^(\d+)_(.+)$")


class DatasetError(EpochscopeError):
    pass


@dataclass(frozen=True)
class Item:
    image: Path
    caption: str
    repeats: int


def scan(train_dir: Path | str, caption_extension: str = ".txt", repeats_override: int | None = None) -> list[Item]:
    """All training images with their captions and repeats; raises DatasetError naming what is wrong."""
    root = Path(train_dir)
    if not root.is_dir():
        raise DatasetError(f"dataset.train_dir {root} does not exist or is not a folder")
    folders = [p for p in sorted(root.iterdir()) if p.is_dir()]
    if not folders and any(p.suffix.lower() in IMAGE_SUFFIXES for p in root.iterdir()):
        folders = [root]
    items: list[Item] = []
    for folder in folders:
        m = _REPEATS_RE.match(folder.name)
        if m is None and folder != root:
            continue  # kohya ignores folders without the N_ prefix
        repeats = repeats_override or (int(m.group(1)) if m else 1)
        concept = m.group(2) if m else folder.name
        for image in sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
            cap_file = image.with_suffix(caption_extension)
            caption = cap_file.read_text(encoding="utf-8").strip() if cap_file.exists() else concept
            items.append(Item(image, caption, repeats))
    if not items:
        raise DatasetError(f"dataset.train_dir {root} has no images in N_concept/ folders "
                           f"(kohya layout: {root}/10_mychar/img.png + img{caption_extension})")
    return items


@dataclass(frozen=True)
class TrainingImage:
    """A training image at the training resolution, and where it came from: SDXL's size conditioning
    (sd-scripts' ``original_size`` / ``crop_top_left`` / ``target_size``) is made of these."""

    pixels: np.ndarray  # uint8 HxWx3, resolution x resolution
    original_hw: tuple[int, int]  # (height, width) before resizing
    crop_top_left: tuple[int, int]  # (top, left) of the crop, in the resized image


def load_training_image(path: Path, resolution: int) -> TrainingImage:
    """Resize the short side to ``resolution`` and centre-crop, recording the original size and the crop."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            w0, h0 = im.size
            scale = resolution / min(w0, h0)
            im = im.resize((max(resolution, round(w0 * scale)), max(resolution, round(h0 * scale))),
                           Image.Resampling.BICUBIC)
            w, h = im.size
            left, top = (w - resolution) // 2, (h - resolution) // 2
            pixels = np.asarray(im.crop((left, top, left + resolution, top + resolution)), dtype=np.uint8)
            return TrainingImage(pixels, (h0, w0), (top, left))
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise DatasetError(f"cannot read training image {path}: {e}") from None


def load_image(path: Path, resolution: int) -> np.ndarray:
    """Resize the short side to ``resolution`` and centre-crop; uint8 HxWx3."""
    return load_training_image(path, resolution).pixels


def epoch_order(items: list[Item], seed: int, epoch: int) -> list[int]:
    """Indices for one epoch (each item ``repeats`` times), shuffled reproducibly from seed and epoch,
    so a resumed run sees exactly the batches an uninterrupted one would."""
    order = [i for i, item in enumerate(items) for _ in range(item.repeats)]
    random.Random(f"{seed}:{epoch}").shuffle(order)
    return order
