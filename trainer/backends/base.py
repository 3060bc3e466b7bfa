"""What every backend provides: its command as plain data, and a parser for its output.

The supervisor (trainer/supervisor.py) runs the command in its own process group, feeds every
output line to ``parse_line``, and turns the events into trainer_status.json, training.log and
TensorBoard scalars. Nothing here starts a process, so commands are unit-testable and printable
(``--dry-run``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from shared.config import RunConfig
from shared.trial import Trial


@dataclass(frozen=True)
class LaunchSpec:
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)  # added to os.environ for the child
    cwd: Path | None = None

    def printable(self) -> str:
        import shlex

        prefix = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(self.env.items()))
        return (prefix + " " if prefix else "") + shlex.join(self.argv)


@dataclass(frozen=True)
class ResumePoint:
    """Where a ``--continue`` starts: the state folder and the counters it holds."""

    state_dir: Path
    step: int
    epoch: int
    #: The length of the lr schedule the state was trained under (None if unknown): a continuation
    #: keeps it, so its lr is the uninterrupted run's.
    schedule_steps: int | None = None


# ---- events parsed from a backend's output


@dataclass(frozen=True)
class Progress:
    step: int  # as the backend counts it (the supervisor adds its resume offset where needed)
    total_steps: int | None = None
    loss: float | None = None
    avg_loss: float | None = None
    lr: float | None = None


@dataclass(frozen=True)
class EpochStarted:
    epoch: int
    total_epochs: int | None = None


@dataclass(frozen=True)
class CheckpointSaved:
    path: Path


@dataclass(frozen=True)
class BackendError:
    message: str


@dataclass(frozen=True)
class Totals:
    total_steps: int | None = None
    total_epochs: int | None = None


Event = Progress | EpochStarted | CheckpointSaved | BackendError | Totals


class Backend(Protocol):
    name: str
    #: True if SIGINT makes the child save a checkpoint and state before exiting (builtin).
    #: False (sd-scripts) means the supervisor escalates SIGINT -> SIGTERM -> SIGKILL and records
    #: the last complete checkpoint itself.
    graceful_sigint: bool
    #: True if the backend's own step counter restarts at 0 after a resume (sd-scripts #1999):
    #: the supervisor then adds the resume step to every Progress.step.
    step_counter_restarts_on_resume: bool

    def check(self, config: RunConfig) -> None:
        """Raise EpochscopeError with what to do if the backend cannot run with this config."""

    def build_launch(self, config: RunConfig, trial: Trial, resume: ResumePoint | None,
                     target_steps: int | None, target_epochs: int | None = None) -> LaunchSpec:
        """The command to run. ``target_steps``/``target_epochs``: absolute totals to stop at, if set
        (the supervisor turns ``--steps N`` after a resume into resume.step + N)."""

    def find_resume_point(self, config: RunConfig, trial: Trial) -> ResumePoint | None:
        """The newest complete training state in the trial folder, or None."""

    def parse_line(self, line: str) -> list[Event]:
        """Events in one line of the child's output (stdout or stderr, one ``\\r``/``\\n`` piece)."""

    def current_lr(self) -> float | None:
        """The learning rate now, for a backend whose output lines do not carry it (else None)."""

    def versions(self, config: RunConfig) -> dict[str, str]:
        """Extra provenance for params.json (e.g. the sd-scripts commit)."""
