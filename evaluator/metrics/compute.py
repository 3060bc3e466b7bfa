"""compute_metrics: one checkpoint's samples against the references, the baseline and the previous
checkpoint. A pure function of prepared sets, so it is tested on synthetic images without a pipeline."""

from __future__ import annotations

from evaluator.metrics import color, embeddings
from evaluator.metrics.image_stats import STAT_NAMES
from evaluator.metrics.score import composite_score
from evaluator.metrics.sets import ReferenceSet, SampleSet
from evaluator.metrics.structure import paired_ssim
from shared.records import Metrics


def compute_metrics(samples: SampleSet, references: ReferenceSet | None, baseline: SampleSet | None = None,
                    previous: SampleSet | None = None) -> Metrics:
    """Every field of Metrics; None where it cannot be computed.

    Failed samples only count in failure_rate. Without references clip_i, ref_self_sim, max_ref_sim, cmmd,
    the colour distances and *_delta_ref are None; without a baseline *_delta_base and ssim_base are None;
    without a previous set ssim_prev is None. SSIM pairs sample i with the other set's sample i and skips
    pairs where either failed. When every sample failed, only failure_rate and score (-1) are set."""
    m = Metrics(failure_rate=samples.failure_rate)
    valid = samples.valid
    if not valid or samples.embeddings is None:
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
        m.ref_self_sim = references.self_sim
        m.max_ref_sim = embeddings.max_ref_sim(emb, references.embeddings)
        m.cmmd = embeddings.cmmd(emb, references.embeddings)
        sample_lab = samples.lab_pixels if samples.lab_pixels is not None else color.lab_pixels(valid)
        m.color_swd_lab = color.sliced_wasserstein(sample_lab, references.lab_pixels)
        m.color_delta_e2000_mean = color.delta_e2000(sample_lab.mean(axis=0), references.mean_lab)
        for k in STAT_NAMES:
            setattr(m, f"{k}_delta_ref", stats[k] - references.stats[k])
    if baseline is not None:
        if baseline.stats:
            for k in STAT_NAMES:
                setattr(m, f"{k}_delta_base", stats[k] - baseline.stats[k])
        m.ssim_base = paired_ssim(samples.by_index, baseline.by_index)
    if previous is not None:
        m.ssim_prev = paired_ssim(samples.by_index, previous.by_index)
    m.score = composite_score(m)
    return m
