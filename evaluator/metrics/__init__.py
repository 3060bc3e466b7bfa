"""Metrics of one checkpoint's samples against references, the baseline and the previous checkpoint.

Images are float32 HxWx3 arrays in [0, 1] (NaN allowed: a diverged LoRA). Everything expensive about
the references is computed once per trial (ReferenceSet) and reused for every checkpoint.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from evaluator.metrics import color, embeddings
from evaluator.metrics.clip_encoder import ClipEncoder
from evaluator.metrics.failures import failure_reason
from evaluator.metrics.image_stats import STAT_NAMES, mean_stats
from evaluator.metrics.score import RULE as SCORE_RULE
from evaluator.metrics.score import composite_score
from evaluator.metrics.structure import paired_ssim
from shared.errors import EpochscopeError
from shared.records import Metrics

__all__ = ["ClipEncoder", "ReferenceSet", "SampleSet", "SCORE_RULE", "compute_metrics", "load_image",
           "prepare_references", "prepare_samples"]


@dataclass
class ReferenceSet:
    images: list[np.ndarray]
    embeddings: np.ndarray
    lab_pixels: np.ndarray
    mean_lab: np.ndarray
    stats: dict[str, float]


@dataclass
class SampleSet:
    images: list[np.ndarray]
    prompts: list[str]
    seeds: list[int]
    failures: list[str | None]
    embeddings: np.ndarray | None  # of the valid samples only, in order
    text_embeddings: np.ndarray | None
    stats: dict[str, float] | None

    @property
    def valid(self) -> list[np.ndarray]:
        return [im for im, f in zip(self.images, self.failures) if f is None]

    @property
    def by_index(self) -> list[np.ndarray | None]:
        return [im if f is None else None for im, f in zip(self.images, self.failures)]


def load_image(path: Path | str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise EpochscopeError(f"cannot read image {path}: {e}") from None


def prepare_references(images: Sequence[np.ndarray], encoder: ClipEncoder) -> ReferenceSet:
    images = [np.asarray(im, np.float32) for im in images]
    pixels = color.lab_pixels(images)
    return ReferenceSet(images, encoder.encode_images(images), pixels, pixels.mean(axis=0), mean_stats(images) or {})


def prepare_samples(images: Sequence[np.ndarray], prompts: Sequence[str], seeds: Sequence[int],
                    encoder: ClipEncoder, nsfw_flags: Sequence[bool] | None = None) -> SampleSet:
    images = [np.asarray(im, np.float32) for im in images]
    flags = list(nsfw_flags) if nsfw_flags is not None else [False] * len(images)
    failures = [failure_reason(im, bool(f)) for im, f in zip(images, flags)]
    valid = [im for im, f in zip(images, failures) if f is None]
    valid_prompts = [p for p, f in zip(prompts, failures) if f is None]
    emb = encoder.encode_images(valid) if valid else None
    text = encoder.encode_texts(valid_prompts) if valid else None
    return SampleSet(images, list(prompts), list(seeds), failures, emb, text, mean_stats(valid))


def compute_metrics(samples: SampleSet, references: ReferenceSet | None, baseline: SampleSet | None = None,
                    previous: SampleSet | None = None) -> Metrics:
    n = len(samples.images)
    m = Metrics(failure_rate=(sum(f is not None for f in samples.failures) / n) if n else None)
    valid = samples.valid
    if not valid:
        m.score = composite_score(m)
        return m
    emb = samples.embeddings
    m.clip_t = embeddings.clip_t(emb, samples.text_embeddings)
    m.diversity = embeddings.diversity(emb)
    stats = samples.stats or {}
    for k in STAT_NAMES:
        setattr(m, k, stats.get(k))
    if references is not None and len(references.images):
        m.clip_i = embeddings.clip_i(emb, references.embeddings)
        m.ref_self_sim = embeddings.mean_offdiag(references.embeddings @ references.embeddings.T)
        m.max_ref_sim = embeddings.max_ref_sim(emb, references.embeddings)
        m.cmmd = embeddings.cmmd(emb, references.embeddings)
        sample_lab = color.lab_pixels(valid)
        m.color_swd_lab = color.sliced_wasserstein(sample_lab, references.lab_pixels)
        m.color_delta_e2000_mean = color.delta_e2000_of_means(sample_lab, references.mean_lab)
        for k in STAT_NAMES:
            setattr(m, f"{k}_delta_ref", stats[k] - references.stats[k])
    if baseline is not None and baseline.stats:
        for k in STAT_NAMES:
            setattr(m, f"{k}_delta_base", stats[k] - baseline.stats[k])
        m.ssim_base = paired_ssim(samples.by_index, baseline.by_index)
    if previous is not None:
        m.ssim_prev = paired_ssim(samples.by_index, previous.by_index)
    m.score = composite_score(m)
    return m
