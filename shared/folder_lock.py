"""One process of a kind per trial folder: an ``flock`` held for the process's life.

The kernel drops the lock when its holder dies, however it dies, so a stale lock file never blocks a
later run. The file holds the holder's pid, only to name it in the error.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from shared.errors import EpochscopeError

TRAINER_LOCK = ".trainer.lock"


def trainer_lock_path(trial_root: Path) -> Path:
    return Path(trial_root) / TRAINER_LOCK


class FolderLock:
    """An exclusive, non-inheritable flock on ``path`` (created if missing)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._fd: int | None = None

    def acquire(self, wait: bool = False) -> bool:
        """Take the lock (at once, or ``wait`` for it); False if another open file (any process) holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError:
            pass  # a full disk: the pid only names the holder in an error; the lock is what counts
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

    def __enter__(self) -> FolderLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def acquire_trainer_lock(trial_root: Path) -> FolderLock:
    """The trainer's lock on its trial folder, or one clear error naming the trainer that holds it."""
    lock = FolderLock(trainer_lock_path(trial_root))
    if not lock.acquire():
        raise EpochscopeError(f"another trainer (pid {lock.holder()}) is running in {trial_root}: stop it "
                              "first (Ctrl-C, or a stop_request.json), or use another output.dir")
    return lock
