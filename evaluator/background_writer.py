"""Writing a scored version's files off the scoring path: one worker thread per daemon, jobs in order.

Once a checkpoint is generated and measured, the daemon hands its writes (sample PNGs, metrics.json, the
summary, TensorBoard, and marking its ledger entry done) to this writer as one job and goes on to swap
and generate the next checkpoint. Jobs run one at a time in the order they were submitted, so every
trial's files change in the order its versions were scored.

- **Back-pressure.** At most ``maxsize`` jobs wait; ``submit`` blocks while the queue is full, so the
  images of only a few versions are ever held in memory.
- **Containment.** A job that raises is handed to its own ``on_error`` (the daemon records the version
  failed, naming the file); the worker keeps going.
- **Reports, coalesced.** ``redraw`` marks a trial's report out of date. The worker redraws out-of-date
  reports only when no job is waiting, once per trial however many versions finished meanwhile, so a
  report is drawn at most once per scored checkpoint and never delays a version's own files.
- **Draining.** ``drain`` waits until every submitted job has run and the reports are drawn; ``close``
  drains and stops the thread (the daemon does this on SIGTERM, idle exit and at the end of ``run``).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Hashable
from dataclasses import dataclass

log = logging.getLogger("epochscope.evaluator")


@dataclass(frozen=True)
class Job:
    """One version's writes. ``run`` does them; if it raises, ``on_error`` gets the exception."""

    what: str
    run: Callable[[], None]
    on_error: Callable[[BaseException], None]


class BackgroundWriter:
    """A bounded FIFO of jobs run by one worker thread, plus coalesced report redraws.

    Args:
        draw: draws the report of one key (a trial, or a sweep root); called on the worker thread.
        maxsize: how many jobs may wait before ``submit`` blocks.
        after_job: called on the worker thread after each job (the daemon wakes its loop with it).
    """

    def __init__(self, draw: Callable[[Hashable], None], maxsize: int = 2,
                 after_job: Callable[[], None] | None = None) -> None:
        self._draw = draw
        self._after_job = after_job
        self._queue: queue.Queue[Job | None] = queue.Queue(maxsize=maxsize)
        self._dirty: dict[Hashable, None] = {}  # reports to redraw, in the order they were asked for
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._busy = 0  # jobs submitted and not yet finished, plus a redraw in progress
        self.draws = 0  # reports drawn (for tests and the log)
        self._thread = threading.Thread(target=self._work, name="epochscope-writer", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> None:
        """Queue ``job``; blocks while ``maxsize`` jobs wait (back-pressure)."""
        with self._lock:
            self._busy += 1
        self._queue.put(job)

    def redraw(self, key: Hashable) -> None:
        """Mark ``key``'s report out of date; it is drawn once the worker has no job waiting. Called from a
        job (on the worker), it is drawn after that job; from another thread, it also wakes the worker."""
        on_worker = threading.current_thread() is self._thread
        with self._lock:
            self._dirty[key] = None
            if not on_worker:
                self._busy += 1
        if not on_worker:
            self._queue.put(None)  # a wake-up for an idle worker; counted like a job until handled

    def pending(self) -> int:
        """Jobs and redraw requests not yet handled."""
        with self._lock:
            return self._busy

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until every submitted job has run and every out-of-date report is drawn. False on timeout."""
        with self._idle:
            return self._idle.wait_for(lambda: self._busy == 0, timeout)

    def close(self, timeout: float | None = None) -> bool:
        """Drain, then stop the worker thread. False if the queue did not drain within ``timeout``."""
        drained = self.drain(timeout)
        if self._thread.is_alive():
            self._stop = True
            self._queue.put(None)
            self._thread.join(timeout=5 if drained else 0.1)
        return drained

    _stop = False

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            if job is None and self._stop:
                return
            if job is not None:
                self._run(job)
            if self._queue.empty():
                self._draw_dirty()
            with self._idle:
                self._busy -= 1
                self._idle.notify_all()

    def _run(self, job: Job) -> None:
        try:
            job.run()
        except BaseException as e:  # noqa: BLE001 - containment: a write's failure is that version's
            try:
                job.on_error(e)
            except Exception:  # noqa: BLE001 - even recording the failure failed (disk full): say so, go on
                log.exception("could not record that writing %s failed", job.what)
        if self._after_job is not None:
            try:
                self._after_job()
            except Exception:  # noqa: BLE001
                log.debug("after-job hook failed", exc_info=True)

    def _draw_dirty(self) -> None:
        while True:
            with self._lock:
                if not self._dirty:
                    return
                key = next(iter(self._dirty))
                del self._dirty[key]
            try:
                self._draw(key)
                self.draws += 1
            except Exception as e:  # noqa: BLE001 - a report problem never stops scoring
                log.warning("could not write the report of %s: %s", key, e)
