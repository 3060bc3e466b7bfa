"""Follow one trial's evaluation summary while it trains: report each new checkpoint's score to
Optuna, and ask the trainer to stop when the pruner says so."""

from __future__ import annotations

from dataclasses import dataclass, field

from shared.errors import FileFormatError
from shared.jsonio import read_model_or_none
from shared.naming import parse_stem
from shared.records import EvaluationSummary
from shared.trial import Trial


def read_summary(trial: Trial) -> EvaluationSummary | None:
    try:
        return read_model_or_none(trial.evaluation_summary_path, EvaluationSummary)
    except FileFormatError:
        return None  # being replaced right now is not possible (atomic), but a bad file must not kill the sweep


@dataclass
class ScoreFollower:
    """Reports each epoch's score once, in training order: the checkpoint that ends the epoch (its epoch file
    or the final one). A step checkpoint inside an epoch (saved every N steps, or on a stop mid-epoch, which
    the built-in trainer labels with the epochs completed) stands for its epoch only when the epoch has none
    and is over, that is once a later epoch has a checkpoint. Checkpoints without an epoch count by step."""

    objective: str = "score"
    reported: dict[int, float] = field(default_factory=dict)

    def new_points(self, summary: EvaluationSummary | None) -> list[tuple[int, float]]:
        if summary is None:
            return []
        ends: dict[int, float] = {}
        inside: dict[int, float] = {}
        for e in summary.ordered():
            value = getattr(e.metrics, self.objective, None)
            x = e.epoch if e.epoch is not None else e.step
            if value is None or x is None or x in self.reported:
                continue
            if e.epoch is not None and parse_stem(e.checkpoint).kind == "step":
                inside[x] = value  # the latest inside an epoch
            else:
                ends[x] = value  # the latest checkpoint of an epoch wins
        latest = max([*ends, *inside, *self.reported], default=None)
        points = {**{x: v for x, v in inside.items() if x < latest}, **ends}
        out = sorted(points.items())
        self.reported.update(out)
        return out


def objective_value(summary: EvaluationSummary | None, objective: str, direction: str) -> float | None:
    """The best value of the objective metric over the trial's checkpoints."""
    if summary is None:
        return None
    values = [getattr(e.metrics, objective, None) for e in summary.checkpoints.values()]
    values = [v for v in values if v is not None]
    if not values:
        return None
    return max(values) if direction == "maximize" else min(values)


def all_scored(trial: Trial, summary: EvaluationSummary | None, output_name: str) -> bool:
    """Every complete checkpoint on disk is in the summary (scored or failed)."""
    if summary is None:
        return False
    names = {c.stem for c in trial.checkpoints(output_name)}
    return bool(names) and names <= set(summary.checkpoints) | set(summary.failed)
