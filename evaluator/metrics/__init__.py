"""Metrics of one checkpoint's samples against references, the baseline and the previous checkpoint.

Images are float32 HxWx3 arrays in [0, 1] (NaN allowed: a diverged LoRA). Everything expensive about
the references is computed once per trial (``prepare_references``) and reused for every checkpoint;
``prepare_samples`` does the same for one checkpoint's samples; ``compute_metrics`` compares prepared
sets. docs/metrics.md defines every metric and the score.
"""

from __future__ import annotations

from evaluator.metrics.clip_encoder import ClipEncoder
from evaluator.metrics.compute import compute_metrics
from evaluator.metrics.images import load_image
from evaluator.metrics.score import RULE as SCORE_RULE
from evaluator.metrics.score import composite_score
from evaluator.metrics.sets import ReferenceSet, SampleSet, prepare_references, prepare_samples

__all__ = ["SCORE_RULE", "ClipEncoder", "ReferenceSet", "SampleSet", "composite_score", "compute_metrics",
           "load_image", "prepare_references", "prepare_samples"]
