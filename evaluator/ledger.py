"""evaluation_state.json: the exactly-once ledger of checkpoint versions.

An entry is keyed by name plus a fingerprint (size, mtime, sha256), so a file rewritten under the same
name is a new entry. Every change is written atomically before the work it describes moves on: a
crash leaves at worst an entry marked ``running``, which a restart runs again. An entry becomes ``done``
only after every file of its version is written (the daemon's background writer finishes it); while they
are written it is ``pending`` again, so a version whose files were still being written when the process
died is scored again, never lost, and is not blamed for the crash.

The daemon's scoring thread and its background writer both change the ledger: every change and every
save holds the ledger's lock.
"""

from __future__ import annotations

import hashlib
import os
import threading
from datetime import datetime
from pathlib import Path

from shared.errors import EpochscopeError
from shared.folder_lock import FolderLock
from shared.jsonio import read_model_or_none, write_model
from shared.records import EvalEntry, EvaluationState, Fingerprint, utcnow
from shared.stat_cache import StatCache
from shared.trial import Trial

BASELINE_KEY = "baseline"


def fingerprint(path: Path, chunk: int = 1 << 20) -> Fingerprint:
    st = os.stat(path)
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return Fingerprint(size=st.st_size, mtime_ns=st.st_mtime_ns, sha256=h.hexdigest())


class FingerprintCache:
    """Hash a file once per version: rescans every few seconds must not reread big files."""

    def __init__(self) -> None:
        self._cache: StatCache[Fingerprint] = StatCache()

    def get(self, path: Path) -> Fingerprint:
        return self._cache.get(path, fingerprint)


class Ledger:
    def __init__(self, trial: Trial) -> None:
        self.trial = trial
        self.state = read_model_or_none(trial.evaluation_state_path, EvaluationState) or EvaluationState()
        self._lock = threading.RLock()

    def save(self) -> None:
        with self._lock:
            self.state.updated_at = utcnow()
            write_model(self.trial.evaluation_state_path, self.state)

    def get(self, key: str) -> EvalEntry | None:
        return self.state.entries.get(key)

    def ensure(self, name: str, file: str | None, fp: Fingerprint | None, key: str | None = None) -> EvalEntry:
        key = key or EvalEntry(name=name, fingerprint=fp).key
        with self._lock:
            entry = self.state.entries.get(key)
            if entry is None:
                entry = EvalEntry(name=name, file=file, fingerprint=fp)
                self.state.entries[key] = entry
                self.save()
            return entry

    def start(self, entry: EvalEntry) -> None:
        with self._lock:
            before = entry.status, entry.attempts, entry.started_at, entry.error
            entry.status, entry.attempts, entry.started_at, entry.error = "running", entry.attempts + 1, utcnow(), None
            try:
                self.save()
            except OSError:  # not on disk, so not started: a disk-full retry must not count attempts
                entry.status, entry.attempts, entry.started_at, entry.error = before
                raise

    def release(self, entry: EvalEntry) -> None:
        """Not scored after all, for a reason that is not the version's (the disk was full): ``pending``
        again, and the attempt does not count towards quarantine. Saved if the disk lets it."""
        with self._lock:
            entry.status, entry.attempts = "pending", max(0, entry.attempts - 1)
            try:
                self.save()
            except OSError:
                pass  # the file still says running (one attempt): a restart scores it again

    def scored(self, entry: EvalEntry) -> None:
        """Generation and metrics ended; the files are being written. Back to ``pending`` (``done`` comes
        when the files are on disk): a process killed now dies while scoring the *next* version, and this
        one must not count as having crashed it. A restart scores it again."""
        with self._lock:
            entry.status = "pending"
            self.save()

    def finish(self, entry: EvalEntry, error: str | None = None, now: datetime | None = None) -> None:
        with self._lock:
            entry.finished_at = now or utcnow()
            entry.status = "failed" if error else "done"
            entry.error = error
            if entry.started_at:
                entry.duration_s = (entry.finished_at - entry.started_at).total_seconds()
            self.save()

    def fail(self, name: str, file: str | None, fp: Fingerprint | None, error: str, key: str) -> EvalEntry:
        with self._lock:
            entry = self.ensure(name, file, fp, key)
            entry.status, entry.error, entry.finished_at = "failed", error, utcnow()
            self.save()
            return entry

    def reset_running(self, max_attempts: int) -> tuple[list[EvalEntry], list[EvalEntry]]:
        """Entries a killed evaluator left ``running``: (retried, quarantined). One that was being scored
        when the evaluator died ``max_attempts`` times is recorded failed, so it cannot starve the rest."""
        retried, quarantined = [], []
        with self._lock:
            for e in self.state.entries.values():
                if e.status != "running":
                    continue
                if e.attempts >= max_attempts:
                    e.status, e.finished_at = "failed", utcnow()
                    e.error = (f"crashed the evaluator {e.attempts} times (quarantined; `evaluator run --retry-failed` "
                               "retries it)")
                    quarantined.append(e)
                else:
                    e.status = "pending"
                    retried.append(e)
            if retried or quarantined:
                self.save()
        return retried, quarantined

    def done_with_sha(self, sha256: str) -> EvalEntry | None:
        """A finished scoring of these exact bytes under any name (a renamed or restored file)."""
        for e in list(self.state.entries.values()):
            if e.status == "done" and e.fingerprint is not None and e.fingerprint.sha256 == sha256:
                return e
        return None


class TrialLock(FolderLock):
    """One evaluator per trial folder: an flock held for the daemon's life (released if it dies)."""

    def __init__(self, trial: Trial) -> None:
        super().__init__(trial.evaluator_lock_path)


def lock_error(trial: Trial, holder: str) -> EpochscopeError:
    return EpochscopeError(f"another evaluator (pid {holder}) is already serving {trial.root}; "
                           "stop it first, or pass --wait-lock to wait for it")
