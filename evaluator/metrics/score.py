"""The composite score that picks the best checkpoint. Higher is better; bounded to [-0.2, 1].

    quality = weighted mean of the available terms
        0.40 * (clip_t + 1) / 2            prompt adherence
        0.30 * (clip_i + 1) / 2            likeness to the references     (needs references)
        0.20 * exp(-color_swd_lab / 20)    colour faithfulness, Lab units (needs references)
        0.10 * diversity                   not collapsing to one image
    score = (1 - failure_rate) * quality - 2 * max(0, max_ref_sim - 0.95)

The last term punishes memorisation: a sample nearly identical to a training reference. When every
sample failed the score is 0. docs/metrics.md explains each term.
"""

from __future__ import annotations

import math

from shared.records import Metrics

WEIGHTS = {"clip_t": 0.40, "clip_i": 0.30, "color": 0.20, "diversity": 0.10}
MEMORISATION_THRESHOLD = 0.95
RULE = "highest score: (1 - failure_rate) * weighted(clip_t, clip_i, colour, diversity) - memorisation penalty"


def composite_score(m: Metrics) -> float:
    if m.failure_rate is not None and m.failure_rate >= 1.0:
        return 0.0
    terms: dict[str, float] = {}
    if m.clip_t is not None:
        terms["clip_t"] = (m.clip_t + 1) / 2
    if m.clip_i is not None:
        terms["clip_i"] = (m.clip_i + 1) / 2
    if m.color_swd_lab is not None:
        terms["color"] = math.exp(-m.color_swd_lab / 20.0)
    if m.diversity is not None:
        terms["diversity"] = min(max(m.diversity, 0.0), 1.0)
    if not terms:
        return 0.0
    total_w = sum(WEIGHTS[k] for k in terms)
    quality = sum(WEIGHTS[k] * v for k, v in terms.items()) / total_w
    penalty = 2 * max(0.0, (m.max_ref_sim or 0.0) - MEMORISATION_THRESHOLD)
    return float((1 - (m.failure_rate or 0.0)) * quality - penalty)
