"""evaluation_summary.json: one line per checkpoint, the baseline, and the best checkpoint; plus the
early-stopping rule that reads it. Pure functions where possible, so they are tested without files."""

from __future__ import annotations

from dataclasses import dataclass

from shared.jsonio import read_model_or_none, write_model
from shared.records import BestCheckpoint, CheckpointMetrics, EvaluationSummary, SummaryEntry, utcnow
from shared.trial import Trial


def load_summary(trial: Trial) -> EvaluationSummary:
    return read_model_or_none(trial.evaluation_summary_path, EvaluationSummary) or EvaluationSummary(
        trial_name=trial.name)


def entry_from(metrics: CheckpointMetrics) -> SummaryEntry:
    return SummaryEntry(checkpoint=metrics.checkpoint, file=metrics.file,
                        fingerprint=metrics.fingerprint.short if metrics.fingerprint else None,
                        epoch=metrics.epoch, step=metrics.step, metrics=metrics.metrics)


def choose_best(entries: list[SummaryEntry], rule: str) -> BestCheckpoint | None:
    """Highest score; ties go to the earlier checkpoint (less training, same quality)."""
    best: SummaryEntry | None = None
    for e in entries:
        s = e.metrics.score
        if s is not None and (best is None or s > best.metrics.score):
            best = e
    if best is None:
        return None
    return BestCheckpoint(checkpoint=best.checkpoint, score=best.metrics.score, epoch=best.epoch, rule=rule)


def record(trial: Trial, metrics: CheckpointMetrics, rule: str, baseline: bool = False) -> EvaluationSummary:
    summary = load_summary(trial)
    if baseline:
        summary.baseline = entry_from(metrics)
    else:
        summary.checkpoints[metrics.checkpoint] = entry_from(metrics)
        summary.failed.pop(metrics.checkpoint, None)
    return _save(trial, summary, rule)


def record_failure(trial: Trial, name: str, reason: str, rule: str) -> EvaluationSummary:
    summary = load_summary(trial)
    if name not in summary.checkpoints:
        summary.failed[name] = reason
    return _save(trial, summary, rule)


def _save(trial: Trial, summary: EvaluationSummary, rule: str) -> EvaluationSummary:
    summary.total_checkpoints_evaluated = len(summary.checkpoints)
    summary.best = choose_best(summary.ordered(), rule)
    summary.last_update = utcnow()
    write_model(trial.evaluation_summary_path, summary)
    return summary


@dataclass(frozen=True)
class EarlyStopDecision:
    stop: bool
    reason: str = ""
    best: str | None = None


def early_stop(scores: list[tuple[str, float | None]], patience: int, min_delta: float,
               min_checkpoints: int) -> EarlyStopDecision:
    """Stop when the last ``patience`` checkpoints (in training order) did not beat the best before
    them by more than ``min_delta``."""
    scored = [(n, s) for n, s in scores if s is not None]
    if len(scored) < max(min_checkpoints, patience + 1):
        return EarlyStopDecision(False)
    head, tail = scored[:-patience], scored[-patience:]
    best_name, best_score = max(head, key=lambda x: x[1])
    if all(s <= best_score + min_delta for _, s in tail):
        return EarlyStopDecision(True, f"score has not improved by more than {min_delta} for {patience} "
                                       f"checkpoint(s) since {best_name} ({best_score:.4f})", best_name)
    return EarlyStopDecision(False)
