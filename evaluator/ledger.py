"""evaluation_state.json: the exactly-once ledger of checkpoint versions.

An entry is keyed by name plus a fingerprint (size, mtime, sha256), so a file rewritten under the same
name is a new entry. Every change is written atomically before the work it describes moves on: a
crash leaves at worst an entry marked ``running``, which a restart runs again.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from datetime import datetime
from pathlib import Path

from shared.errors import EpochscopeError
from shared.jsonio import read_model_or_none, write_model
from shared.records import EvalEntry, EvaluationState, Fingerprint, utcnow
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
    """Hash a file once per (size, mtime): rescans every few seconds must not reread big files."""

    def __init__(self) -> None:
        self._cache: dict[Path, tuple[int, int, Fingerprint]] = {}

    def get(self, path: Path) -> Fingerprint:
        st = os.stat(path)
        hit = self._cache.get(path)
        if hit and hit[0] == st.st_size and hit[1] == st.st_mtime_ns:
            return hit[2]
        fp = fingerprint(path)
        self._cache[path] = (st.st_size, st.st_mtime_ns, fp)
        return fp


class Ledger:
    def __init__(self, trial: Trial) -> None:
        self.trial = trial
        self.state = read_model_or_none(trial.evaluation_state_path, EvaluationState) or EvaluationState()

    def save(self) -> None:
        self.state.updated_at = utcnow()
        write_model(self.trial.evaluation_state_path, self.state)

    def get(self, key: str) -> EvalEntry | None:
        return self.state.entries.get(key)

    def ensure(self, name: str, file: str | None, fp: Fingerprint | None, key: str | None = None) -> EvalEntry:
        key = key or EvalEntry(name=name, fingerprint=fp).key
        entry = self.state.entries.get(key)
        if entry is None:
            entry = EvalEntry(name=name, file=file, fingerprint=fp)
            self.state.entries[key] = entry
            self.save()
        return entry

    def start(self, entry: EvalEntry) -> None:
        entry.status, entry.attempts, entry.started_at, entry.error = "running", entry.attempts + 1, utcnow(), None
        self.save()

    def finish(self, entry: EvalEntry, error: str | None = None, now: datetime | None = None) -> None:
        entry.finished_at = now or utcnow()
        entry.status = "failed" if error else "done"
        entry.error = error
        if entry.started_at:
            entry.duration_s = (entry.finished_at - entry.started_at).total_seconds()
        self.save()

    def fail(self, name: str, file: str | None, fp: Fingerprint | None, error: str, key: str) -> EvalEntry:
        entry = self.ensure(name, file, fp, key)
        entry.status, entry.error, entry.finished_at = "failed", error, utcnow()
        self.save()
        return entry

    def reset_running(self) -> list[EvalEntry]:
        """Entries a killed evaluator left ``running``: they will be run again."""
        stale = [e for e in self.state.entries.values() if e.status == "running"]
        for e in stale:
            e.status = "pending"
        if stale:
            self.save()
        return stale


class TrialLock:
    """One evaluator per trial folder: an flock held for the daemon's life (released if it dies)."""

    def __init__(self, trial: Trial) -> None:
        self.path = trial.evaluator_lock_path
        self._fd: int | None = None

    def acquire(self, wait: bool = False) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return True

    def holder(self) -> str:
        try:
            return self.path.read_text().strip() or "?"
        except OSError:
            return "?"

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def lock_error(trial: Trial, holder: str) -> EpochscopeError:
    return EpochscopeError(f"another evaluator (pid {holder}) is already serving {trial.root}; "
                           "stop it first, or pass --wait-lock to wait for it")
