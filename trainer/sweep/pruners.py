"""A median pruner with a margin: prune only when a trial is clearly worse than the median of the
finished ones at the same epoch. Checkpoint scores are noisy; without a margin, a sound trial that
is a hair under the median at epoch 1 is thrown away."""

from __future__ import annotations

import math
import statistics


def margin_median_pruner(margin: float, n_startup_trials: int, n_warmup_steps: int):
    import optuna
    from optuna.study import StudyDirection
    from optuna.trial import TrialState

    class MarginMedianPruner(optuna.pruners.BasePruner):
        def prune(self, study, trial) -> bool:
            step = trial.last_step
            if step is None or step < n_warmup_steps:
                return False
            value = trial.intermediate_values[step]
            if math.isnan(value):
                return True
            done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            others = [t.intermediate_values[step] for t in done if step in t.intermediate_values]
            if len(done) < n_startup_trials or not others:
                return False
            median = statistics.median(others)
            if study.direction == StudyDirection.MAXIMIZE:
                return value < median - margin
            return value > median + margin

    return MarginMedianPruner()
