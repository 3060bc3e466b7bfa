"""When to score: the evaluator loop, one process and one loaded model for every trial under a folder.

Each cycle asks discovery (what) for the served trials and their complete checkpoints, checks the
ledger (exactly once per file version), and hands each new version to scoring (how). One version's
failure, of any kind, is recorded against that version and the loop goes on; a version that was being
scored when the process died is retried a bounded number of times, then quarantined.

Only generation and metrics are on the path from one checkpoint to the next. A version's files (samples,
metrics.json, summary, TensorBoard) are written by a background writer, one job per version in the order
they were scored, and the version's ledger entry becomes ``done`` when its last file is written; the
report is redrawn after that, coalesced. What must be decided at once (the log line, early stop, which
checkpoint came before) uses the in-memory results of versions still being written. The writer is drained
before the daemon exits, however it exits.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from evaluator import summary as summaries
from evaluator import tensorboard_log
from evaluator.acceleration import compile_stats
from evaluator.background_writer import BackgroundWriter, Job
from evaluator.discovery import Discovery, Scan, Source, problem_word, scan
from evaluator.ledger import BASELINE_KEY, FingerprintCache, Ledger, TrialLock, lock_error
from evaluator.metrics import SCORE_RULE
from evaluator.metrics.evidence import startup_warnings
from evaluator.pipeline import pick_device
from evaluator.scoring import Models, Scored, TrialContext, score, write_outputs
from evaluator.settings import Overrides, settings_for
from evaluator.tensorboard_log import close_writers
from shared.errors import EpochscopeError, FileFormatError, disk_full
from shared.jsonio import read_model_or_none, remove_temp_files, write_model
from shared.liveness import trainer_done
from shared.records import EvalEntry, EvaluationSummary, StopRequest, TrainerStatus
from shared.safetensors_info import SafetensorsInfo
from shared.stat_cache import StatCache
from shared.trial import BASELINE, CheckpointFile, Trial

log = logging.getLogger("epochscope.evaluator")

DISK_FULL_RETRY_S = 30.0  # a full disk: how long scoring waits before it tries again


@dataclass
class Options:
    device: str | None = None  # None: the first served trial's evaluation.device
    dtype: str | None = None  # None: each trial's evaluation.dtype
    exit_when_done: bool = False
    polling: bool = False
    rescan_interval: float = 5.0
    incomplete_timeout: float = 120.0
    wait_lock: bool = False
    once: bool = False  # `evaluator run`: one pass, no waiting for incomplete files
    force: bool = False  # re-score versions already done
    retry_failed: bool = False  # score again the versions recorded failed (quarantined ones too)
    root_idle_exit: float = 30.0
    idle_exit: float = 300.0  # a folder without a trainer is done after this long with nothing new
    max_attempts: int = 2  # a version that crashed the evaluator this often is quarantined
    config_path: Path | None = None  # --config: what to evaluate folders without params.json with
    name: str | None = None  # --name: only this output name's files
    overrides: Overrides = Overrides()
    write_queue: int = 2  # scored versions whose files may wait to be written (each holds its images)


@dataclass(frozen=True)
class _Pending:
    """A version handed to the background writer and not yet finished: its summary change, applied to
    what is on disk when the daemon decides something now."""

    results_dir: str | None
    scored: Scored | None = None
    failure: tuple[str, str] | None = None  # (name, reason)

    def apply(self, summary: EvaluationSummary) -> None:
        if self.scored is not None:
            summaries.apply_result(summary, self.scored.result, self.scored.baseline, self.results_dir)
        elif self.failure is not None:
            summaries.apply_failure(summary, *self.failure)


@dataclass
class _Served:
    """A trial the daemon has taken on: its lock, ledger and cached context."""

    trial: Trial
    source: Source
    lock: TrialLock
    ledger: Ledger
    ctx: TrialContext
    incomplete: dict[Path, tuple[int, int, float]] = field(default_factory=dict)  # path -> (size, mtime, since)
    given_up: dict[Path, tuple[int, int]] = field(default_factory=dict)  # recorded failed at (size, mtime)
    reported: set[Path] = field(default_factory=set)  # pickles and foreign files already logged
    forced: set[str] = field(default_factory=set)
    last_new: float = field(default_factory=time.monotonic)  # when a new version was last seen
    pending: dict[str, _Pending] = field(default_factory=dict)  # ledger key -> handed to the writer, not finished
    pending_lock: threading.Lock = field(default_factory=threading.Lock)

    def in_flight(self, key: str) -> bool:
        with self.pending_lock:
            return key in self.pending

    def writing(self, results_dir: str) -> bool:
        """Whether the files of the version in ``results_dir`` are still being written."""
        with self.pending_lock:
            return any(p.results_dir == results_dir for p in self.pending.values())

    def summary_now(self) -> EvaluationSummary:
        """The summary as it will be once the writer has finished: the file, plus the versions in flight."""
        with self.pending_lock:
            items = list(self.pending.values())  # taken before the file is read: applying one twice is harmless
        summary = summaries.load_summary(self.trial)
        for item in items:
            item.apply(summary)
        return summary


class Daemon:
    def __init__(self, root: Path, options: Options) -> None:
        self.root = Path(root)
        self.opt = options
        self.device: str | None = pick_device(options.device) if options.device else None
        self.discovery = Discovery(self.root, options.config_path, options.name)
        self.models: Models | None = None
        self.served: dict[Path, _Served] = {}
        self.refused: set[Path] = set()
        self.locked: dict[Path, float] = {}  # trial -> when it was last found locked by another evaluator
        self.fingerprints = FingerprintCache()
        self.headers: StatCache[SafetensorsInfo] = StatCache()  # complete checkpoints' headers
        self.wake = threading.Event()
        self.stopping = False
        self._signals = 0
        self.scored = 0
        self._all_final_since: float | None = None
        self.disk_full: str | None = None  # set by a write that found no space; the loop waits, then retries
        self._disk_full_said = False  # the current full-disk episode has been logged as an error
        self.writer = BackgroundWriter(self._draw_report, maxsize=max(1, options.write_queue),
                                       after_job=self.wake.set)

    def mode(self) -> str | None:
        return self.discovery.mode()

    def trials(self) -> list[Trial]:
        return self.discovery.trials()

    # ------------------------------------------------------------------ taking a trial on

    def _serve(self, trial: Trial) -> _Served | None:
        if trial.root in self.served:
            return self.served[trial.root]
        if trial.root in self.refused:
            return None
        try:
            source = self.discovery.source(trial)
            if source is None:
                return None
            settings = settings_for(source.config, self.opt.overrides)
        except EpochscopeError as e:
            if self.mode() == "trial":
                raise
            log.error("%s: %s (this trial is skipped)", trial.name, e)
            self.refused.add(trial.root)
            return None
        lock = TrialLock(trial)
        if not lock.acquire(wait=self.opt.wait_lock and self.mode() == "trial"):
            if self.mode() == "trial":
                raise lock_error(trial, lock.holder())
            if trial.root not in self.locked:
                log.warning("%s is served by another evaluator (pid %s); taking it over when that one stops",
                            trial.name, lock.holder())
            self.locked[trial.root] = time.monotonic()
            return None
        if self.locked.pop(trial.root, None) is not None:
            log.info("%s: the other evaluator stopped; serving it now", trial.name)
        try:
            return self._take_on(trial, source, settings, lock)
        except BaseException:
            lock.release()  # a full disk on the first save: the next attempt takes the lock again
            raise

    def _take_on(self, trial: Trial, source: Source, settings, lock: TrialLock) -> _Served:
        removed = _remove_leftover_temp_files(trial)
        if removed:
            log.info("%s: removed %d temporary file(s) left by a killed writer", trial.name, removed)
        ledger = Ledger(trial)
        retried, quarantined = ledger.reset_running(self.opt.max_attempts)
        for e in retried:
            log.info("%s: %s was being scored when an evaluator stopped; scoring it again", trial.name, e.name)
        for e in quarantined:
            log.error("%s: %s %s", trial.name, e.file or e.name, e.error)
            summaries.record_failure(trial, e.name, f"{e.file or e.name}: {e.error}", SCORE_RULE)
        served = _Served(trial, source, lock, ledger, TrialContext(trial, settings))
        self.served[trial.root] = served
        if trial.evaluation_summary_path.exists():  # a killed evaluator may have left the report behind
            self._redraw(served)
        log.info("serving %s (%d samples per checkpoint, %d references%s)", trial.root,
                 len(settings.generation.samples), len(settings.references),
                 "" if source.output_name else ", every *.safetensors is a checkpoint")
        for warning in startup_warnings(settings.references, settings.training):
            log.warning("%s: %s", trial.name, warning)
        return served

    def _models_for(self, served: _Served) -> Models:
        key = served.ctx.settings.model_key()
        if self.models is None or self.models.key != key:
            if self.models is not None:
                log.info("trial %s uses another base model: reloading", served.trial.name)
            settings = served.ctx.settings
            if self.device is None:  # no --device: the first trial's evaluation.device, for the daemon's life
                self.device = pick_device(settings.device)
            # evaluation.compile: the first trial's config decides, for the daemon's life (one compile).
            compile = self.models.acceleration.compiled if self.models is not None else settings.compile
            self.models = Models.load(settings, self.device, self.opt.dtype or settings.dtype, compile=compile)
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
        base_entry = s.ledger.ensure(BASELINE, None, None, key=BASELINE_KEY)
        if (base_entry.status not in ("done", "failed") and not s.in_flight(BASELINE_KEY)) or (
                self._forced(base_entry) and BASELINE_KEY not in s.forced):
            s.forced.add(BASELINE_KEY)
            ready = scan(s.trial.root, s.source.output_name, self.headers).ready
            self._run(s, base_entry, None, self._waiting(s, ready))
            ran += 1
        ready = self._ready_checkpoints(s)
        for i, ckpt in enumerate(ready):
            if self.stopping:
                break
            try:
                fp = self.fingerprints.get(ckpt.path)
            except FileNotFoundError:
                continue
            entry = s.ledger.get(EvalEntry(name=ckpt.stem, fingerprint=fp).key)
            if entry is not None and s.in_flight(entry.key):
                continue  # scored; its files are being written
            if entry is None:
                s.last_new = time.monotonic()
                if not self.opt.force and self._already_scored(s, ckpt, fp):
                    continue
                entry = s.ledger.ensure(ckpt.stem, ckpt.path.name, fp)
            forced = self._forced(entry) and entry.key not in s.forced
            if entry.status in ("done", "failed") and not forced:
                if entry.status == "done":  # bytes put back to a scored version: show its results again
                    summaries.show_version(s.trial, ckpt.stem, ckpt.path.name, fp.short, SCORE_RULE)
                continue
            s.forced.add(entry.key)
            self._run(s, entry, ckpt, self._waiting(s, ready[i + 1:]))
            ran += 1
        return ran

    def _forced(self, entry: EvalEntry) -> bool:
        """Whether this pass scores ``entry`` again although it has an outcome (--force, --retry-failed)."""
        return self.opt.force or (self.opt.retry_failed and entry.status == "failed")

    def _waiting(self, s: _Served, ready: list[CheckpointFile]) -> int:
        """How many of ``ready`` still wait to be scored (for the log: the backlog behind the one in hand)."""
        n = 0
        for ckpt in ready:
            there, entry = self._entry_of(s, ckpt)
            n += there and (entry is None or (entry.status not in ("done", "failed") and not s.in_flight(entry.key))
                            or (self._forced(entry) and entry.key not in s.forced))
        return n

    def _entry_of(self, s: _Served, ckpt: CheckpointFile) -> tuple[bool, EvalEntry | None]:
        """(whether the file is still there, the ledger entry of its version on disk now, if any)."""
        try:
            fp = self.fingerprints.get(ckpt.path)
        except FileNotFoundError:
            return False, None
        return True, s.ledger.get(EvalEntry(name=ckpt.stem, fingerprint=fp).key)

    def _already_scored(self, s: _Served, ckpt: CheckpointFile, fp) -> bool:
        """Bytes scored before under another name (a continuation renamed the old final): record the
        new name against the existing results instead of scoring them again."""
        earlier = s.ledger.done_with_sha(fp.sha256)
        if earlier is None or not summaries.show_version(s.trial, ckpt.stem, ckpt.path.name, fp.short, SCORE_RULE):
            return False
        entry = s.ledger.ensure(ckpt.stem, ckpt.path.name, fp)
        s.ledger.finish(entry)
        log.info("%s: %s has the same bytes as %s, already scored; recorded under its new name", s.trial.name,
                 ckpt.path.name, earlier.file or earlier.name)
        return True

    def _previous(self, s: _Served, name: str, step: int | None, epoch: int | None) -> str | None:
        """The results folder of the checkpoint just before this one in training order, among those scored
        (including those whose files are still being written)."""
        def earlier(e) -> bool:
            if e.step is not None and step is not None:
                return (e.step, e.epoch or 0) < (step, epoch or 0)
            return e.epoch is not None and epoch is not None and e.epoch < epoch  # files without a step

        before = [e for e in s.summary_now().ordered() if e.checkpoint != name and earlier(e)]
        return (before[-1].results_dir or before[-1].checkpoint) if before else None

    def _ready_checkpoints(self, s: _Served) -> list[CheckpointFile]:
        """Complete checkpoints in training order; incomplete/corrupt ones are timed out into failures."""
        found: Scan = scan(s.trial.root, s.source.output_name, self.headers)
        for path in found.pickles + found.foreign:
            if path not in s.reported:
                s.reported.add(path)
                if path in found.pickles:
                    log.warning("%s: %s is a pickle format and is never loaded; save LoRAs as .safetensors",
                                s.trial.name, path.name)
                else:
                    log.info("%s: %s is not a checkpoint of %r; not scored (pass --name to choose another run)",
                             s.trial.name, path.name, s.source.output_name)
        for ckpt in found.ready:
            s.incomplete.pop(ckpt.path, None)
        now = time.monotonic()
        for path, info in found.not_ready:
            what = problem_word(info)
            if self.opt.once:
                log.warning("%s: %s is %s (%s); skipped", s.trial.name, path.name, what, info.reason)
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
                stem = path.name[: -len(".safetensors")]
                key = f"{stem}@{what}-{st.st_size}-{st.st_mtime_ns}"
                if s.ledger.get(key) is None:
                    reason = f"{path.name} is {what} (unchanged for {self.opt.incomplete_timeout:.0f} s): {info.reason}"
                    log.error("%s: %s", s.trial.name, reason)
                    s.ledger.fail(stem, path.name, None, reason, key)
                    summaries.record_failure(s.trial, stem, reason, SCORE_RULE)
                s.incomplete.pop(path, None)
                s.given_up[path] = (st.st_size, st.st_mtime_ns)
        return found.ready

    def _run(self, s: _Served, entry: EvalEntry, ckpt: CheckpointFile | None, waiting: int = 0) -> None:
        """Score one version and hand its files to the background writer. Whatever goes wrong is that
        version's failure, recorded with its file name; only a signal (KeyboardInterrupt) or the process
        dying stops the loop. ``waiting``: how many checkpoints wait behind this one (logged)."""
        models = self._models_for(s)
        s.ledger.start(entry)
        path = ckpt.path if ckpt else None
        epoch, step = (ckpt.epoch, ckpt.step) if ckpt else (None, None)
        what = path.name if path else "the baseline"
        log.info("%s: scoring %s (%d more waiting)", s.trial.name, what, waiting)
        try:
            previous = self._previous(s, entry.name, step, epoch) if ckpt else None
            if previous is not None and previous not in s.ctx.samples_cache and s.writing(previous):
                self.writer.drain()  # its samples are read back from its files: let them be written first
            result = score(models, s.ctx, entry.name, path, entry.fingerprint, epoch, step, previous)
            if path is not None and self.fingerprints.get(path).sha256 != entry.fingerprint.sha256:
                self._finish(s, entry, f"{what} was replaced while being scored", summary=False)
                log.warning("%s: %s was replaced while being scored; its new version is scored next",
                            s.trial.name, what)
                return
        except FileNotFoundError as e:
            self._finish(s, entry, f"{what} disappeared while being scored: {e}", summary=False)
            log.warning("%s: %s disappeared while being scored", s.trial.name, what)
            return
        except Exception as e:  # noqa: BLE001 - containment: one version's failure never stops the daemon
            if disk_full(e):  # not the version's failure: the loop waits for room, then scores it again
                s.ledger.release(entry)
                raise
            if isinstance(e, EpochscopeError):  # FileFormatError is one
                self._failed(s, entry, f"{what}: {e}")
            else:
                log.debug("scoring %s failed", what, exc_info=True)
                self._failed(s, entry, f"{what}: {type(e).__name__}: {e}")
            return
        m = result.metrics
        fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
        log.info("%s %s epoch %s step %s: score %s clip_t %s clip_i %s colour %s failures %s (%.1f s)",
                 s.trial.name, entry.name, epoch if epoch is not None else "-", step if step is not None else "-",
                 fmt(m.score), fmt(m.clip_t), fmt(m.clip_i), fmt(m.color_swd_lab), fmt(m.failure_rate),
                 result.timings.get("total", 0.0))
        if models.acceleration.compiled:
            log.info("%s: compiled UNet after %s: %s", s.trial.name, entry.name, compile_stats())
        self._write(s, entry, result, what)
        self._after_evaluation(s)

    def _write(self, s: _Served, entry: EvalEntry, scored: Scored, what: str) -> None:
        """Hand a scored version's files to the background writer; its entry is done once they are written.
        A failing write is that version's failure, naming the file."""
        key = entry.key

        def run() -> None:
            write_outputs(scored)
            s.ledger.finish(entry)
            self.scored += 1
            self._finished(s, key)

        def on_error(e: BaseException) -> None:
            if disk_full(e):  # scored again once there is room
                self._no_space(e, f"writing the files of {what}")
                try:
                    s.ledger.release(entry)
                finally:
                    self._finished(s, key)
                return
            reason = f"{what}: {e}" if isinstance(e, EpochscopeError) else f"{what}: {type(e).__name__}: {e}"
            log.error("%s: %s failed: %s", s.trial.name, entry.name, reason)
            try:
                summaries.record_failure(s.trial, entry.name, reason, SCORE_RULE)
            finally:
                s.ledger.finish(entry, error=reason)
                self._finished(s, key)

        self._hand_over(s, entry, _Pending(scored.folder.name, scored=scored))
        self.writer.submit(Job(f"{s.trial.name} {entry.name}", run, on_error))

    def _finished(self, s: _Served, key: str) -> None:
        """On the writer: a version's files are all written (or its failure recorded); redraw the report."""
        with s.pending_lock:
            s.pending.pop(key, None)
        self._redraw(s)

    def _finish(self, s: _Served, entry: EvalEntry, error: str | None, summary: bool = True) -> None:
        """Record a version's end through the writer, after the versions before it (same order on disk)."""
        key = entry.key

        def run() -> None:
            try:
                if summary and error is not None:
                    summaries.record_failure(s.trial, entry.name, error, SCORE_RULE)
            finally:
                s.ledger.finish(entry, error=error)
                self._finished(s, key)

        def on_error(e: BaseException) -> None:
            log.error("%s: could not record the end of %s: %s", s.trial.name, entry.name, e)

        self._hand_over(s, entry, _Pending(None, failure=(entry.name, error) if summary and error else None))
        self.writer.submit(Job(f"{s.trial.name} {entry.name}", run, on_error))

    @staticmethod
    def _hand_over(s: _Served, entry: EvalEntry, pending: _Pending) -> None:
        """Mark a version in flight (its files are the writer's now) and ``pending`` in the ledger; if the
        ledger cannot be saved (a full disk), neither: it is scored again once there is room."""
        with s.pending_lock:
            s.pending[entry.key] = pending
        try:
            s.ledger.scored(entry)
        except BaseException:
            with s.pending_lock:
                s.pending.pop(entry.key, None)
            s.ledger.release(entry)
            raise

    def _failed(self, s: _Served, entry: EvalEntry, reason: str) -> None:
        log.error("%s: %s failed: %s", s.trial.name, entry.name, reason)
        self._finish(s, entry, reason)

    def _redraw(self, s: _Served) -> None:
        self.writer.redraw(s.trial.root)
        if self.mode() == "root":
            self.writer.redraw(_SWEEP)

    def _draw_report(self, key) -> None:
        """On the writer, coalesced: one trial's report.html, or (``_SWEEP``) the sweep root's index.html."""
        if key == _SWEEP:
            _write_report(None, True, self.root)
        elif key in self.served:
            _write_report(self.served[key].trial, False, self.root)

    def _after_evaluation(self, s: _Served) -> None:
        """Early stop, decided at once from the in-memory results (the files may still be being written)."""
        st = s.ctx.settings
        if not s.source.has_trainer or not st.early_stop_enabled or s.ctx.stop_requested \
                or s.trial.stop_request_path.exists():
            return
        status = _status(s.trial)
        if status is not None and status.is_final:
            return
        summary = s.summary_now()
        decision = summaries.early_stop([(e.checkpoint, e.metrics.score) for e in summary.ordered()],
                                        st.patience, st.min_delta, st.min_checkpoints)
        if decision.stop:
            write_model(s.trial.stop_request_path, StopRequest(reason="early_stop", requested_by="evaluator",
                                                               best_checkpoint=decision.best, detail=decision.reason))
            s.ctx.stop_requested = True
            log.info("%s: early stop requested: %s", s.trial.name, decision.reason)

    # ------------------------------------------------------------------ lifetime

    def _trial_done(self, trial: Trial) -> bool:
        s = self.served.get(trial.root)
        if s is None:
            # A trainer that failed before writing params.json leaves nothing to score.
            if trial.status_path.exists() and not trainer_done(_status(trial)):
                return False
            return trial.root in self.refused or not trial.checkpoint_paths()
        if s.source.has_trainer:
            # final, or dead (pid gone / heartbeat stale); only this run's status counts
            if not trainer_done(_status(trial)):
                return False
        if s.incomplete or s.pending:
            return False
        ready = scan(trial.root, s.source.output_name, self.headers).ready
        for ckpt in ready:
            there, entry = self._entry_of(s, ckpt)
            if there and (entry is None or entry.status not in ("done", "failed")):
                return False
        if s.source.has_trainer:
            return True
        # No trainer to ask: done once a final file (sd-scripts' {name}.safetensors) is scored, or
        # nothing new arrived for idle_exit seconds.
        if any(c.name.kind == "final" and (s.source.output_name is None or c.name.output_name == s.source.output_name)
               for c in ready):
            return True
        return time.monotonic() - s.last_new >= self.opt.idle_exit

    def is_done(self) -> bool:
        """Every served trial is finished (trainer final, or a trainer-less folder settled) and every
        complete checkpoint is scored."""
        trials = self.trials()
        if not trials or any(t.root in self.locked for t in trials):
            return False
        if not all(self._trial_done(t) for t in trials):
            return False
        if self.mode() == "root":  # a sweep may start another trial: wait a little before leaving
            now = time.monotonic()
            self._all_final_since = self._all_final_since or now
            return now - self._all_final_since >= self.opt.root_idle_exit
        return True

    # ------------------------------------------------------------------ a full disk

    def _cycle_unless_disk_full(self) -> int:
        try:
            ran = self.cycle()
        except Exception as e:
            if not disk_full(e):
                raise
            self._no_space(e, "saving the evaluator's files")
            return 0
        if ran and self.disk_full is None and self._disk_full_said:
            log.info("there is space on disk again: scoring goes on")
            self._disk_full_said = False
        return ran

    def _no_space(self, e: BaseException, doing: str) -> None:
        """A write found the disk full (on the scoring thread or the writer's): nothing is recorded failed
        for it; the loop waits and tries again."""
        where = getattr(disk_full(e), "filename", None) or self.root
        self.disk_full = f"no space left on device ({doing}: {where})"
        if not self._disk_full_said:
            self._disk_full_said = True
            log.error("%s; nothing is recorded failed for it: scoring waits and tries again every %.0f s "
                      "until there is room", self.disk_full, DISK_FULL_RETRY_S)
        else:
            log.warning("%s, still", self.disk_full)
        self.wake.set()

    def _wait_for_space(self) -> None:
        deadline = time.monotonic() + DISK_FULL_RETRY_S
        while not self.stopping and time.monotonic() < deadline:
            self.wake.wait(max(0.0, deadline - time.monotonic()))
            self.wake.clear()
        self.disk_full = None  # the next pass finds out

    def _on_signal(self, signum, frame) -> None:  # noqa: ARG002
        self._signals += 1
        self.stopping = True
        self.wake.set()
        if self._signals >= 2:
            raise KeyboardInterrupt

    def run(self) -> int:
        from evaluator.detect import start_observer

        if not self.root.is_dir():
            if self.opt.once or self.opt.config_path is not None:
                raise EpochscopeError(f"--dir {self.root} does not exist")
            self.root.mkdir(parents=True, exist_ok=True)
        old = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        observer = None if self.opt.once else start_observer(self.root, self.wake, self.opt.polling)
        try:
            log.info("evaluator watching %s on %s", self.root, self.device or "the device its config names")
            while not self.stopping:
                ran = self._cycle_unless_disk_full()
                if self.opt.once:
                    while ran and not self.stopping and self.disk_full is None:  # what changed during the pass too
                        ran = self._cycle_unless_disk_full()
                    self.writer.drain()
                    if self.disk_full is not None:
                        raise EpochscopeError(f"{self.disk_full}: free some space and run again (what was scored "
                                              "and written is kept; the rest is scored then)")
                    if not self.served and self.mode() is None:
                        raise EpochscopeError(f"--dir {self.root}: no trial, sweep root or checkpoint there")
                    return 0
                if self.disk_full is not None:
                    self._wait_for_space()
                    continue
                if self.opt.exit_when_done and self.is_done():
                    log.info("every checkpoint is scored and nothing more is coming (%d this session): exiting",
                             self.scored)
                    return 0
                if not self.is_done():
                    self._all_final_since = None
                self.wake.wait(self.opt.rescan_interval)
                self.wake.clear()
            log.info("stopped by signal; state is saved, a restart continues where this left off")
            return 130
        finally:
            try:
                if self.writer.pending():
                    log.info("writing the files of %d scored checkpoint(s) before exiting", self.writer.pending())
                self.writer.close()  # a second Ctrl-C interrupts this: unfinished versions are scored again
            finally:
                for sig, h in old.items():
                    signal.signal(sig, h)
                if observer is not None:
                    observer.stop()
                    observer.join(timeout=5)
                close_writers()
                for s in self.served.values():
                    s.lock.release()


