"""evaluation_summary.json: one line per checkpoint, the baseline, and the best checkpoint; plus the
early-stopping rule that reads it. Pure functions where possible, so they are tested without files.

Every read-modify-write of the file holds one lock: the daemon's background writer records results while
the scoring thread may record a failure or point a name at earlier results, and neither may lose the
other's change. ``apply_result`` and ``apply_failure`` are the changes themselves, without the file: the
daemon applies those of versions still being written to what is on disk to decide things now.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from shared.jsonio import read_model_or_none, write_model
from shared.records import BestCheckpoint, CheckpointMetrics, EvaluationSummary, SummaryEntry, utcnow
from shared.trial import Trial


def load_summary(trial: Trial) -> EvaluationSummary:
    return read_model_or_none(trial.evaluation_summary_path, EvaluationSummary) or EvaluationSummary(
        trial_name=trial.name)


def entry_from(metrics: CheckpointMetrics, results_dir: str | None = None) -> SummaryEntry:
    return SummaryEntry(checkpoint=metrics.checkpoint, file=metrics.file,
                        fingerprint=metrics.fingerprint.short if metrics.fingerprint else None,
                        epoch=metrics.epoch, step=metrics.step, metrics=metrics.metrics, results_dir=results_dir)


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


def _show(summary: EvaluationSummary, entry: SummaryEntry) -> None:
    """Make ``entry`` the row of its name; the row it replaces (another version) goes to history."""
    current = summary.checkpoints.get(entry.checkpoint)
    if current is not None and current.fingerprint != entry.fingerprint:
        if not any(h.checkpoint == current.checkpoint and h.fingerprint == current.fingerprint for h in summary.history):
            summary.history.append(current)
    summary.history = [h for h in summary.history
                       if not (h.checkpoint == entry.checkpoint and h.fingerprint == entry.fingerprint)]
    summary.checkpoints[entry.checkpoint] = entry
    summary.failed.pop(entry.checkpoint, None)


_lock = threading.RLock()  # every read-modify-write of a summary file


def apply_result(summary: EvaluationSummary, metrics: CheckpointMetrics, baseline: bool = False,
                 results_dir: str | None = None) -> None:
    """Put a scored version into ``summary`` (in memory). Applying it twice changes nothing more."""
    summary.notes = list(metrics.notes)
    if baseline:
        summary.baseline = entry_from(metrics, results_dir)
        summary.failed.pop(metrics.checkpoint, None)
    else:
        _show(summary, entry_from(metrics, results_dir))


def apply_failure(summary: EvaluationSummary, name: str, reason: str) -> None:
    """Record ``name`` failed in ``summary`` (in memory); its current row, another version, goes to history."""
    current = summary.checkpoints.pop(name, None)
    if current is not None:
        summary.history.append(current)
    summary.failed[name] = reason


def record(trial: Trial, metrics: CheckpointMetrics, rule: str, baseline: bool = False,
           results_dir: str | None = None) -> EvaluationSummary:
    with _lock:
        summary = load_summary(trial)
        apply_result(summary, metrics, baseline, results_dir)
        return _save(trial, summary, rule)


def find_version(summary: EvaluationSummary, fingerprint_short: str) -> SummaryEntry | None:
    """A scored row (current or history) of these bytes, under any name."""
    for e in list(summary.checkpoints.values()) + summary.history:
        if e.fingerprint == fingerprint_short:
            return e
    return None


def show_version(trial: Trial, name: str, file: str, fingerprint_short: str, rule: str) -> bool:
    """Point ``name``'s row at already-scored bytes (a file put back to an earlier version, or renamed
    by a continuation) without scoring them again. False when these bytes were never scored."""
    with _lock:
        summary = load_summary(trial)
        current = summary.checkpoints.get(name)
        if current is not None and current.fingerprint == fingerprint_short:
            return True
        found = find_version(summary, fingerprint_short)
        if found is None:
            return False
        _show(summary, found.model_copy(update={"checkpoint": name, "file": file}))
        _save(trial, summary, rule)
        return True


def record_failure(trial: Trial, name: str, reason: str, rule: str) -> EvaluationSummary:
    """``name``'s version on disk now failed; the row it had (another version) goes to history."""
    with _lock:
        summary = load_summary(trial)
        apply_failure(summary, name, reason)
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
