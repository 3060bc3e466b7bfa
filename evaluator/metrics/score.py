"""The composite score that picks the best checkpoint (and drives early stopping and sweep pruning).

Higher is better. With at least one sound sample it lies in [-0.1, 1]::

    quality = weighted mean of the terms that can be computed (weights renormalised over those present)
        0.40 * (clip_t + 1) / 2            prompt adherence
        0.30 * (clip_i + 1) / 2            likeness to the references     (needs references)
        0.30 * (dino + 1) / 2              subject identity, DINO         (needs references and DINO on)
        0.20 * exp(-color_swd_lab / 20)    colour faithfulness, Lab units (needs references)
        0.10 * clamp(diversity, 0, 1)      not collapsing to one image
    score = (1 - failure_rate - copy_rate) * quality
            - 2 * max(0, max(max_ref_sim, max_train_sim) - 0.95)

A failed sample and a sample that nearly copies a training image or a reference both count as lost:
a checkpoint whose samples are all copies scores at most 0, below any sound checkpoint and the baseline.
The last term punishes semantic near-duplicates in CLIP space. When every sample failed the score is
-1, below anything a checkpoint with one sound sample can get; with no samples at all it is None.
docs/metrics.md explains each term.
"""

from __future__ import annotations

import math

from shared.records import Metrics

WEIGHTS = {"clip_t": 0.40, "clip_i": 0.30, "dino": 0.30, "color": 0.20, "diversity": 0.10}
COLOR_SCALE = 20.0  # Lab units at which the colour term has fallen to 1/e
MEMORISATION_THRESHOLD = 0.95
MEMORISATION_WEIGHT = 2.0
ALL_FAILED = -1.0
RULE = ("highest score = (1 - failure_rate - copy_rate) * weighted mean(0.4 clip_t, 0.3 clip_i, 0.3 dino, "
        "0.2 colour, 0.1 diversity; over those measured) - 2 * max(0, max(max_ref_sim, max_train_sim) - 0.95); "
        "all failed = -1; ties go to the earlier checkpoint")


def score_terms(m: Metrics) -> dict[str, float]:
    """Each available quality term mapped to [0, 1] (higher is better)."""
    terms: dict[str, float] = {}
    if m.clip_t is not None:
        terms["clip_t"] = (m.clip_t + 1) / 2
    if m.clip_i is not None:
        terms["clip_i"] = (m.clip_i + 1) / 2
    if m.dino is not None:
        terms["dino"] = (m.dino + 1) / 2
    if m.color_swd_lab is not None:
        terms["color"] = math.exp(-max(m.color_swd_lab, 0.0) / COLOR_SCALE)
    if m.diversity is not None:
        terms["diversity"] = min(max(m.diversity, 0.0), 1.0)
    return {k: min(max(v, 0.0), 1.0) for k, v in terms.items()}


def composite_score(m: Metrics) -> float | None:
    """The documented composite of ``m``'s metrics (see the module docstring)."""
    if m.failure_rate is None:
        return None  # no samples at all
    if m.failure_rate >= 1.0:
        return ALL_FAILED
    terms = score_terms(m)
    if not terms:
        return None
    quality = sum(WEIGHTS[k] * v for k, v in terms.items()) / sum(WEIGHTS[k] for k in terms)
    nearest = max((v for v in (m.max_ref_sim, m.max_train_sim) if v is not None), default=0.0)
    penalty = MEMORISATION_WEIGHT * max(0.0, nearest - MEMORISATION_THRESHOLD)
    kept = max(0.0, 1.0 - m.failure_rate - (m.copy_rate or 0.0))
    return float(kept * quality - penalty)
