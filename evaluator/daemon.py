"""The evaluator loop: one process, one loaded model, every trial under a folder.

Each cycle scans the served trials (a trial folder, or every ``trial_*`` of a sweep root, including
new ones) and scores each complete checkpoint version that the ledger has not finished. Files that
stay incomplete or corrupt past a timeout are recorded as failed; the loop goes on.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from evaluator import summary as summaries
from evaluator.ledger import BASELINE_KEY, FingerprintCache, Ledger, TrialLock, lock_error
from evaluator.metrics import SCORE_RULE
from evaluator.pipeline import pick_device
from evaluator.scoring import Models, TrialContext, score
from evaluator.settings import Overrides, settings_for
from shared.errors import CheckpointError, EpochscopeError, FileFormatError
from shared.jsonio import read_model, read_model_or_none, write_model
from shared.naming import PICKLE_SUFFIXES
from shared.records import EvalEntry, Params, StopRequest, TrainerStatus
from shared.safetensors_info import Completeness, inspect
from shared.trial import BASELINE, TRIAL_DIR_RE, SweepRoot, Trial

log = logging.getLogger("epochscope.evaluator")


@dataclass
class Options:
    device: str = "auto"
    dtype: str = "auto"
    exit_when_done: bool = False
    polling: bool = False
    rescan_interval: float = 5.0
    incomplete_timeout: float = 120.0
    wait_lock: bool = False
    once: bool = False  # `evaluator run`: one pass, no waiting for incomplete files
    force: bool = False  # re-score versions already done
    root_idle_exit: float = 30.0
    overrides: Overrides = Overrides()


class _Served:
    """A trial the daemon has taken on: its lock, ledger and cached context."""

    def __init__(self, trial: Trial, lock: TrialLock, ledger: Ledger, ctx: TrialContext) -> None:
        self.trial, self.lock, self.ledger, self.ctx = trial, lock, ledger, ctx
        self.incomplete: dict[Path, tuple[int, int, float]] = {}  # path -> (size, mtime, since)
        self.given_up: dict[Path, tuple[int, int]] = {}  # recorded failed at this (size, mtime)
        self.reported_pickles: set[Path] = set()
        self.forced: set[str] = set()


class Daemon:
    def __init__(self, root: Path, options: Options) -> None:
        self.root = Path(root)
        self.opt = options
        self.device = pick_device(options.device)
        self.models: Models | None = None
        self.served: dict[Path, _Served] = {}
        self.refused: set[Path] = set()
        self.fingerprints = FingerprintCache()
        self.wake = threading.Event()
        self.stopping = False
        self._signals = 0
        self.scored = 0
        self._all_final_since: float | None = None

    # ------------------------------------------------------------------ discovery

    def mode(self) -> str | None:
        """'trial', 'root', or None while it cannot be told yet (nothing there)."""
        r = self.root
        if (r / "params.json").exists() or TRIAL_DIR_RE.match(r.name) or any(r.glob("*.safetensors")):
            return "trial"
        if (r / "study.db").exists() or any(TRIAL_DIR_RE.match(p.name) for p in r.iterdir() if p.is_dir()):
            return "root"
        return None

    def trials(self) -> list[Trial]:
        mode = self.mode()
        if mode == "trial":
            return [Trial(self.root)]
        if mode == "root":
            return SweepRoot(self.root).trials()
        return []

    def _serve(self, trial: Trial) -> _Served | None:
        if trial.root in self.served:
            return self.served[trial.root]
        if trial.root in self.refused or not trial.params_path.exists():
            return None
        try:
            params = read_model(trial.params_path, Params)
            settings = settings_for(params.config, self.opt.overrides)
        except EpochscopeError as e:
            log.error("%s: %s (this trial is skipped)", trial.name, e)
            self.refused.add(trial.root)
            return None
        lock = TrialLock(trial)
        if not lock.acquire(wait=self.opt.wait_lock):
            if self.mode() == "trial":
                raise lock_error(trial, lock.holder())
            log.warning("%s is served by another evaluator (pid %s); skipping it", trial.name, lock.holder())
            self.refused.add(trial.root)
            return None
        ledger = Ledger(trial)
        for e in ledger.reset_running():
            log.info("%s: %s was being scored when an evaluator stopped; scoring it again", trial.name, e.name)
        served = _Served(trial, lock, ledger, TrialContext(trial, settings))
        self.served[trial.root] = served
        log.info("serving %s (%d samples per checkpoint, %d references)", trial.root,
                 len(settings.generation.prompts), len(settings.references))
        return served

    def _models_for(self, served: _Served) -> Models:
        key = served.ctx.settings.model_key()
        if self.models is None or self.models.key != key:
            if self.models is not None:
                log.info("trial %s uses another base model: reloading", served.trial.name)
            self.models = Models.load(served.ctx.settings, self.device, self.opt.dtype)
        return self.models

    # ------------------------------------------------------------------ one pass

    def cycle(self) -> int:
        """Score everything that is ready now; returns how many evaluations ran."""
        done = 0
        for trial in self.trials():
            if self.stopping:
                break
            served = self._serve(trial)
            if served is not None:
                done += self._cycle_trial(served)
        return done

    def _cycle_trial(self, s: _Served) -> int:
        ran = 0
        ledger, ctx = s.ledger, s.ctx
        base_entry = ledger.ensure(BASELINE, None, None, key=BASELINE_KEY)
        if base_entry.status != "done" or (self.opt.force and BASELINE_KEY not in s.forced):
            s.forced.add(BASELINE_KEY)
            self._run(s, base_entry, None, None, None, None)
            ran += 1
        for ckpt in self._ready_checkpoints(s):
            if self.stopping:
                break
            fp = self.fingerprints.get(ckpt.path)
            entry = ledger.ensure(ckpt.stem, ckpt.path.name, fp)
            forced = self.opt.force and entry.key not in s.forced
            if entry.status in ("done", "failed") and not forced:
                continue
            s.forced.add(entry.key)
            self._run(s, entry, ckpt.path, ckpt.epoch, ckpt.step, self._previous(s, ckpt.stem, ckpt.step, ckpt.epoch))
            ran += 1
        return ran

    def _previous(self, s: _Served, name: str, step: int | None, epoch: int | None) -> str | None:
        """The checkpoint just before this one in training order, among those scored."""
        ordered = [e for e in summaries.load_summary(s.trial).ordered() if e.checkpoint != name]
        before = [e for e in ordered if (e.step, e.epoch) < (step or 0, epoch or 0)
                  and e.step is not None and step is not None]
        return before[-1].checkpoint if before else None

    def _ready_checkpoints(self, s: _Served):
        """Complete checkpoints in training order; incomplete/corrupt ones are timed out into failures."""
        from shared.trial import CheckpointFile
        from shared.naming import parse_stem

        now = time.monotonic()
        ready = []
        for path in sorted(s.trial.root.iterdir()) if s.trial.root.is_dir() else []:
            if path.suffix in PICKLE_SUFFIXES and path.is_file():
                if path not in s.reported_pickles:
                    log.warning("%s: %s is a pickle format and is never loaded; save LoRAs as .safetensors",
                                s.trial.name, path.name)
                    s.reported_pickles.add(path)
                continue
            if not path.name.endswith(".safetensors") or path.name.startswith(".") or not path.is_file():
                continue
            try:
                parsed = parse_stem(path.name, s.ctx.settings.output_name)
            except ValueError:
                continue
            info = inspect(path)
            if info.is_complete:
                s.incomplete.pop(path, None)
                ready.append(CheckpointFile(path, parsed, info))
                continue
            if self.opt.once:
                log.warning("%s: %s is not complete (%s); skipped", s.trial.name, path.name, info.reason)
                continue
            try:
                st = path.stat()
            except FileNotFoundError:
                continue
            if s.given_up.get(path) == (st.st_size, st.st_mtime_ns):
                continue
            s.given_up.pop(path, None)
            prev = s.incomplete.get(path)
            if prev is None or prev[:2] != (st.st_size, st.st_mtime_ns):
                s.incomplete[path] = (st.st_size, st.st_mtime_ns, now)
            elif now - prev[2] >= self.opt.incomplete_timeout:
                what = "corrupt" if info.completeness is Completeness.CORRUPT else "incomplete"
                key = f"{parsed.stem}@{what}-{st.st_size}-{st.st_mtime_ns}"
                if s.ledger.get(key) is None:
                    reason = f"{what} for {self.opt.incomplete_timeout:.0f} s: {info.reason}"
                    log.error("%s: %s %s", s.trial.name, path.name, reason)
                    s.ledger.fail(parsed.stem, path.name, None, reason, key)
                    summaries.record_failure(s.trial, parsed.stem, reason, SCORE_RULE)
                s.incomplete.pop(path, None)
                s.given_up[path] = (st.st_size, st.st_mtime_ns)
        return sorted(ready, key=lambda c: c.sort_key())

    def _run(self, s: _Served, entry: EvalEntry, path: Path | None, epoch, step, previous) -> None:
        models = self._models_for(s)
        s.ledger.start(entry)
        try:
            result = score(models, s.ctx, entry.name, path, entry.fingerprint, epoch, step, previous)
        except (EpochscopeError, FileFormatError, CheckpointError) as e:
            s.ledger.finish(entry, error=str(e))
            summaries.record_failure(s.trial, entry.name, str(e), SCORE_RULE)
            log.error("%s: %s failed: %s", s.trial.name, entry.name, e)
            return
        except FileNotFoundError as e:
            s.ledger.finish(entry, error=f"file disappeared: {e}")
            return
        s.ledger.finish(entry)
        self.scored += 1
        m = result.metrics
        fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
        log.info("%s %s epoch %s step %s: score %s clip_t %s clip_i %s colour %s failures %s (%.1f s)",
                 s.trial.name, entry.name, epoch if epoch is not None else "-", step if step is not None else "-",
                 fmt(m.score), fmt(m.clip_t), fmt(m.clip_i), fmt(m.color_swd_lab), fmt(m.failure_rate),
                 result.timings.get("total", 0.0))
        self._after_evaluation(s)

    def _after_evaluation(self, s: _Served) -> None:
        _write_report(s.trial, self.mode() == "root", self.root)
        st = s.ctx.settings
        if not st.early_stop_enabled or s.ctx.stop_requested or s.trial.stop_request_path.exists():
            return
        status = _status(s.trial)
        if status is not None and status.is_final:
            return
        summary = summaries.load_summary(s.trial)
        decision = summaries.early_stop([(e.checkpoint, e.metrics.score) for e in summary.ordered()],
                                        st.patience, st.min_delta, st.min_checkpoints)
        if decision.stop:
            write_model(s.trial.stop_request_path, StopRequest(reason="early_stop", requested_by="evaluator",
                                                               best_checkpoint=decision.best, detail=decision.reason))
            s.ctx.stop_requested = True
            log.info("%s: early stop requested: %s", s.trial.name, decision.reason)

    # ------------------------------------------------------------------ lifetime

    def is_done(self) -> bool:
        """Every served trial's trainer is final and every complete checkpoint is scored."""
        trials = self.trials()
        if not trials:
            return False
        for trial in trials:
            status = _status(trial)
            if status is None or not status.is_final:
                return False
            s = self.served.get(trial.root)
            if s is None:
                # A trainer that failed before writing params.json leaves nothing to score.
                if trial.root in self.refused or not trial.checkpoint_paths():
                    continue
                return False
            if s.incomplete:
                return False
            for ckpt in trial.checkpoints(s.ctx.settings.output_name):
                entry = s.ledger.get(EvalEntry(name=ckpt.stem, fingerprint=self.fingerprints.get(ckpt.path)).key)
                if entry is None or entry.status not in ("done", "failed"):
                    return False
        if self.mode() == "root":  # a sweep may start another trial: wait a little before leaving
            now = time.monotonic()
            self._all_final_since = self._all_final_since or now
            return now - self._all_final_since >= self.opt.root_idle_exit
        return True

    def _on_signal(self, signum, frame) -> None:  # noqa: ARG002
        self._signals += 1
        self.stopping = True
        self.wake.set()
        if self._signals >= 2:
            raise KeyboardInterrupt

    def run(self) -> int:
        from evaluator.detect import start_observer

        self.root.mkdir(parents=True, exist_ok=True)
        old = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        observer = None if self.opt.once else start_observer(self.root, self.wake, self.opt.polling)
        try:
            log.info("evaluator watching %s on %s", self.root, self.device)
            while not self.stopping:
                self.cycle()
                if self.opt.once:
                    return 0
                if self.opt.exit_when_done and self.is_done():
                    log.info("trainer finished and every checkpoint is scored (%d this session): exiting",
                             self.scored)
                    return 0
                if not self.is_done():
                    self._all_final_since = None
                self.wake.wait(self.opt.rescan_interval)
                self.wake.clear()
            log.info("stopped by signal; state is saved, a restart continues where this left off")
            return 130
        finally:
            for sig, h in old.items():
                signal.signal(sig, h)
            if observer is not None:
                observer.stop()
                observer.join(timeout=5)
            for s in self.served.values():
                s.lock.release()


def _status(trial: Trial) -> TrainerStatus | None:
    try:
        return read_model_or_none(trial.status_path, TrainerStatus)
    except FileFormatError:
        return None


def _write_report(trial: Trial, sweep: bool, root: Path) -> None:
    """Refresh the HTML report; a report problem is logged and never stops scoring."""
    try:
        from evaluator.report import write_sweep_index, write_trial_report
    except ImportError:
        return
    try:
        write_trial_report(trial)
        if sweep:
            write_sweep_index(root)
    except Exception as e:  # noqa: BLE001
        log.warning("%s: could not write the report: %s", trial.name, e)
