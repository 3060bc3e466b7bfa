"""The sweep loop: one Optuna study (SQLite by default, PostgreSQL for many machines), one trainer
process per trial in ``<root>/trial_NNNN`` (NNNN = Optuna's trial number + 1, unique across workers),
pruning from the evaluator's scores as checkpoints land."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from shared.config import RunConfig, load_config
from shared.errors import EpochscopeError
from shared.folder_lock import FolderLock
from shared.jsonio import read_model_or_none, write_model
from shared.records import DIVERGED, Metrics, Params, StopRequest, SweepInfo, TrainerStatus
from shared.trial import SweepRoot, Trial
from trainer.commands.run import SWEEP_INFO_ENV
from trainer.sweep import bookkeeping
from trainer.sweep.children import child_env, evaluator_serving, spawn, stop_group
from trainer.sweep.monitor import ScoreFollower, all_scored, objective_value, read_summary
from trainer.sweep.space import build_pruner, build_sampler, check_space, sample, sampler_seed
from trainer.sweep.storage import masked, open_study

log = logging.getLogger("epochscope.sweep")
POLL_S = 0.5
EVALUATOR_CHECK_S = 5.0
EVALUATOR_RESTARTS = 3
NO_EVALUATOR_WARNING_S = 30.0
SWEEP_LOCK = ".sweep.lock"  # in the root: one sweep at a time plants and re-enqueues trials
PRUNED_STOP_WAIT_S = 300.0  # a pruned trainer saves and stops; past this it is stopped by signal
SUCCESS_STATES = ("finished", "stopped_early")  # stopped_early: the evaluator's own early stopping


@dataclass
class SweepOptions:
    config_path: Path
    config: RunConfig
    root: Path
    n_trials: int
    storage: str
    study_name: str
    start_evaluator: bool
    python: str = sys.executable

    @property
    def shared_storage(self) -> bool:
        """Anything but this root's own SQLite file may be shared with other workers."""
        return self.storage != SweepRoot(self.root).default_storage


class TrialFailed(Exception):
    """The trial FAILed for a reason recorded in its ``fail_reason`` user attr (or stood down as ``surplus``);
    the sweep goes on."""


def fail(trial, reason: str) -> TrialFailed:
    trial.set_user_attr(bookkeeping.FAIL_REASON, reason)
    log.warning("trial %d failed: %s", trial.number + 1, reason)
    return TrialFailed(reason)


