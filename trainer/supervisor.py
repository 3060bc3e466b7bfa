"""Runs a backend's command and watches it: status, log, TensorBoard, stop requests and signals.

The child runs in its own process group. A stop request (stop_request.json) or the first
SIGINT/SIGTERM asks it to stop: a graceful backend gets SIGINT and saves; sd-scripts gets SIGINT,
then SIGTERM, then SIGKILL, and we record the last complete checkpoint ourselves. A second SIGINT
kills the group at once. No path leaves a process running.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from shared.errors import FileFormatError, disk_full
from shared.jsonio import read_model_or_none
from shared.nonfinite import nonfinite_values
from shared.pause import PauseRequest, pause_request_path
from shared.records import DIVERGED, StopRequest, TrainerStatus, utcnow
from shared.safetensors_info import Completeness, inspect
from shared.trial import Trial
from trainer.backends.base import (
    Backend,
    BackendError,
    CheckpointSaved,
    EpochStarted,
    LaunchSpec,
    Progress,
    ResumePoint,
    Totals,
)
from trainer.reporting import Console, StatusFile, TensorBoardScalars
from trainer.sweep.children import guarded

POLL_S = 0.5


@dataclass
class StopPolicy:
    """How long to wait at each escalation step for a backend that does not save on SIGINT."""

    sigint_wait_s: float = 10.0
    sigterm_wait_s: float = 10.0


@dataclass
class Outcome:
    state: str
    exit_code: int
    message: str = ""
    last_checkpoint: str | None = None


@dataclass
class _Stopping:
    reason: str | None = None  # "request", "signal" or "diverged"
    detail: str = ""
    since: float = 0.0
    signals: list[int] = field(default_factory=list)


def step_with_offset(reported: int, resume: ResumePoint | None, restarts: bool) -> int:
    """The true global step of a backend's reported step (sd-scripts restarts its counter on resume)."""
    return reported + (resume.step if (resume is not None and restarts) else 0)


def continue_targets(resume: ResumePoint | None, more_steps: int | None,
                     more_epochs: int | None) -> tuple[int | None, int | None]:
    """``--steps N``/``--epochs N`` mean N more than the resume point (or N in all for a new run)."""
    base_step = resume.step if resume else 0
    base_epoch = resume.epoch if resume else 0
    return (base_step + more_steps if more_steps is not None else None,
            base_epoch + more_epochs if more_epochs is not None else None)


