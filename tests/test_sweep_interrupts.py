"""A sweep stopped at any moment loses nothing and runs nothing twice: an interrupted trial's parameters
are tried again once on the re-run, a trial the pruner had already judged is PRUNED, and a bad search
space is refused with one line before anything exists. Real SQLite studies and real sweep processes;
the trainer is a stand-in script (no training), so the tests wait on files, never on the clock."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from _sweep_helpers import DEMO_SWEEP, ENV, REPO_ROOT, default_study, kill_all_under
from conftest import as_a_terminal_starts_it
from shared.config import SearchDimension, load_config
from shared.errors import ConfigError
from shared.trial import SweepRoot, Trial
from trainer.sweep import bookkeeping
from trainer.sweep.driver import Sweep, SweepOptions

S = optuna.trial.TrialState
LR = "training.learning_rate"
DIST = optuna.distributions.FloatDistribution(1e-3, 3e-2, log=True)
# OMP_NUM_THREADS set: the sweep does not import torch to split the cores; PYTHONPATH: this checkout's code.
RUN_ENV = {**ENV, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}

FAKE_TRAINER = """\
#!{python}
# Stands in for `python -m trainer run` (and answers `-m evaluator report` with nothing).
import json, os, sys, time
from pathlib import Path
args = sys.argv[1:]
if args[:3] != ["-m", "trainer", "run"]:
    sys.exit(0)
out = Path(args[args.index("--output-dir") + 1])
tmp = out / "fake_args.json.tmp"
tmp.write_text(json.dumps(args))
tmp.rename(out / "fake_args.json")
mode = os.environ["FAKE_TRAINER"]
if mode == "crash":
    sys.exit(1)
if mode == "nan-then-hang":  # epoch 1 scored as the planted bad trial is, then slow to stop
    from shared.jsonio import write_model
    from shared.records import EvaluationSummary, Metrics, SummaryEntry
    from shared.trial import Trial
    write_model(Trial(out).evaluation_summary_path, EvaluationSummary(trial_name=out.name, checkpoints={{
        "lora-000001": SummaryEntry(checkpoint="lora-000001", epoch=1, step=4, metrics=Metrics(score=-1.0))}}))