class Sweep:
    def __init__(self, opts: SweepOptions) -> None:
        self.opts = opts
        self.cfg = opts.config.sweep
        self.root = SweepRoot(opts.root)
        self.evaluator: subprocess.Popen | None = None
        self._evaluator_checked = -1e9
        self._evaluator_starts = 0
        self._other_evaluator: int | None = None
        self._pruned_at: int | None = None  # the running trial's pruning decision
        self._interrupted = False  # Ctrl-C/SIGTERM came while a pruned trial was stopping: stop after it
        # Every check on the input comes here, before the root, the study or a child exists.
        if self.cfg.objective not in Metrics.model_fields:
            raise EpochscopeError(f"{opts.config_path}: sweep.objective = {self.cfg.objective!r} is not a metric; "
                                  f"use one of {', '.join(Metrics.model_fields)}")
        check_space(self.cfg.space, self.cfg.enqueue, opts.config, opts.config_path)

    # ---------------------------------------------------------------- study

    def open_study(self):
        """Open (or create) the study, plant the enqueued trials once, settle what dead sweeps left, and
        enqueue again the parameters of this root's interrupted trials."""
        import optuna

        optuna.logging.set_verbosity(optuna.logging.ERROR)  # outcomes are logged here, without tracebacks
        study = open_study(self.opts.storage, self.opts.study_name, self.cfg.direction,
                           build_sampler(self.cfg, None), build_pruner(self.cfg))
        worker = f"{socket.gethostname()}:{os.getpid()}" if self.opts.shared_storage else None
        study.sampler = build_sampler(self.cfg, sampler_seed(self.cfg.seed, len(study.trials), worker))
        lock = FolderLock(self.root.root / SWEEP_LOCK)  # two sweeps on one root: one re-enqueues, not both
        lock.acquire(wait=True)
        try:
            for params in self.cfg.enqueue:
                study.enqueue_trial(params, skip_if_exists=True)
            bookkeeping.fail_orphans(study)
            optuna.storages.fail_stale_trials(study)  # other machines' dead workers, after the heartbeat grace
            bookkeeping.requeue_interrupted(study, self.root.root, self.opts.shared_storage)
        finally:
            lock.release()
        return study

    def _check_root(self) -> None:
        """A root belongs to one study: trial numbers of two studies would share folder names."""
        for t in self.root.trials():
            params = read_model_or_none(t.params_path, Params)
            if params is not None and params.sweep is not None and params.sweep.study_name != self.opts.study_name:
                raise EpochscopeError(f"{t.params_path}: {self.root.root} holds trials of the study "
                                      f"{params.sweep.study_name!r}, not {self.opts.study_name!r}; "
                                      "use another --root or the same --study")

    def _enough(self, study) -> bool:
        return bookkeeping.counted(study) >= self.opts.n_trials

    # ---------------------------------------------------------------- one trial

    def objective(self, trial) -> float:
        import optuna

        number = trial.number + 1
        t = self.root.trial(number)
        follower = ScoreFollower(self.cfg.objective)
        interrupted = False
        proc: subprocess.Popen | None = None
        self._pruned_at = None
        if bookkeeping.surplus(trial, self.opts.n_trials):
            bookkeeping.stand_down(trial)
            trial.study.stop()
            log.info("trial %d: another worker took the study's last trial at the same moment; this one is not run",
                     number)
            raise TrialFailed("surplus")
        try:
            bookkeeping.claim(trial, self.root.root)
            values = sample(trial, self.cfg.space, self.opts.config)
            retry = trial.user_attrs.get(bookkeeping.RETRY_OF)
            log.info("trial %d: %s%s", number, ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                                         for k, v in values.items()),
                     f" (again: trial {retry + 1} was interrupted)" if retry is not None else "")
            resume = self._continue_interrupted(trial, t, retry, values) if retry is not None else False
            proc = self._start_trainer(t, number, values, resume)
            pruned_at = self._follow_training(proc, t, trial, follower)
            status = read_model_or_none(t.status_path, TrainerStatus)
            if pruned_at is not None:
                trial.set_user_attr("stopped_at_epoch", status.epoch if status else None)
                raise optuna.TrialPruned(f"pruned at epoch {pruned_at}")
            if status is not None and status.state == "failed" and (status.message or "").startswith(DIVERGED):
                raise self._diverged(t, trial, follower, status)
            if proc.returncode != 0 or status is None or status.state not in SUCCESS_STATES:
                reason = (status.message if status and status.message
                          else f"trainer exited with {proc.returncode}; see {t.root / 'sweep_trainer.out'}")
                raise fail(trial, f"trainer {status.state if status else 'crashed'}: {reason}")
            value = self._wait_for_scores(t, trial, follower)
        except KeyboardInterrupt:
            interrupted = True
            if self._pruned_at is not None:  # the pruner had decided: that is the trial's result
                self._interrupted = True
                trial.study.stop()
                status = read_model_or_none(t.status_path, TrainerStatus)
                trial.set_user_attr("stopped_at_epoch", status.epoch if status else None)
                raise optuna.TrialPruned(f"pruned at epoch {self._pruned_at}") from None
            bookkeeping.mark_interrupted(trial, "the sweep was interrupted")
            raise
        finally:
            if proc is not None:
                stop_group(proc)
            if not interrupted:  # the sweep refreshes the index once on its way out
                self._refresh_index()
        log.info("trial %d: %s = %.4f", number, self.cfg.objective, value)
        return value

    def _diverged(self, t: Trial, trial, follower: ScoreFollower, status: TrainerStatus) -> Exception:
        """A run that diverged is a result about its parameters, not a failure of the machinery: recorded FAIL,
        the sampler would ignore it and try the same region again. Recorded PRUNED, with whatever the
        evaluator has scored, it ranks below every trial that got further (Optuna's TPE ranks pruned trials by
        the step they reached), so the search learns to avoid it."""
        import optuna

        for epoch, value in follower.new_points(read_summary(t)):
            trial.report(value, epoch)
        trial.set_user_attr(bookkeeping.DIVERGED, status.message)
        trial.set_user_attr("stopped_at_epoch", status.epoch)
        log.warning("trial %d: %s", trial.number + 1, status.message)
        return optuna.TrialPruned(f"training diverged in epoch {status.epoch}")

    def _continue_interrupted(self, trial, t: Trial, retry: int, values: dict) -> bool:
        """A retry goes on where the interrupted trial's newest complete training state left off: that state,
        the checkpoints up to it and the run's logs are copied into the retry's own folder (the interrupted
        one is only read), and the trainer runs ``--continue``. False (train from the start) when there is no
        complete state or it cannot be copied."""
        from trainer.backends import get_backend
        from trainer.outputs import copy_run_until

        source = self.root.trial(retry + 1)
        try:
            config = load_config(self.opts.config_path, {**values, "output.dir": str(source.root)})
            point = get_backend(config.training.backend).find_resume_point(config, source)
            if point is None:
                return False
            copy_run_until(source, t, config.output.name, point.state_dir, point.step, point.epoch)
        except (OSError, EpochscopeError) as e:
            log.warning("trial %d: cannot go on from trial %d's files (%s); training from the start",
                        trial.number + 1, retry + 1, e)
            return False
        where = f"{source.name}/{point.state_dir.name}"
        trial.set_user_attr(bookkeeping.RESUMED_FROM, where)
        log.info("trial %d: going on from %s (step %d, epoch %d)", trial.number + 1, where, point.step, point.epoch)
        return True

    def _start_trainer(self, t: Trial, number: int, values: dict, resume: bool = False) -> subprocess.Popen:
        """``trainer run --new`` (``--continue`` for a retry seeded from its interrupted trial) on the sweep's
        config with the sampled values as ``--set`` overrides; the sweep info reaches params.json through an
        environment variable the run command reads."""
        import json

        info = SweepInfo(study_name=self.opts.study_name, storage=masked(self.opts.storage), trial_number=number,
                         params=values)
        args = [self.opts.python, "-m", "trainer", "run", "--config", str(self.opts.config_path),
                "--continue" if resume else "--new", "--output-dir", str(t.root)]
        for key, value in values.items():
            args += ["--set", f"{key}={json.dumps(value)}"]
        t.root.mkdir(parents=True, exist_ok=True)
        with open(t.root / "sweep_trainer.out", "ab") as out:  # the child keeps its own copy of the fd
            return spawn(args, {**child_env(), SWEEP_INFO_ENV: info.model_dump_json()}, out)

    def _follow_training(self, proc: subprocess.Popen, t: Trial, trial, follower: ScoreFollower) -> int | None:
        """Report each newly scored checkpoint while the trainer runs; on the pruner's word ask the trainer
        to stop. Returns the epoch (or step) at which the trial was pruned, or None."""
        pruned_at: int | None = None
        pruned_since = 0.0
        while proc.poll() is None:
            time.sleep(POLL_S)
            self._ensure_evaluator()
            summary = read_summary(t)
            for epoch, value in follower.new_points(summary):
                trial.report(value, epoch)
                if pruned_at is None and trial.should_prune():
                    pruned_at, pruned_since = epoch, time.monotonic()
                    self._pruned_at = pruned_at
                    trial.set_user_attr(bookkeeping.PRUNED_AT, epoch)  # a sweep killed from now on: PRUNED
                    log.info("trial %d: pruned at epoch %d (%s %.4f)", trial.number + 1, epoch, self.cfg.objective,
                             value)
                    best = summary.best.checkpoint if summary and summary.best else None
                    write_model(t.stop_request_path, StopRequest(
                        reason="pruned", requested_by="sweep", best_checkpoint=best,
                        detail=f"{self.cfg.objective} {value:.4f} at epoch {epoch}: below the pruner's threshold"))
            if pruned_at is not None and time.monotonic() - pruned_since > PRUNED_STOP_WAIT_S:
                log.warning("trial %d: the trainer did not stop on the stop request; stopping it", trial.number + 1)
                stop_group(proc)
        return pruned_at

    def _wait_for_scores(self, t: Trial, trial, follower: ScoreFollower) -> float:
        """Training is done: the objective is taken once the evaluator has scored every checkpoint."""
        start = time.monotonic()
        deadline = start + self.cfg.trial_timeout_s
        output_name = self.opts.config.output.name
        warned = self.opts.start_evaluator
        while True:
            self._ensure_evaluator()
            summary = read_summary(t)
            for epoch, value in follower.new_points(summary):
                trial.report(value, epoch)  # recorded for the curves; a finished trial is not pruned
            if all_scored(t, summary, output_name):
                value = objective_value(summary, self.cfg.objective, self.cfg.direction)
                if value is None:
                    raise fail(trial, f"no checkpoint could be scored (see {t.evaluation_summary_path})")
                return value
            if not warned and time.monotonic() - start > NO_EVALUATOR_WARNING_S:
                warned = True
                if evaluator_serving(self.root.root) is None:
                    log.warning("no `evaluator watch --dir %s` runs on this machine: trial %d waits up to %.0f s "
                                "for its scores (sweep.trial_timeout_s)", self.root.root, trial.number + 1,
                                self.cfg.trial_timeout_s)
            if time.monotonic() > deadline:
                raise fail(trial, f"the evaluator did not score every checkpoint within "
                                  f"{self.cfg.trial_timeout_s:.0f} s (sweep.trial_timeout_s); is "
                                  f"`python -m evaluator watch --dir {self.root.root}` running?")
            time.sleep(POLL_S)

    def _refresh_index(self) -> None:
        # The trainer never imports the evaluator: it asks its CLI, and a failure costs only the page.
        try:
            subprocess.run([self.opts.python, "-m", "evaluator", "report", "--dir", str(self.root.root)],
                           capture_output=True, timeout=120, check=False, stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired):
            log.warning("could not refresh %s", self.root.index_path)

    # ---------------------------------------------------------------- the evaluator

    def _ensure_evaluator(self, force: bool = False) -> None:
        """--evaluator auto: keep one evaluator serving the root. One already running on this machine
        (``evaluator watch --dir ROOT``) is used; otherwise the sweep starts its own, and starts it
        again if it exits (a few times)."""
        if not self.opts.start_evaluator:
            return
        now = time.monotonic()
        if not force and now - self._evaluator_checked < EVALUATOR_CHECK_S:
            return
        self._evaluator_checked = now
        if self.evaluator is not None and self.evaluator.poll() is None:
            return
        other = evaluator_serving(self.root.root)
        if other is not None:
            if other != self._other_evaluator:
                log.info("an evaluator (pid %d) already serves %s: using it", other, self.root.root)
            self._other_evaluator = other
            return
        if self._evaluator_starts >= EVALUATOR_RESTARTS:
            raise EpochscopeError(f"the evaluator for {self.root.root} exited {self._evaluator_starts} times; see "
                                  "its messages above, or run it yourself and pass --evaluator none")
        if self._evaluator_starts:
            log.warning("the evaluator exited (code %s): starting it again", self.evaluator.returncode)
        self._evaluator_starts += 1
        self.evaluator = spawn([self.opts.python, "-m", "evaluator", "watch", "--dir", str(self.root.root)],
                               child_env())

    # ---------------------------------------------------------------- the loop

    def run(self) -> int:
        signal.signal(signal.SIGTERM, _interrupt)  # stopped like Ctrl-C: the running trial is recorded
        self.root.root.mkdir(parents=True, exist_ok=True)
        self._check_root()
        study = self.open_study()
        done = bookkeeping.counted(study)
        log.info("study %s at %s: %d of %d trials done or running", self.opts.study_name,
                 masked(self.opts.storage), done, self.opts.n_trials)
        if done >= self.opts.n_trials:
            return self._print_results(study)
        finished = False
        try:
            self._ensure_evaluator(force=True)
            study.optimize(self.objective, callbacks=[lambda st, _: self._enough(st) and st.stop()],
                           catch=(TrialFailed,), gc_after_trial=True)
            if self._interrupted:  # the pruned trial was recorded; now stop as Ctrl-C asked
                raise KeyboardInterrupt
            finished = True  # every trial refreshed the index already
        finally:
            if self.evaluator is not None:
                stop_group(self.evaluator)
            if not finished:
                self._refresh_index()
        return self._print_results(study)

    def _print_results(self, study) -> int:
        """One line per trial, then the best; exit 1 when no trial completed."""
        import optuna

        waiting = optuna.trial.TrialState.WAITING
        retried = {t.user_attrs[bookkeeping.RETRY_OF]: t.number for t in study.trials
                   if t.user_attrs.get(bookkeeping.RETRY_OF) is not None}
        shown = (t for t in study.trials if t.state != waiting and not t.user_attrs.get(bookkeeping.SURPLUS))
        for t in sorted(shown, key=lambda t: t.number):
            value = "-" if t.value is None else f"{t.value:.4f}"
            note = t.user_attrs.get(bookkeeping.FAIL_REASON) or t.user_attrs.get(bookkeeping.DIVERGED, "")
            if t.number in retried:
                note += f" (tried again as trial_{retried[t.number] + 1:04d})"
            print(f"trial_{t.number + 1:04d}  {t.state.name:<8} {value:>8}  {t.params} {note}".rstrip(), flush=True)
        print(f"index: {self.root.index_path}")
        try:
            best = study.best_trial
        except ValueError:
            print("no trial completed", flush=True)
            return 1
        print(f"best: trial_{best.number + 1:04d} {self.cfg.objective} = {best.value:.4f} {best.params}", flush=True)
        return 0


def _interrupt(signum, frame) -> None:  # noqa: ARG001
    raise KeyboardInterrupt
