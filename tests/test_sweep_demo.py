"""The CPU demo sweep for real (real trainer, real evaluator, SQLite study): the planted bad trial is
pruned before its last epoch, the others complete, and a sweep killed with SIGKILL mid-trial resumes
without reusing a trial number or a folder. Study, folders and summaries must agree."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import optuna
import pytest

from _sweep_helpers import DEMO_SWEEP, ENV, REPO_ROOT, default_study, kill_all_under, start_sweep, sweep_cmd, \
    wait_until_gone
from shared.config import load_config
from shared.jsonio import read_model, read_model_or_none
from shared.naming import parse_stem
from shared.records import EvaluationSummary, Params, StopRequest, TrainerStatus
from shared.trial import SweepRoot

pytestmark = pytest.mark.slow
S = optuna.trial.TrialState
EPOCHS = load_config(DEMO_SWEEP).training.max_train_epochs


def test_demo_sweep_prunes_the_planted_trial_and_resumes_after_a_kill(tmp_path):
    root = SweepRoot(tmp_path / "sweep")
    args = ("--config", str(DEMO_SWEEP), "--root", str(root.root))
    log = tmp_path / "sweep.log"
    proc = start_sweep(*args, log=log)
    try:
        # Kill the whole sweep (its process group) while trial 4 trains: after trial 3, the planted one.
        deadline = time.monotonic() + 420
        while not root.trial(4).checkpoint_path("lora-000001").exists():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.1)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        # Its trainer and evaluator are in their own groups; they must stop by themselves.
        assert wait_until_gone(root.root, 90) == [], "children outlived the killed sweep"
        killed = read_model(root.trial(4).status_path, TrainerStatus)
        assert killed.state == "stopped" and killed.is_final, killed
        killed_files = _trainer_files(root.trial(4))
        (saved_state,) = [d.name for _, d in root.trial(4).state_dirs("lora") if d.name.startswith("lora-step")]

        again = subprocess.run(sweep_cmd(*args), cwd=REPO_ROOT, env=ENV, capture_output=True, text=True, timeout=420)
        assert again.returncode == 0, again.stdout + again.stderr
        assert wait_until_gone(root.root, 60) == [], "the evaluator the sweep started must stop with it"
    finally:
        kill_all_under(root.root)

    study = default_study(root)
    states = {t.number + 1: t.state for t in study.trials}
    assert states == {1: S.COMPLETE, 2: S.COMPLETE, 3: S.PRUNED, 4: S.FAIL, 5: S.COMPLETE}, states
    interrupted = study.trials[3]
    assert interrupted.user_attrs["interrupted"] is True and "died" in interrupted.user_attrs["fail_reason"]
    assert [t.root.name for t in root.trials()] == [f"trial_{n:04d}" for n in range(1, 6)], \
        "one folder per trial number; the killed trial's folder is kept, not reused"

    # The retry went on from the killed trial's state (saved on SIGTERM), in its own folder, with the
    # checkpoints up to it copied; the killed trial's files are as they were.
    retry = study.trials[4]
    assert retry.user_attrs["retry_of"] == 3 and retry.user_attrs["resumed_from"] == f"trial_0004/{saved_state}"
    history = read_model(root.trial(5).params_path, Params).history
    assert [h.mode for h in history] == ["new", "continue"] and history[1].resumed_at_step == killed.step, history
    assert _trainer_files(root.trial(4)) == killed_files, "the interrupted trial's files were changed"
    copied = {p.name for p in root.trial(5).checkpoint_paths()} & {p.name for p in root.trial(4).checkpoint_paths()}
    assert "lora-000001.safetensors" in copied
    assert all((root.trial(5).root / n).read_bytes() == (root.trial(4).root / n).read_bytes() for n in copied)
    assert f"going on from trial_0004/{saved_state}" in again.stderr + again.stdout

    # Every folder says which trial it is, with the values the study sampled.
    for t in study.trials:
        folder = root.trial(t.number + 1)
        params = read_model(folder.params_path, Params)
        assert params.sweep.trial_number == t.number + 1 and params.sweep.study_name == "demo"
        assert params.sweep.storage == root.default_storage
        assert params.sweep.params == t.params
        assert params.config.training.learning_rate == t.params["training.learning_rate"]
        assert params.config.output.dir == str(folder.root)

    # The planted trial: clearly worse at epoch 1, pruned, stopped by the trainer before its last epoch.
    planted, planted_dir = study.trials[2], root.trial(3)
    assert planted.params == {"training.learning_rate": 5000.0}
    status = read_model(planted_dir.status_path, TrainerStatus)
    assert status.state == "stopped_early" and "pruned" in status.message and status.epoch < EPOCHS, status
    assert not planted_dir.checkpoint_path("lora").exists(), "a pruned trial never saves its final LoRA"
    requests = [read_model(p, StopRequest) for p in planted_dir.root.glob("stop_request*.json")]
    assert [(r.reason, r.requested_by) for r in requests] == [("pruned", "sweep")]
    summary = read_model(planted_dir.evaluation_summary_path, EvaluationSummary)
    first = {e.epoch: e.metrics for e in summary.ordered()}[1]
    assert first.failure_rate == 1.0, "an absurd learning rate wrecks every sample"
    assert planted.intermediate_values[1] == pytest.approx(first.score)
    assert planted.value == planted.intermediate_values[planted.last_step], "PRUNED with its last score"
    median_at_1 = sorted(study.trials[i].intermediate_values[1] for i in (0, 1))
    assert first.score < min(median_at_1) - 0.1

    # Complete trials: the value is the best score over every checkpoint, final one included.
    for t in study.trials:
        if t.state != S.COMPLETE:
            continue
        folder = root.trial(t.number + 1)
        summary = read_model(folder.evaluation_summary_path, EvaluationSummary)
        assert read_model(folder.status_path, TrainerStatus).state == "finished"
        assert {c.stem for c in folder.checkpoints("lora")} <= set(summary.checkpoints)
        assert "lora" in summary.checkpoints, "the objective waits for the final checkpoint's score"
        assert t.value == pytest.approx(max(e.metrics.score for e in summary.checkpoints.values()))
        assert t.value == pytest.approx(summary.best.score)
        # Each epoch by the checkpoint that ends it (the retry's copied mid-epoch stop save does not stand for it).
        ends = lambda e: parse_stem(e.checkpoint).kind != "step"  # noqa: E731
        by_epoch = {e.epoch: e.metrics.score for e in summary.ordered() if not ends(e)}
        by_epoch |= {e.epoch: e.metrics.score for e in summary.ordered() if ends(e)}
        assert t.intermediate_values == pytest.approx(by_epoch)

    # A third run finds the study done: no trial, no new folder.
    third = subprocess.run(sweep_cmd(*args), cwd=REPO_ROOT, env=ENV, capture_output=True, text=True, timeout=120)
    assert third.returncode == 0 and "best: trial_" in third.stdout, third.stdout + third.stderr
    assert len(default_study(root).trials) == 5 and len(root.trials()) == 5
    page = root.index_path.read_text()
    assert "trial_0003" in page and "pruned" in page.lower()


def _trainer_files(trial) -> dict[str, bytes]:
    """What the trainer wrote in a trial folder (not the evaluator's results), by relative path."""
    return {str(p.relative_to(trial.root)): p.read_bytes() for p in sorted(trial.root.rglob("*"))
            if p.is_file() and not p.relative_to(trial.root).parts[0] in ("realtime_evaluations", "logs")
            and p.name != "sweep_trainer.out"}


def test_ctrl_c_stops_the_trial_and_records_it_as_interrupted(tmp_path):
    root = SweepRoot(tmp_path / "sweep")
    log = tmp_path / "sweep.log"
    proc = start_sweep("--config", str(DEMO_SWEEP), "--root", str(root.root), "--evaluator", "none", log=log)
    try:
        deadline = time.monotonic() + 120
        while (st := _status(root)) is None or st.state != "running":
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.1)
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in the terminal does (the trainer has its own group)
        assert proc.wait(timeout=90) == 130, log.read_text()[-3000:]
        assert wait_until_gone(root.root, 30) == []
    finally:
        kill_all_under(root.root)
    assert _status(root).state == "stopped", "the trainer was asked to save and stop"
    (trial,) = default_study(root).get_trials(states=(S.COMPLETE, S.PRUNED, S.FAIL, S.RUNNING))
    assert trial.state == S.FAIL and trial.user_attrs["interrupted"] is True


def _status(root: SweepRoot) -> TrainerStatus | None:
    return read_model_or_none(root.trial(1).status_path, TrainerStatus)
