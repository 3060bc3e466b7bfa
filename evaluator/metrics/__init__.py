"""Metrics of one checkpoint's samples against references, training images, the baseline and the
previous checkpoint.

Images are float32 HxWx3 arrays in [0, 1] (NaN allowed: a diverged LoRA). Everything expensive about
the references and the training images is computed once per trial (``prepare_references``,
``prepare_training``) and reused for every checkpoint; ``prepare_samples`` does the same for one
checkpoint's samples; ``compute_metrics`` compares prepared sets. docs/metrics.md defines every metric
and the score; ``evidence`` says when the evidence is weak (no references, references that overlap the
training images).
"""

from __future__ import annotations

from evaluator.metrics.clip_encoder import ClipEncoder
from evaluator.metrics.compute import compute_metrics, sample_copies
from evaluator.metrics.dino_encoder import DinoEncoder
from evaluator.metrics.images import load_image
from evaluator.metrics.memorisation import TrainingSet, prepare_training
from evaluator.metrics.score import RULE as SCORE_RULE
from evaluator.metrics.score import composite_score
from evaluator.metrics.sets import ReferenceSet, SampleSet, prepare_references, prepare_samples

__all__ = ["SCORE_RULE", "ClipEncoder", "DinoEncoder", "ReferenceSet", "SampleSet", "TrainingSet",
           "composite_score", "compute_metrics", "load_image", "prepare_references", "prepare_samples",
           "prepare_training", "sample_copies"]
