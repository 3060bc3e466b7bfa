"""One root exception for every user-facing mistake, so each CLI maps them to one line and an exit code."""

from __future__ import annotations

import errno
from pathlib import Path


class EpochscopeError(Exception):
    """Root of every error that is the user's input, not our bug. The CLI prints ``str(e)`` and exits 2."""

    exit_code = 2


class FileFormatError(EpochscopeError):
    """A contract file (JSON or TOML) is missing, malformed, or of a version we cannot read."""

    def __init__(self, path: Path | str, problem: str, field: str | None = None) -> None:
        self.path = Path(path)
        self.field = field
        self.problem = problem
        where = f"{self.path}" + (f": field '{field}'" if field else "")
        super().__init__(f"{where}: {problem}")


class ConfigError(FileFormatError):
    """The run config is invalid; the message names the TOML file and the offending key."""


class CheckpointError(EpochscopeError):
    """A checkpoint file is corrupt or unreadable."""


def disk_full(e: BaseException | None) -> OSError | None:
    """The OSError behind ``e`` (itself, or what it was raised from) if a write failed for want of space or
    quota: the machine's state, never the fault of the file being written, so nothing is recorded failed
    for it; the work waits and is done again once there is room."""
    while e is not None:
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return e
        e = e.__cause__
    return None