def _status(trial: Trial) -> TrainerStatus | None:
    try:
        return read_model_or_none(trial.status_path, TrainerStatus)
    except FileFormatError:
        return None


def _remove_leftover_temp_files(trial: Trial) -> int:
    """Atomic writes go through ``.<name>.<random>.tmp`` beside the target; a killed writer leaves one.
    Only the evaluator writes under realtime_evaluations/ and logs/evaluator/, and it holds the trial's lock
    here."""
    removed = tensorboard_log.remove_leftover_temp_files(trial)  # logs/evaluator/ (and a rewrite to finish)
    return removed + remove_temp_files(trial.evaluations_dir, recursive=True)


_SWEEP = "sweep index"  # the background writer's report key for a sweep root's index.html


def _write_report(trial: Trial | None, sweep: bool, root: Path) -> None:
    """Refresh the HTML report (``trial``'s, and with ``sweep`` the root's index); a report problem is
    logged and never stops scoring."""
    try:
        from evaluator.report import write_sweep_index, write_trial_report
    except ImportError:
        return
    try:
        if trial is not None:
            write_trial_report(trial)
        if sweep:
            write_sweep_index(root)
    except Exception as e:  # noqa: BLE001
        log.warning("%s: could not write the report: %s", trial.name if trial else root, e)
