"""Two machines, one study: two `trainer sweep` workers, each with its own folder and its own evaluator,
share one study on a real PostgreSQL server and together run exactly the requested trials."""

from __future__ import annotations

import os
import signal

import optuna
import pytest

from _sweep_helpers import DEMO_SWEEP, PostgresUnavailable, kill_all_under, load_study, postgres_server, start_sweep
from shared.jsonio import read_model
from shared.records import EvaluationSummary, Params
from trainer.sweep import bookkeeping

pytestmark = pytest.mark.slow
N_TRIALS = 3


@pytest.fixture()
def postgres():
    try:
        with postgres_server() as url:
            yield url
    except PostgresUnavailable as e:
        pytest.skip(str(e))


def _tiny_sweep(tmp_path):
    """The demo sweep at its cheapest: one epoch, few samples, no planted trial, no pruning."""
    text = DEMO_SWEEP.read_text().split("# Run first")[0]
    for old, new in (("max_train_epochs = 6", "max_train_epochs = 1"), ("num_samples = 4", "num_samples = 2"),
                     ("steps = 6", "steps = 3"), ('type = "median"', 'type = "none"')):
        assert old in text, old
        text = text.replace(old, new)
    path = tmp_path / "sweep.toml"
    path.write_text(text)
    return path


def test_two_workers_share_one_postgres_study(tmp_path, postgres):
    config = _tiny_sweep(tmp_path)
    roots = {name: tmp_path / f"machine_{name}" for name in ("a", "b")}
    workers = {name: start_sweep("--config", str(config), "--root", str(root), "--storage", postgres,
                                 "--study", "shared", "--n-trials", str(N_TRIALS), log=tmp_path / f"{name}.log")
               for name, root in roots.items()}  # started together: they race to create the tables and study
    try:
        for w in workers.values():
            w.wait(timeout=420)
    finally:
        for w in workers.values():
            if w.poll() is None:
                os.killpg(w.pid, signal.SIGKILL)
        kill_all_under(tmp_path)
    logs = {name: (tmp_path / f"{name}.log").read_text() for name in workers}
    assert all(w.returncode == 0 for w in workers.values()), logs

    study = load_study(postgres, "shared")
    ran = [t for t in study.trials if not t.user_attrs.get(bookkeeping.SURPLUS)]
    assert sorted(t.number for t in ran) == list(range(N_TRIALS)), "the requested trials, each number once"
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in ran), logs
    # Workers that finish together may both ask for the last trial: the later one stands down, unrun.
    assert all(t.state == optuna.trial.TrialState.FAIL and not t.params for t in study.trials if t not in ran)
    folders = {p.name: p for root in roots.values() for p in root.glob("trial_*")}
    assert sorted(folders) == [f"trial_{n + 1:04d}" for n in range(N_TRIALS)], "each trial ran once, on one machine"
    assert all(any(root.glob("trial_*")) for root in roots.values()), "both workers ran trials"
    rates = [t.params["training.learning_rate"] for t in ran]
    assert len(set(rates)) == N_TRIALS, "workers with the same seed must not sample the same values"
    for t in ran:
        folder = folders[f"trial_{t.number + 1:04d}"]
        sweep = read_model(folder / "params.json", Params).sweep
        assert (sweep.trial_number, sweep.params, sweep.study_name) == (t.number + 1, t.params, "shared")
        assert ":***@127.0.0.1" in sweep.storage and "secret" not in sweep.storage
        summary = read_model(folder / "realtime_evaluations" / "evaluation_summary.json", EvaluationSummary)
        assert t.value == pytest.approx(summary.best.score), "scored by the evaluator of its own machine"
