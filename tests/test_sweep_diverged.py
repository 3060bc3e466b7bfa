"""A trial whose training diverges is a result about its parameters: the sweep records it PRUNED (Optuna's TPE
learns from pruned trials and ignores failed ones), with the trainer's message, not FAIL."""

from __future__ import annotations

import subprocess

import optuna
import pytest

from _sweep_helpers import DEMO_SWEEP, ENV, REPO_ROOT, default_study, sweep_cmd
from shared.jsonio import read_model
from shared.records import DIVERGED, TrainerStatus
from shared.trial import SweepRoot
from trainer.builtin.nonfinite import MAX_IN_A_ROW
from trainer.sweep import bookkeeping

pytestmark = pytest.mark.slow


def test_a_diverged_trial_is_pruned_with_the_trainers_message(tmp_path):
    text = DEMO_SWEEP.read_text().split("# Run first")[0]
    epochs = MAX_IN_A_ROW // 4 + 2  # 4 steps an epoch: the built-in trainer gives up in epoch 13
    for old, new in (("max_train_epochs = 6", f"max_train_epochs = {epochs}"), ('type = "median"', 'type = "none"')):
        assert old in text, old
        text = text.replace(old, new)
    config = tmp_path / "sweep.toml"
    config.write_text(text + '\n[[sweep.enqueue]]\n"training.learning_rate" = 1e30\n')
    root = SweepRoot(tmp_path / "root")
    out = subprocess.run(sweep_cmd("--config", str(config), "--root", str(root.root), "--n-trials", "1",
                                   "--evaluator", "none"),
                         cwd=REPO_ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    (trial,) = default_study(root).trials
    status = read_model(root.trial(1).status_path, TrainerStatus)
    assert status.state == "failed" and status.message.startswith(DIVERGED), status
    assert trial.state == optuna.trial.TrialState.PRUNED, (trial.state, out.stdout, out.stderr)
    assert trial.user_attrs[bookkeeping.DIVERGED] == status.message
    assert bookkeeping.FAIL_REASON not in trial.user_attrs and bookkeeping.counts(trial)
    assert "trial_0001  PRUNED" in out.stdout and DIVERGED in out.stdout, out.stdout
