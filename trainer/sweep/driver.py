"""The sweep loop: one Optuna study (SQLite by default, PostgreSQL for many machines), one trainer
process per trial, pruning from the evaluator's scores as checkpoints land."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from shared.config import RunConfig
from shared.errors import EpochscopeError
from shared.jsonio import read_model_or_none, write_model
from shared.records import StopRequest, SweepInfo, TrainerStatus
from shared.trial import SweepRoot, Trial
from trainer.commands.run import SWEEP_INFO_ENV
from trainer.sweep.monitor import ScoreFollower, all_scored, objective_value, read_summary
from trainer.sweep.space import build_pruner, build_sampler, sample

log = logging.getLogger("epochscope.sweep")
POLL_S = 1.0


def masked(url: str) -> str:
    """A storage URL without its password, for files people share."""
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return url


def with_driver(url: str) -> str:
    """``postgresql://`` with whichever driver is installed: SQLAlchemy 2.1 assumes psycopg 3, and many
    machines have psycopg2."""
    scheme, sep, rest = url.partition("://")
    if scheme not in ("postgresql", "postgres"):
        return url
    import importlib.util

    for module, dialect in (("psycopg", "postgresql+psycopg"), ("psycopg2", "postgresql+psycopg2")):
        if importlib.util.find_spec(module) is not None:
            return f"{dialect}{sep}{rest}"
    raise EpochscopeError("a postgresql:// storage needs a driver: pip install 'psycopg[binary]' or psycopg2-binary")


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


class TrialFailed(Exception):
    pass


class Sweep:
    def __init__(self, opts: SweepOptions) -> None:
        self.opts = opts
        self.cfg = opts.config.sweep
        self.root = SweepRoot(opts.root)
        self.evaluator: subprocess.Popen | None = None

    # ---------------------------------------------------------------- study

    def study(self):
        import optuna

        import warnings

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        # Enqueued fixed values outside the search range are intended (a planted bad setting).
        warnings.filterwarnings("ignore", message="Fixed parameter .* is out of range")
        try:
            study = optuna.create_study(study_name=self.opts.study_name, storage=with_driver(self.opts.storage),
                                        load_if_exists=True, direction=self.cfg.direction,
                                        sampler=build_sampler(self.cfg), pruner=build_pruner(self.cfg))
        except Exception as e:  # noqa: BLE001 - storage errors come in many types
            raise EpochscopeError(f"cannot open the study {self.opts.study_name!r} at {masked(self.opts.storage)}: "
                                  f"{type(e).__name__}: {e}") from None
        for params in self.cfg.enqueue:
            study.enqueue_trial(params, skip_if_exists=True)
        self._fail_orphans(study)
        return study

    def _fail_orphans(self, study) -> None:
        """Trials left RUNNING by a sweep process of this machine that is gone: mark them FAIL."""
        import optuna

        host = socket.gethostname()
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            if t.user_attrs.get("host") != host or _alive(t.user_attrs.get("pid")):
                continue
            study._storage.set_trial_user_attr(t._trial_id, "fail_reason", "the sweep process running it died")
            study.tell(t.number, state=optuna.trial.TrialState.FAIL)
            log.info("trial %d was left running by a stopped sweep: marked FAIL", t.number + 1)

    def finished_count(self, study) -> int:
        """Trials that count towards n_trials: finished, or running on some worker right now.

        Counting running ones keeps several workers on one study from overshooting; failed trials do
        not count (a crashed trial is replaced), but as many failures as n_trials end the sweep."""
        import optuna

        S = optuna.trial.TrialState
        return len(study.get_trials(deepcopy=False, states=(S.COMPLETE, S.PRUNED, S.RUNNING)))

    def _enough(self, study) -> bool:
        import optuna

        failed = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.FAIL,)))
        if failed >= self.opts.n_trials:
            log.error("%d trials failed: stopping the sweep (see fail_reason in the study or trial folders)", failed)
            return True
        return self.finished_count(study) >= self.opts.n_trials

    # ---------------------------------------------------------------- one trial

    def objective(self, trial) -> float:
        import optuna

        trial.set_user_attr("host", socket.gethostname())
        trial.set_user_attr("pid", os.getpid())
        number = trial.number + 1
        t = self.root.trial(number)
        values = sample(trial, self.cfg.space, self.opts.config)
        log.info("trial %d: %s", number, ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                                   for k, v in values.items()))
        proc = self._start_trainer(t, number, values)
        follower = ScoreFollower(self.cfg.objective)
        pruned = False
        try:
            while proc.poll() is None:
                time.sleep(POLL_S)
                for epoch, value in follower.new_points(read_summary(t)):
                    trial.report(value, epoch)
                    if not pruned and trial.should_prune():
                        pruned = True
                        log.info("trial %d: pruned at epoch %d (score %.4f)", number, epoch, value)
                        write_model(t.stop_request_path, StopRequest(reason="pruned", requested_by="sweep",
                                                                     detail=f"{self.cfg.objective} {value:.4f} at "
                                                                            f"epoch {epoch}"))
            status = read_model_or_none(t.status_path, TrainerStatus)
            if pruned:
                trial.set_user_attr("stopped_at_epoch", status.epoch if status else None)
                raise optuna.TrialPruned()
            if proc.returncode != 0 or status is None or status.state != "finished":
                reason = status.message if status else f"trainer exited with {proc.returncode}"
                trial.set_user_attr("fail_reason", reason)
                raise TrialFailed(reason)
            value = self._wait_for_scores(t, trial, follower)
        finally:
            _stop_group(proc)
            self._refresh_index()
        log.info("trial %d: %s = %.4f", number, self.cfg.objective, value)
        return value

    def _start_trainer(self, t: Trial, number: int, values: dict) -> subprocess.Popen:
        info = SweepInfo(study_name=self.opts.study_name, storage=masked(self.opts.storage), trial_number=number,
                         params=values)
        args = [self.opts.python, "-m", "trainer", "run", "--config", str(self.opts.config_path), "--new",
                "--output-dir", str(t.root)]
        for key, value in values.items():
            args += ["--set", f"{key}={json.dumps(value)}"]
        env = {**child_env(), SWEEP_INFO_ENV: info.model_dump_json(), "PYTHONUNBUFFERED": "1"}
        t.root.mkdir(parents=True, exist_ok=True)
        log_file = open(t.root / "sweep_trainer.out", "ab")  # noqa: SIM115 - lives as long as the child
        return subprocess.Popen(args, env=env, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)

    def _wait_for_scores(self, t: Trial, trial, follower: ScoreFollower) -> float:
        """Training is done: the objective is taken once the evaluator has scored every checkpoint."""
        deadline = time.monotonic() + self.cfg.trial_timeout_s
        output_name = self.opts.config.output.name
        while True:
            summary = read_summary(t)
            for epoch, value in follower.new_points(summary):
                trial.report(value, epoch)
            if all_scored(t, summary, output_name):
                value = objective_value(summary, self.cfg.objective, self.cfg.direction)
                if value is None:
                    trial.set_user_attr("fail_reason", "no checkpoint could be scored")
                    raise TrialFailed("no checkpoint could be scored")
                return value
            if time.monotonic() > deadline:
                reason = (f"the evaluator did not score every checkpoint within {self.cfg.trial_timeout_s:.0f} s "
                          "(is `python -m evaluator watch --dir <sweep root>` running?)")
                trial.set_user_attr("fail_reason", reason)
                raise TrialFailed(reason)
            time.sleep(POLL_S)

    def _refresh_index(self) -> None:
        # The trainer never imports the evaluator: it asks its CLI, and a failure costs only the page.
        subprocess.run([self.opts.python, "-m", "evaluator", "report", "--dir", str(self.root.root)],
                       capture_output=True, timeout=120, check=False)

    # ---------------------------------------------------------------- the loop

    def run(self) -> int:
        import optuna

        self.root.root.mkdir(parents=True, exist_ok=True)
        study = self.study()
        done = self.finished_count(study)
        if self.opts.start_evaluator and done < self.opts.n_trials:
            self._start_evaluator()
        log.info("study %s at %s: %d of %d trials finished", self.opts.study_name, masked(self.opts.storage), done,
                 self.opts.n_trials)
        try:
            if self._enough(study):
                return self._print_results(study)
            study.optimize(self.objective, callbacks=[lambda st, _: self._enough(st) and st.stop()],
                           catch=(TrialFailed,), gc_after_trial=True)
        finally:
            if self.evaluator is not None:
                _stop_group(self.evaluator)
            self._refresh_index()
        return self._print_results(study)

    def _start_evaluator(self) -> None:
        self.evaluator = subprocess.Popen([self.opts.python, "-m", "evaluator", "watch", "--dir", str(self.root.root)],
                                          start_new_session=True, stdin=subprocess.DEVNULL, env=child_env())

    def _print_results(self, study) -> int:
        for t in sorted(study.trials, key=lambda t: t.number):
            value = "-" if t.value is None else f"{t.value:.4f}"
            note = t.user_attrs.get("fail_reason", "")
            print(f"trial_{t.number + 1:04d}  {t.state.name:<8} {value:>8}  {t.params} {note}".rstrip(), flush=True)
        try:
            best = study.best_trial
            print(f"best: trial_{best.number + 1:04d} {self.cfg.objective} = {best.value:.4f} {best.params}")
        except ValueError:
            print("no trial completed")
        print(f"index: {self.root.index_path}")
        return 0


def child_env() -> dict[str, str]:
    """On a CPU-only machine the trainer and the evaluator split the cores: each taking all of them
    makes both several times slower."""
    env = dict(os.environ)
    if "OMP_NUM_THREADS" not in env:
        try:
            import torch

            cpu_only = not torch.cuda.is_available()
        except ImportError:
            cpu_only = True
        if cpu_only:
            env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 2) // 2))
    return env


def _alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
        return True
    except (TypeError, ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True


def _stop_group(proc: subprocess.Popen, wait_s: float = 60.0) -> None:
    """Ask a child's group to stop (the trainer saves on SIGINT), then make sure it is gone."""
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGINT, wait_s), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue
