"""Pure pieces of the sweep: score following, the objective, URL handling, sampling, the margin pruner."""

from __future__ import annotations

import optuna
import pytest

from shared.config import RunConfig, SearchDimension, SweepConfig
from shared.records import EvaluationSummary, Metrics, SummaryEntry
from trainer.sweep.driver import masked, with_driver
from trainer.sweep.monitor import ScoreFollower, objective_value
from trainer.sweep.pruners import margin_median_pruner
from trainer.sweep.space import sample


def _summary(*scores):
    return EvaluationSummary(trial_name="t", checkpoints={
        f"c{i}": SummaryEntry(checkpoint=f"c{i}", epoch=i, step=4 * i, metrics=Metrics(score=s))
        for i, s in enumerate(scores, 1)})


def test_follower_reports_each_epoch_once_in_order():
    f = ScoreFollower()
    assert f.new_points(None) == []
    assert f.new_points(_summary(0.1, 0.3)) == [(1, 0.1), (2, 0.3)]
    assert f.new_points(_summary(0.1, 0.3, 0.2)) == [(3, 0.2)]
    assert objective_value(_summary(0.1, 0.3, 0.2), "score", "maximize") == 0.3
    assert objective_value(_summary(0.1, 0.3, 0.2), "score", "minimize") == 0.1


def test_storage_urls():
    assert masked("postgresql://me:secret@db/optuna") == "postgresql://me:***@db/optuna"
    assert masked("sqlite:////x/study.db") == "sqlite:////x/study.db"
    assert with_driver("postgresql://me@db/o").startswith(("postgresql+psycopg://", "postgresql+psycopg2://"))
    assert with_driver("sqlite:////x.db") == "sqlite:////x.db"


def test_sampling_respects_field_types():
    study = optuna.create_study()
    trial = study.ask()
    space = {"network.dim": SearchDimension(low=4, high=32), "training.learning_rate": SearchDimension(
        low=1e-5, high=1e-3, log=True), "training.optimizer": SearchDimension(choices=["AdamW", "SGD"])}
    values = sample(trial, space, RunConfig())
    assert isinstance(values["network.dim"], int) and 4 <= values["network.dim"] <= 32
    assert isinstance(values["training.learning_rate"], float)
    assert values["training.optimizer"] in ("AdamW", "SGD")
    with pytest.raises(Exception, match="not a config field"):
        sample(trial, {"training.nope": SearchDimension(low=1, high=2)}, RunConfig())
    assert SweepConfig().pruner.type == "median"


def test_margin_pruner_prunes_only_clearly_worse_trials():
    study = optuna.create_study(direction="maximize",
                                pruner=margin_median_pruner(0.1, n_startup_trials=2, n_warmup_steps=1))
    for value in (0.60, 0.61):
        t = study.ask()
        t.report(value, 1)
        study.tell(t, value)
    close, bad = study.ask(), study.ask()
    close.report(0.58, 1)
    bad.report(0.0, 1)
    assert not close.should_prune() and bad.should_prune()
