"""One root exception for every user-facing mistake, so each CLI maps them to one line and an exit code."""

from __future__ import annotations

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