class Supervisor:
    def __init__(self, backend: Backend, trial: Trial, status: StatusFile, output_name: str,
                 console: Console | None = None, policy: StopPolicy | None = None,
                 resume: ResumePoint | None = None) -> None:
        self.backend = backend
        self.trial = trial
        self.status = status
        self.output_name = output_name
        self.console = console or Console()
        self.policy = policy or StopPolicy()
        self.resume = resume
        self._stopping = _Stopping()
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._last_error = ""
        self._saved: list[Path] = []
        self._unchecked: list[Path] = []  # saved network files not yet checked for NaN (see _check_saved)
        self._t0 = time.monotonic()
        self._first_step: tuple[int, float] | None = None
        self._loss_not_finite = False  # warned for the current run of non-finite losses
        self._log_full = False  # warned that training.log cannot be written (a full disk)
        self._pause = PauseGuard(trial, status, self.console)

    # ---------------------------------------------------------------- signals

    def _on_signal(self, signum, frame) -> None:  # noqa: ARG002
        self._stopping.signals.append(signum)
        if self._stopping.reason is None:
            self._stopping = _Stopping("signal", f"signal {signal.Signals(signum).name}", time.monotonic(),
                                       self._stopping.signals)

    # ---------------------------------------------------------------- main loop

    def run(self, spec: LaunchSpec, log_file) -> Outcome:
        env = {**os.environ, **spec.env}
        # Our handlers first: a signal from here on is a stop of the child, never an exception that
        # would leave it running in its own session.
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            # guarded: the worker gets SIGTERM when this process dies, even by SIGKILL (PR_SET_PDEATHSIG,
            # set just before it execs, so no preexec_fn runs in this threaded process): an orphan would
            # go on training in a folder whose lock is free. A group left paused by this process's death is
            # resumed by the guard's helper, so that SIGTERM is taken.
            proc = subprocess.Popen(guarded(spec.argv, resume_if_orphaned=True), env=env, cwd=spec.cwd,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
        except BaseException:
            for s, handler in old.items():
                signal.signal(s, handler)
            raise
        pgid = proc.pid  # start_new_session: the child leads its own group
        self.status.update(state="running", pgid=pgid)
        self.status.flush(force=True)
        readers = [threading.Thread(target=self._pump, args=(s,), daemon=True) for s in (proc.stdout, proc.stderr)]
        for t in readers:
            t.start()
        self.console.start()
        sent: set[str] = set()
        try:
            open_streams = 2
            while True:
                try:
                    line = self._lines.get(timeout=POLL_S)
                except queue.Empty:
                    line = ""
                if line is None:
                    open_streams -= 1
                elif line:
                    self.log_line(log_file, line)
                    self._handle(line)
                self._collect()
                self._check_saved()
                if self._stopping.reason is None:
                    self._check_stop_request()
                self._pause.check(pgid, stopping=self._stopping.reason is not None)
                if self._stopping.reason is not None:
                    self._escalate(pgid, sent)
                self.status.flush()
                if open_streams <= 0 and proc.poll() is not None:
                    break
                if proc.poll() is not None and self._lines.empty():
                    # Streams may stay open if a grandchild inherited them; give them a moment.
                    deadline = time.monotonic() + 2.0
                    while open_streams > 0 and time.monotonic() < deadline:
                        try:
                            item = self._lines.get(timeout=0.2)
                        except queue.Empty:
                            continue
                        if item is None:
                            open_streams -= 1
                        else:
                            self.log_line(log_file, item)
                            self._handle(item)
                    break
        finally:
            self._collect()
            self._check_saved()
            finish = getattr(self.backend, "finish", None)
            if finish is not None:
                finish(self.trial)
            self.console.stop()
            for s, handler in old.items():
                signal.signal(s, handler)
            self._pause.release(pgid)
            self._kill_group(pgid)
        return self._outcome(proc.returncode)

    def _collect(self) -> None:
        """Backends that write elsewhere first (a resumed sd-scripts run) hand their files over here."""
        collect = getattr(self.backend, "collect_outputs", None)
        for path in collect(self.trial) if collect else []:
            self._saved.append(path)
            self.status.update(last_checkpoint=path.name)
            self._unchecked.append(path)

    def _pump(self, stream) -> None:
        buf = b""
        for chunk in iter(lambda: stream.read1(65536) if hasattr(stream, "read1") else stream.read(65536), b""):
            buf += chunk
            parts = buf.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
            buf = parts.pop()
            for part in parts:
                text = part.decode("utf-8", "replace").rstrip()
                if text:
                    self._lines.put(text)
        if buf.strip():
            self._lines.put(buf.decode("utf-8", "replace").rstrip())
        self._lines.put(None)

    def _handle(self, line: str) -> None:
        restarts = self.backend.step_counter_restarts_on_resume
        for event in self.backend.parse_line(line):
            st = self.status.status
            if isinstance(event, Progress):
                step = step_with_offset(event.step, self.resume, restarts)
                total = event.total_steps
                if total is not None:
                    total = step_with_offset(total, self.resume, restarts)
                now = time.monotonic()
                if self._first_step is None:
                    self._first_step = (step, now)  # the rate needs two points: none before the second step
                s0, t0 = self._first_step
                rate = (step - s0) / max(now - t0, 1e-9) if step > s0 else None
                total = total or st.total_steps
                eta = (total - step) / rate if rate and total else None
                lr = event.lr if event.lr is not None else self.backend.current_lr()
                lr = lr if lr is not None else st.lr  # keep the last known lr until a newer one is logged
                self.status.update(step=step, total_steps=total, loss=_finite(event.loss),
                                   avg_loss=_finite(event.avg_loss), lr=lr, steps_per_second=rate,
                                   eta_seconds=eta)
                self._tb().add(step, _finite(event.loss), _finite(event.avg_loss), lr)
                self._warn_if_loss_not_finite(event.loss, step)
                self.console.show(self.status.status)
            elif isinstance(event, EpochStarted):
                offset = self.resume.epoch if (self.resume and restarts) else 0
                self.status.update(epoch=event.epoch + offset,
                                   total_epochs=(event.total_epochs + offset) if event.total_epochs else st.total_epochs)
            elif isinstance(event, Totals):
                offset = self.resume.step if (self.resume and restarts) else 0
                if event.total_steps is not None:
                    self.status.update(total_steps=event.total_steps + offset)
                if event.total_epochs is not None:
                    eoff = self.resume.epoch if (self.resume and restarts) else 0
                    self.status.update(total_epochs=event.total_epochs + eoff)
            elif isinstance(event, CheckpointSaved):
                if event.path.parent != self.trial.root:
                    continue  # written to a staging folder: _collect adopts it under its true name
                self._saved.append(event.path)
                if inspect(self.trial.root / event.path.name).is_complete:
                    self.status.update(last_checkpoint=event.path.name)
                self.console.message(f"checkpoint saved: {event.path.name}")
                self._unchecked.append(self.trial.root / event.path.name)
            elif isinstance(event, BackendError):
                self._last_error = event.message
                self.status.update(message=event.message)

    def _check_saved(self) -> None:
        """sd-scripts trains on through NaN: once one weight is NaN every later step is too, and it would save
        black-image checkpoints until the last epoch and say "finished". A saved network file holding NaN or
        infinity stops the run as failed, as the built-in trainer's own guard does (trainer/builtin/nonfinite).
        A file is checked once it is complete: sd-scripts announces a save before it writes it."""
        waiting = []
        for path in self._unchecked:
            info = inspect(path)
            if info.completeness is Completeness.INCOMPLETE:
                waiting.append(path)  # not written yet, or still being written
                continue
            if info.completeness is Completeness.CORRUPT:
                continue  # the evaluator names it when it looks
            if self._stopping.reason is None:
                self._stop_if_diverged(path)
        self._unchecked = waiting

    def _stop_if_diverged(self, path: Path) -> None:
        try:
            found = nonfinite_values(path)
        except (OSError, ValueError):
            return  # unreadable now: the evaluator names the file when it reads it
        if found:
            detail = (f"{DIVERGED}{found.describe(path)}; every later step would be NaN too, so the run "
                      "is stopped. The checkpoints before it are kept. Lower training.learning_rate")
            self._stopping = _Stopping("diverged", detail, time.monotonic(), self._stopping.signals)
            self.console.message(detail)

    def _warn_if_loss_not_finite(self, loss: float | None, step: int) -> None:
        """Once per run of NaN/inf losses, on the console: the status file only drops them (loss null)."""
        if loss is None or _finite(loss) is not None:
            self._loss_not_finite = False
        elif not self._loss_not_finite:
            self._loss_not_finite = True
            self.console.message(f"warning: the loss is {loss} at step {step}: training may be diverging "
                                 f"(a lower training.learning_rate usually helps)")

    def log_line(self, log_file, line: str) -> None:
        """One line of training.log (an unbuffered binary file), on disk at once: ``tail -f`` follows it,
        and a crash loses nothing. A full disk loses lines (said once), never the run."""
        try:
            log_file.write((line + "\n").encode("utf-8", "replace"))
            self._log_full = False
        except OSError as e:
            if not disk_full(e):
                raise
            if not self._log_full:
                self._log_full = True
                self.console.message("warning: training.log: no space left on device; its lines are lost "
                                     "until there is room")

    _tb_writer: TensorBoardScalars | None = None

    def _tb(self) -> TensorBoardScalars:
        if self._tb_writer is None:
            self._tb_writer = TensorBoardScalars(self.trial.logs_dir)
        return self._tb_writer

    def _check_stop_request(self) -> None:
        try:
            req = read_model_or_none(self.trial.stop_request_path, StopRequest)
        except FileFormatError as e:
            self.console.message(f"ignoring unreadable stop request: {e}")
            return
        if req is not None:
            detail = f"{req.reason} (requested by {req.requested_by})"
            if req.best_checkpoint:
                detail += f"; best checkpoint {req.best_checkpoint}"
            self._stopping = _Stopping("request", detail, time.monotonic(), self._stopping.signals)
            self.console.message(f"stop requested: {detail}")

    def _escalate(self, pgid: int, sent: set[str]) -> None:
        sigints = sum(1 for s in self._stopping.signals if s == signal.SIGINT)
        if sigints >= 2 and "kill" not in sent:
            self.console.message("second Ctrl-C: stopping at once")
            self._send(pgid, signal.SIGKILL)
            sent.add("kill")
            return
        elapsed = time.monotonic() - self._stopping.since
        if "int" not in sent:
            self._send(pgid, signal.SIGINT)
            sent.add("int")
            self.status.update(message=f"stopping: {self._stopping.detail}")
        elif not self.backend.graceful_sigint:
            if "term" not in sent and elapsed >= self.policy.sigint_wait_s:
                self._send(pgid, signal.SIGTERM)
                sent.add("term")
            elif "kill" not in sent and elapsed >= self.policy.sigint_wait_s + self.policy.sigterm_wait_s:
                self._send(pgid, signal.SIGKILL)
                sent.add("kill")

    @staticmethod
    def _send(pgid: int, sig: int) -> None:
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            pass

    def _kill_group(self, pgid: int) -> None:
        """Whatever the child left behind in its group goes too."""
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        self._send(pgid, signal.SIGTERM)
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)
        self._send(pgid, signal.SIGKILL)

    def last_complete_checkpoint(self) -> str | None:
        for path in reversed(self._saved):
            local = self.trial.root / path.name
            if inspect(local).is_complete:
                return local.name
        done = self.trial.checkpoints(self.output_name)
        if not done:
            return None
        return max(done, key=lambda c: c.path.stat().st_mtime_ns).path.name

    def _outcome(self, returncode: int) -> Outcome:
        if self._tb_writer is not None:
            self._tb_writer.close()
        last = self.last_complete_checkpoint()
        how = self._stopping.reason
        if how == "diverged":
            return Outcome("failed", 1, self._stopping.detail, last)
        if how == "request" and (returncode == 0 or not self.backend.graceful_sigint):
            return Outcome("stopped_early", 0, f"stopped early: {self._stopping.detail}", last)
        if how == "signal" and (returncode == 0 or not self.backend.graceful_sigint or returncode < 0):
            return Outcome("stopped", 130, f"stopped by {self._stopping.detail}", last)
        if returncode == 0:
            return Outcome("finished", 0, "training finished", last)
        message = self._last_error or f"backend exited with code {returncode}"
        return Outcome("failed", 2 if returncode == 2 else 1, message, last)


