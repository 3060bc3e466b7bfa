"""The sweep's pieces on real files, real SQLite studies and real processes (no training here):
score following, the objective, counting and orphaned trials, seeds, storage URLs, finding an
evaluator, children that die with the sweep."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import pytest
from safetensors.numpy import save_file

from _sweep_helpers import REPO_ROOT
from shared.config import RunConfig, SearchDimension, SweepConfig, load_config
from shared.errors import EpochscopeError
from shared.jsonio import write_model
from shared.records import EvaluationSummary, Metrics, Params, SummaryEntry, SweepInfo
from shared.trial import SweepRoot, Trial
from trainer.sweep import bookkeeping
from trainer.sweep.children import evaluator_serving, spawn
from trainer.sweep.driver import Sweep, SweepOptions, TrialFailed
from trainer.sweep.monitor import ScoreFollower, all_scored, objective_value, read_summary
from trainer.sweep.pruners import margin_median_pruner
from trainer.sweep.space import build_sampler, sample, sampler_seed
from trainer.sweep.storage import masked, open_study, with_driver

S = optuna.trial.TrialState


def _summary(*scores, failed=()):
    return EvaluationSummary(trial_name="t", failed={name: "bad header" for name in failed}, checkpoints={
        f"lora-{i:06d}": SummaryEntry(checkpoint=f"lora-{i:06d}", epoch=i, step=4 * i, metrics=Metrics(score=s))
        for i, s in enumerate(scores, 1)})


def test_follower_reports_each_epoch_once_in_order():
    f = ScoreFollower()
    assert f.new_points(None) == []
    assert f.new_points(_summary(0.1, 0.3)) == [(1, 0.1), (2, 0.3)]
    assert f.new_points(_summary(0.1, 0.3, 0.2)) == [(3, 0.2)]
    assert objective_value(_summary(0.1, 0.3, 0.2), "score", "maximize") == 0.3
    assert objective_value(_summary(0.1, 0.3, 0.2), "score", "minimize") == 0.1
    steps_only = EvaluationSummary(trial_name="t", checkpoints={"lora-step00000500": SummaryEntry(
        checkpoint="lora-step00000500", step=500, metrics=Metrics(score=0.4))})
    assert ScoreFollower().new_points(steps_only) == [(500, 0.4)]


def test_an_epoch_is_reported_by_the_checkpoint_that_ends_it_whatever_the_scoring_order():
    """A step checkpoint inside an epoch (the built-in trainer's save on a stop mid-epoch 2 carries ss_epoch 1, the
    epochs completed; sd-scripts' save_every_n_steps files carry the epoch in progress) must not stand for the
    epoch its epoch file ends, whether it is scored in the same poll or in a later one."""
    def summary(*entries):
        return EvaluationSummary(trial_name="t", checkpoints={
            stem: SummaryEntry(checkpoint=stem, epoch=epoch, step=step, metrics=Metrics(score=score))
            for stem, epoch, step, score in entries})

    epoch1 = ("lora-000001", 1, 4, 0.50)
    stop_save = ("lora-step00000006", 1, 6, 0.90)  # mid-epoch 2, labelled with the epoch completed
    epoch2 = ("lora-000002", 2, 8, 0.60)
    one_poll = ScoreFollower()
    assert one_poll.new_points(summary(epoch1, stop_save)) == [(1, 0.50)]
    assert one_poll.new_points(summary(epoch1, stop_save, epoch2)) == [(2, 0.60)]
    two_polls = ScoreFollower()
    assert two_polls.new_points(summary(epoch1)) == [(1, 0.50)]
    assert two_polls.new_points(summary(epoch1, stop_save)) == []
    # Only step files: an epoch stands for itself by its latest step file once a later epoch has begun.
    in_progress = ScoreFollower()
    assert in_progress.new_points(summary(("lora-step00000002", 1, 2, 0.1), ("lora-step00000004", 1, 4, 0.2))) == []
    assert in_progress.new_points(summary(("lora-step00000002", 1, 2, 0.1), ("lora-step00000004", 1, 4, 0.2),
                                          ("lora-step00000006", 2, 6, 0.3))) == [(1, 0.2)]
    assert in_progress.new_points(summary(("lora-step00000006", 2, 6, 0.3), ("lora", 2, 8, 0.4))) == [(2, 0.4)]


def test_scores_are_taken_only_once_every_checkpoint_on_disk_is_in_the_summary(tmp_path):
    trial = Trial(tmp_path / "trial_0001")
    trial.root.mkdir()
    assert read_summary(trial) is None and not all_scored(trial, None, "lora")
    for epoch in (1, 2, 3):
        save_file({"w": np.zeros(4, dtype="float32")}, trial.checkpoint_path(f"lora-{epoch:06d}"))
    (trial.root / "lora-000004.safetensors").write_bytes(b"\x00" * 3)  # still being written: not counted
    trial.evaluations_dir.mkdir()
    write_model(trial.evaluation_summary_path, _summary(0.5, 0.6))
    assert not all_scored(trial, read_summary(trial), "lora")
    write_model(trial.evaluation_summary_path, _summary(0.5, 0.6, failed=["lora-000003"]))
    assert all_scored(trial, read_summary(trial), "lora"), "a checkpoint that failed scoring is settled"
    trial.evaluation_summary_path.write_text("{not json")
    assert read_summary(trial) is None, "a bad summary must not kill the sweep"


def test_storage_urls():
    assert masked("postgresql://me:secret@db/optuna") == "postgresql://me:***@db/optuna"
    assert masked("sqlite:////x/study.db") == "sqlite:////x/study.db"
    assert with_driver("postgresql://me@db/o").startswith(("postgresql+psycopg://", "postgresql+psycopg2://"))
    assert with_driver("sqlite:////x.db") == "sqlite:////x.db"


def test_an_unreachable_storage_is_one_line_without_the_password():
    with pytest.raises(EpochscopeError) as e:
        open_study("postgresql://me:hunter2@127.0.0.1:1/optuna", "s", "maximize", None, None, attempts=1)
    assert "hunter2" not in str(e.value) and "me:***@127.0.0.1:1" in str(e.value)
    assert len(str(e.value).splitlines()) == 1


def test_sampling_respects_field_types():
    study = optuna.create_study()
    trial = study.ask()
    space = {"network.dim": SearchDimension(low=4, high=32), "training.learning_rate": SearchDimension(
        low=1e-5, high=1e-3, log=True), "training.optimizer": SearchDimension(choices=["AdamW", "SGD"]),
        "network.alpha": SearchDimension(low=1, high=8, step=0.5)}
    values = sample(trial, space, RunConfig())
    assert isinstance(values["network.dim"], int) and 4 <= values["network.dim"] <= 32
    assert isinstance(values["training.learning_rate"], float) and 1e-5 <= values["training.learning_rate"] <= 1e-3
    assert values["training.optimizer"] in ("AdamW", "SGD")
    assert values["network.alpha"] * 2 == int(values["network.alpha"] * 2)
    dist = trial.distributions
    assert dist["training.learning_rate"].log and isinstance(dist["network.dim"], optuna.distributions.IntDistribution)
    with pytest.raises(EpochscopeError, match="not a config field"):
        sample(trial, {"training.nope": SearchDimension(low=1, high=2)}, RunConfig())
    assert SweepConfig().pruner.type == "median"


def test_seeds_move_on_with_the_study_and_differ_between_workers():
    assert sampler_seed(None, 5) is None
    assert sampler_seed(0, 0) == 0 and sampler_seed(0, 4) == 4, "a resumed sweep must not replay its start"
    assert sampler_seed(0, 0, "hostA:10") != sampler_seed(0, 0, "hostB:10")

    def first_lr(seed):
        study = optuna.create_study(sampler=build_sampler(SweepConfig(), seed))
        space = {"training.learning_rate": SearchDimension(low=1e-5, high=1e-3, log=True)}
        return sample(study.ask(), space, RunConfig())["training.learning_rate"]

    assert first_lr(sampler_seed(0, 0, "a:1")) != first_lr(sampler_seed(0, 0, "b:2"))
    assert first_lr(sampler_seed(0, 3)) == first_lr(sampler_seed(0, 3)), "one worker's sweep is reproducible"


def test_margin_pruner_prunes_only_clearly_worse_trials():
    study = optuna.create_study(direction="maximize",
                                pruner=margin_median_pruner(0.1, n_startup_trials=2, n_warmup_steps=1))
    for value in (0.60, 0.61):
        t = study.ask()
        t.report(value, 1)
        study.tell(t, value)
    close, bad, nan = study.ask(), study.ask(), study.ask()
    close.report(0.58, 1)
    bad.report(0.0, 1)
    nan.report(float("nan"), 1)
    assert not close.should_prune() and bad.should_prune() and nan.should_prune()


def _dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def test_orphans_of_a_dead_sweep_fail_as_interrupted_and_do_not_count(tmp_path):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    done = study.ask()
    study.tell(done, 0.5)
    failed = study.ask()
    failed.set_user_attr(bookkeeping.FAIL_REASON, "trainer failed: CUDA out of memory")
    study.tell(failed, state=S.FAIL)
    orphan = study.ask()  # its sweep process is gone
    orphan.set_user_attr(bookkeeping.HOST, socket.gethostname())
    orphan.set_user_attr(bookkeeping.PID, _dead_pid())
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = study.ask()  # another sweep on this machine, still working on it
        live.set_user_attr(bookkeeping.HOST, socket.gethostname())
        live.set_user_attr(bookkeeping.PID, sleeper.pid)
        live.set_user_attr(bookkeeping.PID_START, bookkeeping.process_start(sleeper.pid))
        reused = study.ask()  # the pid was reused by an unrelated process
        reused.set_user_attr(bookkeeping.HOST, socket.gethostname())
        reused.set_user_attr(bookkeeping.PID, sleeper.pid)
        reused.set_user_attr(bookkeeping.PID_START, 1)
        assert bookkeeping.counted(study) == 5
        assert bookkeeping.fail_orphans(study) == [orphan.number, reused.number]
    finally:
        sleeper.kill()
        sleeper.wait()
    states = {t.number: t.state for t in study.trials}
    assert states == {0: S.COMPLETE, 1: S.FAIL, 2: S.FAIL, 3: S.RUNNING, 4: S.FAIL}
    assert study.trials[2].user_attrs[bookkeeping.INTERRUPTED] is True
    assert bookkeeping.counted(study) == 3, "complete + failed on its own + running; interrupted ones do not count"


def _sweep(tmp_path, **changes) -> Sweep:
    config = load_config(REPO_ROOT / "configs" / "demo-sweep.toml")
    config = config.model_copy(update={"sweep": config.sweep.model_copy(update=changes)})
    root = tmp_path / "root"
    return Sweep(SweepOptions(config_path=REPO_ROOT / "configs" / "demo-sweep.toml", config=config, root=root,
                              n_trials=4, storage=SweepRoot(root).default_storage, study_name="demo",
                              start_evaluator=False))


def test_of_two_workers_that_ask_at_once_for_the_last_trial_the_later_stands_down(tmp_path, capsys):
    """n_trials = 4 and 3 trials count when two workers each ask for one more. The storage numbers trials
    in order: the later is surplus, is never run, and gives back the enqueued retry it had taken."""
    sweep = _sweep(tmp_path)
    (tmp_path / "root").mkdir()
    study = sweep.open_study()  # plants 3 enqueued trials
    for value in (0.1, 0.2):
        study.tell(study.ask(), value)
    study.ask()  # trial 2 runs on some worker
    first = study.ask()  # one worker takes the last trial; this worker, asking at the same moment, takes a retry
    study.enqueue_trial({"training.learning_rate": 1e-3}, user_attrs={bookkeeping.RETRY_OF: 0})
    study.optimize(sweep.objective, n_trials=2, catch=(TrialFailed,))

    assert not bookkeeping.surplus(first, 4)
    late = study.trials[first.number + 1]
    assert late.user_attrs[bookkeeping.SURPLUS] is True and late.state == S.FAIL and late.params == {}
    assert not (tmp_path / "root" / f"trial_{late.number + 1:04d}").exists(), "never run"
    assert [t.number for t in study.trials if t.state != S.WAITING] == list(range(late.number + 1)), "stopped"
    assert bookkeeping.counted(study) == 4
    assert bookkeeping.requeue_interrupted(study, tmp_path / "root", False) == [], "not an interrupted trial"
    waiting = study.get_trials(states=(S.WAITING,))
    assert [(t.system_attrs["fixed_params"], t.user_attrs) for t in waiting] == [
        ({"training.learning_rate": 1e-3}, {bookkeeping.RETRY_OF: 0})], "the retry it took is given back"
    sweep._print_results(study)
    out = capsys.readouterr().out
    assert f"trial_{first.number + 1:04d}" in out and f"trial_{late.number + 1:04d}" not in out


def test_reopening_a_study_enqueues_the_fixed_trials_once(tmp_path):
    sweep = _sweep(tmp_path)
    (tmp_path / "root").mkdir()
    for _ in range(2):
        study = sweep.open_study()
    waiting = study.get_trials(states=(S.WAITING,))
    assert [t.system_attrs["fixed_params"] for t in waiting] == [{"training.learning_rate": v} for v in (2e-2, 5e-3, 5000.0)]


def test_a_root_belongs_to_one_study_and_the_objective_must_be_a_metric(tmp_path):
    with pytest.raises(EpochscopeError, match="sweep.objective = 'scor' is not a metric"):
        _sweep(tmp_path, objective="scor")
    sweep = _sweep(tmp_path)
    t = sweep.root.trial(1)
    t.root.mkdir(parents=True)
    write_model(t.params_path, Params(trial_name=t.name, backend="builtin", config=RunConfig(), sweep=SweepInfo(
        study_name="other", storage="sqlite:///x", trial_number=1)))
    with pytest.raises(EpochscopeError, match="holds trials of the study 'other'"):
        sweep.run()


def test_an_evaluator_watching_the_root_is_found_by_its_command_line(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    assert evaluator_serving(root) is None
    # A real process whose command line reads like `python -m evaluator watch --dir root` (relative).
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "-m", "evaluator", "watch",
                             "--dir", "root"], cwd=tmp_path)
    try:
        deadline = time.monotonic() + 10
        while evaluator_serving(root) != proc.pid:
            assert time.monotonic() < deadline, "the evaluator process was not found"
            time.sleep(0.05)
        assert evaluator_serving(tmp_path) is None, "it watches root, not its parent"
    finally:
        proc.kill()
        proc.wait()


def test_children_stop_when_the_sweep_is_killed(tmp_path):
    """SIGKILL leaves no chance to clean up: the children must notice by themselves."""
    marker = tmp_path / "child.pid"
    script = tmp_path / "sweep.py"
    child = f"import os, time; open({str(marker)!r}, 'w').write(str(os.getpid())); time.sleep(120)"
    script.write_text("import os, sys, time\nfrom trainer.sweep.children import spawn\n"
                      f"spawn([sys.executable, '-c', {child!r}], dict(os.environ))\ntime.sleep(120)\n")
    parent = subprocess.Popen([sys.executable, str(script)], cwd=REPO_ROOT, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while not marker.exists() or not marker.read_text():
            assert time.monotonic() < deadline and parent.poll() is None
            time.sleep(0.05)
        child = int(marker.read_text())
        os.killpg(parent.pid, signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 10
        while Path(f"/proc/{child}").exists() and "zombie" not in _state(child):
            assert time.monotonic() < deadline, "the child outlived the killed sweep"
            time.sleep(0.05)
    finally:
        if parent.poll() is None:
            parent.kill()


def _state(pid: int) -> str:
    try:
        return "zombie" if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z" else "alive"
    except OSError:
        return "zombie"


def test_spawn_puts_the_child_in_its_own_group(tmp_path):
    with open(tmp_path / "out", "wb") as out:
        proc = spawn([sys.executable, "-c", "import os; print(os.getpgid(0) == os.getpid())"], dict(os.environ), out)
    assert proc.wait(timeout=30) == 0
    assert (tmp_path / "out").read_text().strip() == "True"
