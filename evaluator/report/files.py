"""Read what a report needs from a trial folder, tolerating missing or half-finished state."""

from __future__ import annotations

from dataclasses import dataclass, field

from shared.errors import FileFormatError
from shared.jsonio import read_model_or_none
from shared.records import CheckpointMetrics, EvaluationSummary, Params, TrainerStatus
from shared.trial import BASELINE, Trial


@dataclass
class TrialFiles:
    params: Params | None = None
    status: TrainerStatus | None = None
    summary: EvaluationSummary | None = None
    baseline: CheckpointMetrics | None = None
    metrics: dict[str, CheckpointMetrics] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def _read(path, model, problems):
    try:
        return read_model_or_none(path, model)
    except FileFormatError as e:
        problems.append(str(e))
        return None


def read_trial(trial: Trial) -> TrialFiles:
    f = TrialFiles()
    f.params = _read(trial.params_path, Params, f.problems)
    f.status = _read(trial.status_path, TrainerStatus, f.problems)
    f.summary = _read(trial.evaluation_summary_path, EvaluationSummary, f.problems)
    names = ([BASELINE] if f.summary and f.summary.baseline else []) + (list(f.summary.checkpoints) if f.summary else [])
    for name in names:
        folder = trial.baseline_dir if name == BASELINE else trial.checkpoint_eval_dir(name)
        m = _read(folder / "metrics.json", CheckpointMetrics, f.problems)
        if m is not None:
            f.metrics[name] = m
    f.baseline = f.metrics.get(BASELINE)
    return f


def trial_state(f: TrialFiles) -> str:
    """complete / pruned / stopped early / failed / running, as a sweep table shows it."""
    if f.status is None:
        return "waiting"
    st = f.status.state
    if st == "finished":
        return "complete"
    if st == "stopped_early":
        return "pruned" if "pruned" in f.status.message else "stopped early"
    return st
