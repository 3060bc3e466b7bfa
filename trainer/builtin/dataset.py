"""kohya-style dataset folders: ``10_concept/`` holds images repeated 10 times per epoch, each with a
caption file beside it. Everything is validated up front so a bad image fails before training starts."""

from __future__ import annotations

import random
import re
import sys
from collections.abc import Callable
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


def scan(train_dir: Path | str, caption_extension: str = ".txt", repeats_override: int | None = None,
         warn: Callable[[str], None] | None = None) -> list[Item]:
    """All training images with their captions and repeats; raises DatasetError naming what is wrong.

    Like kohya: images are read from ``N_name/`` folders; other folders are ignored and a ``0_name/``
    folder (0 repeats) is skipped with a warning. With no ``N_name/`` folder holding images, the images
    directly in ``train_dir`` are used once each. ``warn`` gets the warnings (default: stderr).
    """
    warn = warn or _warn_stderr
    root = Path(train_dir)
    if not root.is_dir():
        raise DatasetError(f"dataset.train_dir {root} does not exist or is not a folder")
    ext = _caption_suffix(caption_extension)
    items: list[Item] = []
    skipped: list[str] = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        m = _REPEATS_RE.match(folder.name)
        if m is None:
            continue  # kohya ignores folders without the N_ prefix
        repeats = repeats_override or int(m.group(1))
        images = _images_in(folder)
        if repeats == 0 and images:
            skipped.append(folder.name)
            continue
        items += [Item(image, _caption(image, ext, m.group(2)), repeats) for image in images]
    loose = _images_in(root)
    if items and loose:
        warn(f"warning: {len(loose)} images directly in {root} are ignored: the N_name/ folders are used")
    elif not items:
        items = [Item(image, _caption(image, ext, root.name), repeats_override or 1) for image in loose]
    for name in skipped if items else []:
        warn(f"warning: {root / name} is skipped: 0 repeats (the number before '_' in the folder name)")
    if not items:
        why = f" ({', '.join(skipped)} skipped: 0 repeats)" if skipped else ""
        raise DatasetError(f"dataset.train_dir {root} has no images{why}: put them in N_concept/ folders "
                           f"(kohya layout: {root}/10_mychar/img.png + img{ext}) or directly in it")
    return items


def _warn_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _caption_suffix(caption_extension: str) -> str:
    """kohya wants the dot (``.txt``); users often write ``txt``, which means the same."""
    ext = caption_extension.strip()
    if not ext or ext == ".":
        raise DatasetError(f"dataset.caption_extension {caption_extension!r} is empty: use e.g. \".txt\"")
    return ext if ext.startswith(".") else "." + ext


def _caption(image: Path, ext: str, default: str) -> str:
    """The caption file beside ``image`` (kohya: name without suffix + ext, read as UTF-8), else ``default``."""
    cap_file = image.with_name(image.stem + ext)
    if not cap_file.exists():
        return default
    try:
        return cap_file.read_bytes().decode("utf-8").strip()
    except UnicodeDecodeError as e:
        raise DatasetError(f"caption file {cap_file} is not UTF-8 text (byte 0x{e.object[e.start]:02x} at "
                           f"offset {e.start}): save it as UTF-8") from None
    except OSError as e:
        raise DatasetError(f"cannot read caption file {cap_file}: {e.strerror}") from None


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
            im = _to_rgb(im)
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


def _to_rgb(im):
    """8-bit RGB. 16-bit greyscale (modes I;16*, I) is scaled to 8 bits: Pillow's convert clips it to
    255, turning almost every pixel white."""
    from PIL import Image

    if im.mode == "I" or im.mode.startswith("I;16"):
        wide = np.asarray(im).astype(np.float64)
        im = Image.fromarray(np.clip(np.round(wide / 257.0), 0, 255).astype(np.uint8), "L")
    return im.convert("RGB")


def load_image(path: Path, resolution: int) -> np.ndarray:
    """Resize the short side to ``resolution`` and centre-crop; uint8 HxWx3."""
    return load_training_image(path, resolution).pixels


def epoch_order(items: list[Item], seed: int, epoch: int) -> list[int]:
    """Indices for one epoch (each item ``repeats`` times), shuffled reproducibly from seed and epoch,
    so a resumed run sees exactly the batches an uninterrupted one would."""
    order = [i for i, item in enumerate(items) for _ in range(item.repeats)]
    random.Random(f"{seed}:{epoch}").shuffle(order)
    return order
