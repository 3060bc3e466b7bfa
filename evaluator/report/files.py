"""Read what a report needs from a trial folder, tolerating missing or half-finished state."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from shared.errors import FileFormatError
from shared.jsonio import read_model_or_none
from shared.records import CheckpointMetrics, EvaluationSummary, Params, StopRequest, TrainerStatus
from shared.trial import BASELINE, Trial


@dataclass
class TrialFiles:
    """Everything a report shows about one trial; ``None`` where a file does not exist (yet)."""

    params: Params | None = None
    status: TrainerStatus | None = None
    summary: EvaluationSummary | None = None
    stop_request: StopRequest | None = None
    baseline: CheckpointMetrics | None = None
    metrics: dict[str, CheckpointMetrics] = field(default_factory=dict)
    folders: dict[str, Path] = field(default_factory=dict)  # where each row's metrics.json and samples are
    problems: list[str] = field(default_factory=list)


def _read(path, model, problems: list[str]):
    """The file through its contract model; a malformed one is listed as a problem instead of raising."""
    try:
        return read_model_or_none(path, model)
    except FileFormatError as e:
        problems.append(str(e))
        return None


def read_trial(trial: Trial) -> TrialFiles:
    """Read a trial folder as it is right now: a page must render mid-run, before any evaluation."""
    f = TrialFiles()
    f.params = _read(trial.params_path, Params, f.problems)
    f.status = _read(trial.status_path, TrainerStatus, f.problems)
    f.summary = _read(trial.evaluation_summary_path, EvaluationSummary, f.problems)
    f.stop_request = _read(trial.stop_request_path, StopRequest, f.problems)
    rows = (([(BASELINE, f.summary.baseline)] if f.summary.baseline else []) + list(f.summary.checkpoints.items())
            if f.summary else [])
    for name, entry in rows:
        folder = trial.results_dir(getattr(entry, "results_dir", None), name)
        f.folders[name] = folder
        m = _read(folder / "metrics.json", CheckpointMetrics, f.problems)
        if m is not None:
            f.metrics[name] = m
    f.baseline = f.metrics.get(BASELINE)
    return f


def trial_state(f: TrialFiles) -> str:
    """complete / pruned / stopped early / stopped / failed / running / waiting, as a sweep table shows it.

    A trial stopped by a stop request is "pruned" when the sweep's pruner asked (reason ``pruned``),
    else "stopped early" (the evaluator's early stop, or a user).
    """
    if f.status is None:
        return "waiting"
    st = f.status.state
    if st == "finished":
        return "complete"
    if st == "stopped_early":
        return "pruned" if f.stop_request is not None and f.stop_request.reason == "pruned" else "stopped early"
    return "running" if st == "starting" else st
