"""compute_metrics: one checkpoint's samples against the references, the training images, the baseline
and the previous checkpoint. A pure function of prepared sets, so it is tested on synthetic images
without a pipeline."""

from __future__ import annotations

import numpy as np

from evaluator.metrics import color, embeddings
from evaluator.metrics.image_stats import STAT_NAMES
from evaluator.metrics.memorisation import TrainingSet, near_copies, thumbnail
from evaluator.metrics.score import composite_score
from evaluator.metrics.sets import ReferenceSet, SampleSet
from evaluator.metrics.structure import paired_ssim
from shared.records import Metrics


def sample_copies(samples: SampleSet, references: ReferenceSet | None,
                  training: TrainingSet | None = None) -> list[str | None]:
    """Per sample, the training image or reference it nearly copies (``"training image 10_x/a.png"``,
    ``"reference b.png"``), or None; failed samples are None. Training images are checked first."""
    thumbs = [thumbnail(im) if f is None else None for im, f in zip(samples.images, samples.failures)]
    targets = []
    if training is not None and len(training.names):
        targets.append(("training image", training.thumbnails, training.names))
    if references is not None and references.thumbnails is not None:
        targets.append(("reference", references.thumbnails, references.names))
    return near_copies(thumbs, targets)


def compute_metrics(samples: SampleSet, references: ReferenceSet | None, baseline: SampleSet | None = None,
                    previous: SampleSet | None = None, training: TrainingSet | None = None,
                    copies: list[str | None] | None = None) -> Metrics:
    """Every field of Metrics; None where it cannot be computed.

    Failed samples only count in failure_rate. Without references clip_i, ref_self_sim, max_ref_sim, cmmd,
    dino, the colour distances and *_delta_ref are None; without training images max_train_sim and
    dino_train are None; copy_rate needs either. Without a baseline *_delta_base and ssim_base are None;
    without a previous set ssim_prev is None. SSIM pairs sample i with the other set's sample i and skips
    pairs where either failed. When every sample failed, only failure_rate and score (-1) are set.
    ``copies`` (from ``sample_copies``) saves recomputing them when the caller needs them too."""
    m = Metrics(failure_rate=samples.failure_rate)
    valid = samples.valid
    if not valid or samples.embeddings is None:
        m.score = composite_score(m)
        return m
    emb = samples.embeddings
    device = samples.device  # SSIM and the colour distances run in torch there
    m.clip_t = embeddings.clip_t(emb, samples.text_embeddings)
    m.diversity = embeddings.diversity(emb)
    stats = samples.stats or {}
    for k in STAT_NAMES:
        setattr(m, k, stats.get(k))
    has_refs = references is not None and len(references.images) > 0
    has_train = training is not None and len(training.names) > 0
    if has_refs:
        m.clip_i = embeddings.clip_i(emb, references.embeddings)
        m.ref_self_sim = references.self_sim
        m.max_ref_sim = embeddings.max_ref_sim(emb, references.embeddings)
        m.cmmd = embeddings.cmmd(emb, references.embeddings)
        sample_lab = samples.lab_pixels if samples.lab_pixels is not None else color.lab_pixels(valid, device=device)
        m.color_swd_lab = color.sliced_wasserstein(sample_lab, references.lab_pixels, device=device,
                                                   b_quantiles=references.lab_quantiles)
        m.color_delta_e2000_mean = color.delta_e2000(sample_lab.mean(axis=0), references.mean_lab)
        for k in STAT_NAMES:
            setattr(m, f"{k}_delta_ref", stats[k] - references.stats[k])
        if samples.dino is not None and references.dino is not None:
            m.dino = float(np.mean(samples.dino @ references.dino.T, dtype=np.float64))
    if has_train:
        m.max_train_sim = embeddings.max_ref_sim(emb, training.embeddings)
        if samples.dino is not None and training.dino is not None:
            m.dino_train = float(np.mean(samples.dino @ training.dino.T, dtype=np.float64))
    if has_refs or has_train:
        if copies is None:
            copies = sample_copies(samples, references, training)
        m.copy_rate = sum(c is not None for c in copies) / len(samples.failures)
    if baseline is not None:
        if baseline.stats:
            for k in STAT_NAMES:
                setattr(m, f"{k}_delta_base", stats[k] - baseline.stats[k])
        m.ssim_base = paired_ssim(samples.by_index, baseline.by_index, device=device)
    if previous is not None:
        m.ssim_prev = paired_ssim(samples.by_index, previous.by_index, device=device)
    m.score = composite_score(m)
    return m
