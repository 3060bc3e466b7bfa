"""Where training progress goes: trainer_status.json (atomic, heartbeat), training.log, TensorBoard,
and the console (a rich bar on a terminal; under run_pair.sh on a terminal, a live status line that
``live_status`` keeps on the bottom line; plain lines otherwise)."""

from __future__ import annotations

import io
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TextIO

from shared.errors import disk_full
from shared.jsonio import write_model
from shared.liveness import HEARTBEAT_S
from shared.records import TrainerStatus, utcnow
from shared.trial import Trial


class StatusFile:
    """The trainer's status, rewritten on every change and at least every HEARTBEAT_S seconds.

    ``start_heartbeat`` rewrites it from a thread of its own as well, so a status older than
    ``shared.liveness.STALE_AFTER_S`` means the trainer is gone or frozen, whatever it was doing.
    """

    def __init__(self, trial: Trial, status: TrainerStatus, clock=time.monotonic) -> None:
        self.trial = trial
        self.status = status
        self._clock = clock
        self._last_write = -1e9
        self._dirty = True
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._disk_full = False

    def update(self, **fields) -> None:
        with self._lock:
            for k, v in fields.items():
                if getattr(self.status, k) != v:
                    setattr(self.status, k, v)
                    self._dirty = True

    def flush(self, force: bool = False) -> None:
        with self._lock:
            now = self._clock()
            if force or self._dirty or now - self._last_write >= HEARTBEAT_S:
                self.status.updated_at = utcnow()
                try:
                    write_model(self.trial.status_path, self.status)
                except OSError as e:
                    if not disk_full(e):
                        raise
                    if not self._disk_full:  # training goes on; the status is written once there is room
                        print(f"warning: cannot write {self.trial.status_path}: no space left on device",
                              file=sys.stderr, flush=True)
                    self._disk_full = True
                    return
                self._disk_full = False
                self._last_write = now
                self._dirty = False

    def start_heartbeat(self, interval_s: float = HEARTBEAT_S) -> None:
        def beat() -> None:
            while not self._stop.wait(interval_s / 2):
                try:
                    self.flush()
                except OSError:
                    pass  # the folder went away; the main thread reports what matters

        self._thread = threading.Thread(target=beat, name="status-heartbeat", daemon=True)
        self._thread.start()

    def stop_heartbeat(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None


class TensorBoardScalars:
    """loss/current, loss/average and lr against the global step, in the trial's logs/trainer/."""

    def __init__(self, logs_dir: Path) -> None:
        self._writer = None
        self._dir = logs_dir / "trainer"

    def add(self, step: int, loss: float | None, avg_loss: float | None, lr: float | None) -> None:
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self._dir))
        for tag, value in (("loss/current", loss), ("loss/average", avg_loss), ("lr", lr)):
            if value is not None:
                self._writer.add_scalar(tag, value, step)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.flush()
            self._writer.close()


LIVE_ENV = "EPOCHSCOPE_LIVE_STATUS"  # run_pair.sh sets it to 1 when its own output is a terminal
STATUS_MARK = "@@status "  # starts a live status line: ``live_status`` shows it on the bottom line, in place
LIVE_INTERVAL_S = 0.25


class Console:
    """A rich progress bar on a TTY; under run_pair.sh on a terminal (``EPOCHSCOPE_LIVE_STATUS=1``), a
    status line at most every ``LIVE_INTERVAL_S`` marked for ``live_status``; otherwise a plain line at
    most every few seconds."""

    def __init__(self, stream: TextIO = sys.stderr, plain_interval_s: float = 5.0, live: bool | None = None,
                 clock=time.monotonic) -> None:
        self._stream = stream
        self._tty = stream.isatty()
        self._live = (os.environ.get(LIVE_ENV) == "1") if live is None else live
        self._live = self._live and not self._tty
        self._interval = LIVE_INTERVAL_S if self._live else plain_interval_s
        self._clock = clock
        self._last = -1e9
        self._progress = None
        self._task = None

    def start(self) -> None:
        if self._tty:
            from rich.console import Console as RichConsole
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._progress = Progress(TextColumn("[bold]train[/] {task.fields[info]}"), BarColumn(),
                                      MofNCompleteColumn(), TimeRemainingColumn(),
                                      console=RichConsole(file=self._stream), transient=False)
            self._progress.start()
            self._task = self._progress.add_task("train", total=None, info="")

    def show(self, status: TrainerStatus) -> None:
        info = f"epoch {status.epoch}/{status.total_epochs or '?'}"
        if status.avg_loss is not None:
            info += f" loss {status.avg_loss:.4f}"
        if self._progress is not None:
            self._progress.update(self._task, completed=status.step, total=status.total_steps, info=info)
            return
        now = self._clock()
        last_step = bool(status.total_steps and status.step >= status.total_steps)
        if now - self._last >= self._interval or last_step:
            self._last = now
            eta = f" eta {status.eta_seconds:.0f}s" if status.eta_seconds is not None else ""
            if status.steps_per_second:
                eta += f" ({status.steps_per_second:.2f} steps/s)"
            line = f"step {status.step}/{status.total_steps or '?'} {info}{eta}"
            if self._live:
                line = STATUS_MARK + _bar(status.step, status.total_steps) + line
            print(line, file=self._stream, flush=True)

    def message(self, text: str) -> None:
        if self._progress is not None:
            self._progress.console.print(text)
        else:
            print(text, file=self._stream, flush=True)

    def stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()


def _bar(step: int, total: int | None, width: int = 20) -> str:
    if not total:
        return ""
    filled = min(width, int(width * step / total))
    return "[" + "#" * filled + "-" * (width - filled) + "] "


def live_status(lines: Iterable[str], out: TextIO, columns: Callable[[], int] | None = None) -> None:
    """Copy ``lines`` (both processes' prefixed output, run_pair.sh) to a terminal, keeping the latest status
    line (one holding ``STATUS_MARK``) on the bottom line, redrawn in place. Every other line is printed
    whole above it, so the evaluator's lines are never cut by the trainer's updates. At the end the last
    status stays on screen as an ordinary line."""
    columns = columns or (lambda: shutil.get_terminal_size((120, 24)).columns)
    status = ""

    def fit(text: str) -> str:  # one screen line: a wrapped line could not be redrawn in place
        width = max(10, columns() - 1)
        return text if len(text) <= width else text[: width - 1] + "…"

    for raw in lines:
        line = raw.rstrip("\n")
        if STATUS_MARK in line:
            status = line.replace(STATUS_MARK, "")
            out.write("\r\x1b[K" + fit(status))
        else:
            out.write("\r\x1b[K" + line + "\n" + (fit(status) if status else ""))
        out.flush()
    if status:
        out.write("\r\x1b[K" + status + "\n")
        out.flush()


def main(argv: list[str] | None = None) -> int:
    """``python -m trainer.reporting --live``: run_pair.sh's renderer of both processes' output."""
    args = sys.argv[1:] if argv is None else argv
    if args != ["--live"]:
        print("usage: python -m trainer.reporting --live   (reads run_pair.sh's combined output on stdin)",
              file=sys.stderr)
        return 2
    stdin = io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8", errors="replace", line_buffering=True)
    try:
        live_status(iter(stdin.readline, ""), sys.stdout)
    except (BrokenPipeError, KeyboardInterrupt):
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