time.sleep(600)
"""

HARNESS = """\
import functools, sys
import trainer.commands.sweep as command
from trainer.cli import main
command.SweepOptions = functools.partial(command.SweepOptions, python={fake!r})
sys.exit(main(sys.argv[1:]))
"""


# ---------------------------------------------------------------- bad input: one line, nothing created


def _bad_config(tmp_path: Path, old: str, new: str) -> Path:
    text = DEMO_SWEEP.read_text()
    assert old in text
    path = tmp_path / "sweep.toml"
    path.write_text(text.replace(old, new, 1))
    return path


def test_a_misspelled_search_field_is_one_error_before_anything_exists(tmp_path):
    config = _bad_config(tmp_path, '"training.learning_rate" = { low', '"training.learnig_rate" = { low')
    root = tmp_path / "root"
    proc = subprocess.run([sys.executable, "-m", "trainer", "sweep", "--config", str(config), "--root", str(root),
                           "--n-trials", "1"], cwd=REPO_ROOT, env=RUN_ENV, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    assert len(lines) == 1, lines
    assert "field 'sweep.space.training.learnig_rate': not a config field" in lines[0]
    assert str(config) in lines[0]
    assert not root.exists(), "nothing may be created for a bad config (no root, no study.db)"


def _sweep(tmp_path: Path, space=None, enqueue=None) -> Sweep:
    config = load_config(DEMO_SWEEP)
    changes = {}
    if space is not None:
        changes["space"] = {k: SearchDimension(**v) for k, v in space.items()}
    if enqueue is not None:
        changes["enqueue"] = enqueue
    config = config.model_copy(update={"sweep": config.sweep.model_copy(update=changes)})
    root = tmp_path / "root"
    return Sweep(SweepOptions(config_path=DEMO_SWEEP, config=config, root=root, n_trials=3,
                              storage=SweepRoot(root).default_storage, study_name="demo", start_evaluator=False))


@pytest.mark.parametrize("space, enqueue, field, problem", [
    ({"training": {"low": 1, "high": 2}}, [], "sweep.space.training", "is a section"),
    ({LR: {"low": 1e-2, "high": 1e-3}}, [], f"sweep.space.{LR}", "not a range Optuna accepts"),
    ({LR: {"low": 0.0, "high": 1e-3, "log": True}}, [], f"sweep.space.{LR}", "not a range Optuna accepts"),
    ({LR: {"low": 1e-3, "high": 3e-2}}, [{"training.learnig_rate": 1e-3}], "sweep.enqueue[0].training.learnig_rate",
     "not a config field"),
    ({LR: {"low": 1e-3, "high": 3e-2}}, [{LR: 1e-3}, {"network.dim": 8}], "sweep.enqueue[1].network.dim",
     "not a field of [sweep.space]"),
    ({LR: {"low": 1e-3, "high": 3e-2}}, [{LR: "fast"}], f"sweep.enqueue[0].{LR}", "is not a number"),
    ({"network.dim": {"choices": [4, 8]}}, [{"network.dim": 16}], "sweep.enqueue[0].network.dim",
     "is not one of the choices"),
    ({"network.dim": {"low": 2, "high": 16}}, [{"network.dim": 2.5}], "sweep.enqueue[0].network.dim",
     "is not an integer"),
])
def test_bad_space_or_enqueued_values_are_refused_naming_the_field(tmp_path, space, enqueue, field, problem):
    with pytest.raises(ConfigError) as err:
        _sweep(tmp_path, space, enqueue)
    assert f"field '{field}'" in str(err.value) and problem in str(err.value), str(err.value)
    assert not (tmp_path / "root").exists()


def test_the_demo_space_and_its_planted_out_of_range_trial_are_accepted(tmp_path):
    _sweep(tmp_path)  # lr = 5000 is far outside the range, on purpose


# ---------------------------------------------------------------- the study after an interruption


def _dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def _orphan(study, root: Path, pid: int, host: str | None = None):
    """A RUNNING trial whose sweep process is gone, with a sampled value."""
    t = study.ask()
    t.suggest_float(LR, 1e-3, 3e-2, log=True)
    t.set_user_attr(bookkeeping.HOST, host or socket.gethostname())
    t.set_user_attr(bookkeeping.PID, pid)
    t.set_user_attr(bookkeeping.ROOT, str(root.resolve()))
    return t


def test_interrupted_trials_are_enqueued_again_once_with_their_parameters(tmp_path):
    sweep = _sweep(tmp_path)
    root = tmp_path / "root"
    root.mkdir()
    study = sweep.open_study()  # plants 2e-2, 5e-3, 5000 as trials 0..2
    ctrl_c = study.ask()  # the enqueued 2e-2: Ctrl-C came before it had even suggested its value
    assert ctrl_c.number == 0
    bookkeeping.claim(ctrl_c, root)
    bookkeeping.mark_interrupted(ctrl_c, "the sweep was interrupted")
    study.tell(ctrl_c, state=S.FAIL)
    killed = _orphan(study, root, _dead_pid())  # a planted 5e-3 trial whose sweep was killed -9
    elsewhere = _orphan(study, tmp_path / "other-root", _dead_pid())  # another root's: its own re-run's job
    own_failure = study.ask()  # failed on its own (the trainer's error): a result, not tried again
    own_failure.set_user_attr(bookkeeping.FAIL_REASON, "trainer failed: CUDA out of memory")
    study.tell(own_failure, state=S.FAIL)

    for _ in range(3):  # re-runs; also a sweep killed after re-enqueueing enqueues nothing twice
        study = sweep.open_study()
    trials = study.get_trials()
    assert trials[killed.number].state == S.FAIL and trials[killed.number].user_attrs[bookkeeping.INTERRUPTED]
    retries = {t.user_attrs[bookkeeping.RETRY_OF]: t for t in trials if bookkeeping.RETRY_OF in t.user_attrs}
    assert sorted(retries) == [ctrl_c.number, killed.number], "each interrupted trial of this root, once"
    assert all(t.state == S.WAITING for t in retries.values())
    assert retries[ctrl_c.number].system_attrs["fixed_params"] == {LR: 2e-2}
    assert retries[killed.number].system_attrs["fixed_params"] == {LR: trials[killed.number].params[LR]}
    assert trials[elsewhere.number].state == S.FAIL and elsewhere.number not in retries, \
        "another root's dead trial is marked, and left for that root's re-run to try again"
    assert bookkeeping.counted(study) == 1, "only the failure on its own counts"

    # The retry runs the same values; interrupted in turn, it is retried in turn (and only it).
    retry = study.ask()
    assert retry.number == retries[ctrl_c.number].number, "retries run in the order they were enqueued"
    bookkeeping.claim(retry, root)
    bookkeeping.mark_interrupted(retry, "the sweep was interrupted")
    study.tell(retry, state=S.FAIL)
    study = sweep.open_study()
    again = [t for t in study.get_trials() if t.user_attrs.get(bookkeeping.RETRY_OF) == retry.number]
    assert len(again) == 1 and again[0].system_attrs["fixed_params"] == bookkeeping.retry_params(
        study.get_trials()[retry.number])


def test_a_pruning_decision_outlives_the_sweep_that_made_it(tmp_path):
    sweep = _sweep(tmp_path)
    root = tmp_path / "root"
    root.mkdir()
    study = sweep.open_study()
    for _ in range(3):  # the planted trials run elsewhere: keep them out of the way
        study.tell(study.ask(), 0.5)
    judged = _orphan(study, root, _dead_pid())
    judged.report(0.6, 1)
    judged.report(-1.0, 2)
    judged.set_user_attr(bookkeeping.PRUNED_AT, 2)  # the sweep had written the stop request, then died

    study = sweep.open_study()
    frozen = study.get_trials()[judged.number]
    assert frozen.state == S.PRUNED and frozen.value == -1.0, "recorded PRUNED with its last score"
    assert not any(bookkeeping.RETRY_OF in t.user_attrs for t in study.get_trials()), "a result is not retried"
    assert bookkeeping.counted(study) == 4


# ---------------------------------------------------------------- real sweeps, stopped with Ctrl-C


def _harness(tmp_path: Path) -> Path:
    fake = tmp_path / "fake-python"
    fake.write_text(FAKE_TRAINER.format(python=sys.executable))
    fake.chmod(0o755)
    harness = tmp_path / "sweep_harness.py"
    harness.write_text(HARNESS.format(fake=str(fake)))
    return harness


def _start(tmp_path: Path, root: Path, mode: str, n_trials: int, log: Path) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, str(_harness(tmp_path)), "sweep", "--config", str(DEMO_SWEEP),
                                 "--root", str(root), "--n-trials", str(n_trials), "--evaluator", "none"],
                                cwd=REPO_ROOT, env={**RUN_ENV, "FAKE_TRAINER": mode}, stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                                preexec_fn=as_a_terminal_starts_it)


def _wait_for(path: Path, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 120  # a safety net only: the test waits for the file
    while not path.exists():
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.05)


def _ctrl_c(proc: subprocess.Popen, log: Path) -> None:
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in the terminal does (the trainer has its own group)
    assert proc.wait(timeout=60) == 130, log.read_text()[-3000:]


def test_ctrl_c_then_rerun_tries_the_interrupted_enqueued_settings_again(tmp_path):
    root = SweepRoot(tmp_path / "sweep")
    log = tmp_path / "sweep.log"
    try:
        first = _start(tmp_path, root.root, "hang", 3, log)
        _wait_for(root.trial(1).root / "fake_args.json", first, log)  # the enqueued lr = 2e-2 is training
        _ctrl_c(first, log)
        with open(log, "ab") as out:  # every trainer fails at once now: each trial counts, nothing trains
            again = subprocess.run([sys.executable, str(_harness(tmp_path)), "sweep", "--config", str(DEMO_SWEEP),
                                    "--root", str(root.root), "--n-trials", "3", "--evaluator", "none"],
                                   cwd=REPO_ROOT, env={**RUN_ENV, "FAKE_TRAINER": "crash"}, stdout=out,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, timeout=300)
        assert again.returncode == 1, log.read_text()[-3000:]  # no trial completed
    finally:
        kill_all_under(root.root)
    trials = default_study(root).get_trials()
    assert trials[0].state == S.FAIL and trials[0].user_attrs[bookkeeping.INTERRUPTED] is True
    ran = {t.number: t.params[LR] for t in trials if t.state != S.WAITING}
    assert ran == {0: 2e-2, 1: 5e-3, 2: 5000.0, 3: 2e-2}, "the interrupted settings are tried again"
    assert trials[3].user_attrs[bookkeeping.RETRY_OF] == 0
    args = json.loads((root.trial(4).root / "fake_args.json").read_text())
    assert f"{LR}=0.02" in args and "--new" in args, args
    assert "tried again as trial_0004" in log.read_text()

    third = subprocess.run([sys.executable, str(_harness(tmp_path)), "sweep", "--config", str(DEMO_SWEEP),
                            "--root", str(root.root), "--n-trials", "3", "--evaluator", "none"], cwd=REPO_ROOT,
                           env={**RUN_ENV, "FAKE_TRAINER": "crash"}, capture_output=True, text=True, timeout=120)
    assert third.returncode == 1, third.stdout + third.stderr
    assert len(default_study(root).trials) == 4 and len(root.trials()) == 4, "done: nothing new, nothing twice"


def test_ctrl_c_after_the_pruning_decision_records_the_trial_pruned(tmp_path):
    root = SweepRoot(tmp_path / "sweep")
    root.root.mkdir(parents=True)
    study = optuna.create_study(study_name="demo", storage=root.default_storage, direction="maximize")
    for lr, score in ((2e-2, 0.60), (5e-3, 0.61)):  # the two sane planted trials, done
        study.add_trial(optuna.trial.create_trial(params={LR: lr}, distributions={LR: DIST}, value=score,
                                                  intermediate_values={1: score}))
    log = tmp_path / "sweep.log"
    try:
        proc = _start(tmp_path, root.root, "nan-then-hang", 3, log)
        planted = Trial(root.trial(3).root)  # lr = 5000: epoch 1 at -1, far below the median
        _wait_for(planted.stop_request_path, proc, log)  # pruned; the trainer is still saving
        _ctrl_c(proc, log)
    finally:
        kill_all_under(root.root)
    trial = default_study(root).get_trials()[2]
    assert trial.params == {LR: 5000.0}
    assert trial.state == S.PRUNED and trial.value == -1.0, (trial.state, trial.user_attrs)
    assert "interrupted" not in trial.user_attrs and "fail_reason" not in trial.user_attrs