class PauseGuard:
    """Pauses the training group while the evaluator holds an unexpired pause lease (shared/pause.py),
    and never leaves it stopped otherwise: no lease, an expired one, or a stop resumes it. Without a
    lease of ours it also sends SIGCONT every few seconds, so a group stopped by anyone else (an old
    evaluator that SIGSTOPped it and died) goes on by itself."""

    RESCUE_S = 5.0

    def __init__(self, trial: Trial, status: StatusFile, console: Console,
                 clock=time.monotonic, now=None) -> None:
        self.path = pause_request_path(trial.root)
        self.status, self.console = status, console
        self.paused = False
        self._clock = clock
        self._now = now or utcnow
        self._last_rescue = clock()

    def _lease_active(self) -> bool:
        try:
            req = read_model_or_none(self.path, PauseRequest)
        except FileFormatError:
            return False
        return req is not None and req.active(self._now())

    def check(self, pgid: int, stopping: bool = False) -> None:
        want = not stopping and self._lease_active()
        if want and not self.paused:
            Supervisor._send(pgid, signal.SIGSTOP)
            self.paused = True
            self.status.update(paused=True)
        elif not want and self.paused:
            self.release(pgid)
        elif not self.paused and self._clock() - self._last_rescue >= self.RESCUE_S:
            Supervisor._send(pgid, signal.SIGCONT)
            self._last_rescue = self._clock()

    def release(self, pgid: int) -> None:
        Supervisor._send(pgid, signal.SIGCONT)
        if self.paused:
            self.paused = False
            self.status.update(paused=False)


def _finite(x: float | None) -> float | None:
    import math

    return x if x is not None and math.isfinite(x) else None


def new_status(backend: str, run_id: str | None = None, device: str = "auto") -> TrainerStatus:
    """The first status of a run. ``device``: training.device (the GPUs come from CUDA_VISIBLE_DEVICES)."""
    from shared.liveness import this_host

    return TrainerStatus(state="starting", backend=backend, pid=os.getpid(), host=this_host(), run_id=run_id,
                         gpus=training_gpus(backend, device))


def training_gpus(backend: str, device: str = "auto") -> str:
    """What training uses: "cpu", else its CUDA_VISIBLE_DEVICES ("all" when unset). The builtin worker
    trains on the CPU under ``auto`` when torch sees no GPU (sd-scripts' own Python decides for itself)."""
    if device == "cpu":
        return "cpu"
    if backend == "builtin" and device == "auto" and not _cuda_available():
        return "cpu"
    return os.environ.get("CUDA_VISIBLE_DEVICES", "all")


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()
