"""Memorisation: samples that reproduce a training image (or a reference).

Two measures, computed against the trial's training images (``dataset.train_dir``, prepared once per
trial) and its references:

- ``max_train_sim`` / ``max_ref_sim``: the highest CLIP cosine of any sample to any training image /
  reference (semantic near-duplicates; only meaningful with a trained CLIP model);
- near-copies in pixel space, which need no trained model: sample and image are shrunk to 32x32
  thumbnails (box filter, aspect ratio ignored) and a sample is a copy of the image when the thumbnails'
  mean absolute difference is at most 0.05 (about 13 codes of 255) **and** their Pearson correlation is at
  least 0.95. Re-encoding, slight noise or a small colour shift keep a copy a copy; a new pose, layout or
  background does not. ``copy_rate`` is the share of samples that are copies.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

THUMB_SIDE = 32
COPY_MAX_MAD = 0.05
COPY_MIN_CORRELATION = 0.95


@dataclass
class TrainingSet:
    """The trial's training images as memorisation needs them: names, CLIP (and DINO) embeddings, thumbnails."""

    names: list[str]
    embeddings: np.ndarray  # (N, D) CLIP image embeddings, L2-normalised
    thumbnails: np.ndarray  # (N, 32, 32, 3) uint8
    dino: np.ndarray | None = None  # (N, E) DINO embeddings, L2-normalised, when DINO is on


def thumbnail(image: np.ndarray) -> np.ndarray:
    """A 32x32x3 uint8 box-filtered thumbnail of an HxWx3 image in [0, 1] (NaN as 0)."""
    from PIL import Image

    a = np.nan_to_num(np.asarray(image, np.float32)[..., :3], nan=0.0, posinf=1.0, neginf=0.0)
    pixels = (np.clip(a, 0, 1) * 255).round().astype(np.uint8)
    return np.asarray(Image.fromarray(pixels).resize((THUMB_SIDE, THUMB_SIDE), Image.BOX), np.uint8)


def thumbnails(images: Sequence[np.ndarray]) -> np.ndarray:
    """(N, 32, 32, 3) uint8 thumbnails."""
    if not len(images):
        return np.zeros((0, THUMB_SIDE, THUMB_SIDE, 3), np.uint8)
    return np.stack([thumbnail(im) for im in images])


def prepare_training(images: Sequence[np.ndarray], names: Sequence[str], encoder, dino=None) -> TrainingSet:
    """Embed and thumbnail the training images once per trial.

    Args:
        images: HxWx3 float arrays in [0, 1].
        names: one label per image (shown in warnings and in ``samples[i].copy_of``), e.g. its path
            relative to the training folder.
        encoder: the trial's ClipEncoder.
        dino: the trial's DinoEncoder, or None when DINO is off.
    """
    ims = [np.clip(np.nan_to_num(np.asarray(im, np.float32)[..., :3]), 0, 1) for im in images]
    return TrainingSet(list(names), encoder.encode_images(ims), thumbnails(ims),
                       dino.encode_images(ims) if dino is not None and ims else None)


def copy_scores(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For thumbnails a (n) and b (m): (n, m) booleans "a[i] is a near-copy of b[j]" and the (n, m) mean
    absolute differences in [0, 1]."""
    x = a.reshape(len(a), -1).astype(np.float32) / 255
    y = b.reshape(len(b), -1).astype(np.float32) / 255
    mad = np.abs(x[:, None, :] - y[None, :, :]).mean(axis=2)
    xc, yc = x - x.mean(1, keepdims=True), y - y.mean(1, keepdims=True)
    xn, yn = np.linalg.norm(xc, axis=1), np.linalg.norm(yc, axis=1)
    corr = (xc @ yc.T) / np.maximum(xn[:, None] * yn[None, :], 1e-12)
    flat = (xn[:, None] < 1e-6) | (yn[None, :] < 1e-6)  # a constant thumbnail: only the MAD can judge it
    return (mad <= COPY_MAX_MAD) & ((corr >= COPY_MIN_CORRELATION) | flat), mad


def near_copies(sample_thumbs: Sequence[np.ndarray | None],
                targets: Sequence[tuple[str, np.ndarray | None, Sequence[str]]],
                block: int = 256) -> list[str | None]:
    """For each sample thumbnail (None: a failed sample), what it copies: ``"<kind> <name>"`` of the
    closest (smallest mean absolute difference) near-copied image, or None.

    Args:
        sample_thumbs: one thumbnail or None per sample.
        targets: (kind, thumbnails, names) per set, e.g. ("training image", thumbs, names); earlier
            sets win ties.
        block: target images compared at a time (bounds memory for large training sets).
    """
    out: list[str | None] = [None] * len(sample_thumbs)
    idx = [i for i, t in enumerate(sample_thumbs) if t is not None]
    if not idx:
        return out
    a = np.stack([sample_thumbs[i] for i in idx])
    best = np.full(len(idx), np.inf)
    for kind, thumbs, names in targets:
        if thumbs is None or not len(thumbs):
            continue
        for start in range(0, len(thumbs), block):
            hits, mad = copy_scores(a, thumbs[start:start + block])
            mad = np.where(hits, mad, np.inf)
            j = mad.argmin(axis=1)
            for row, i in enumerate(idx):
                if mad[row, j[row]] < best[row]:
                    best[row] = mad[row, j[row]]
                    k = start + int(j[row])
                    out[i] = f"{kind} {names[k] if k < len(names) else k}"
    return out
