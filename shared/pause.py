"""Time-sharing one GPU: the evaluator asks, the trainer pauses itself, and the pause ends by itself.

``pause_request.json`` in the trial folder holds a lease: the evaluator writes it before generating and
renews it while it works; the trainer's supervisor SIGSTOPs its own training process group while an
unexpired lease exists and SIGCONTs it as soon as the file is gone or the lease has run out. So an
evaluator killed with -9 mid-pause costs at most one lease (``LEASE_S``), never a frozen run. The
supervisor itself is never stopped: it keeps its heartbeat and answers Ctrl-C and stop requests (it
resumes the group before asking it to stop).
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone
from pathlib import Path

from pydantic import Field

from shared.records import _Record, utcnow

PAUSE_REQUEST = "pause_request.json"
LEASE_S = 30.0


def pause_request_path(trial_root: Path) -> Path:
    return Path(trial_root) / PAUSE_REQUEST


class PauseRequest(_Record):
    """``pause_request.json``: the evaluator asks the trainer to pause until ``until`` (renewed while needed)."""

    schema_version: int = 1
    requested_by: str = "evaluator"
    pid: int = Field(default_factory=os.getpid)
    until: datetime = Field(description="The lease: after this the trainer resumes by itself.")
    created_at: datetime = Field(default_factory=utcnow)

    def active(self, now: datetime) -> bool:
        until = self.until if self.until.tzinfo else self.until.replace(tzinfo=timezone.utc)
        return now < until


def lease(now: datetime | None = None, seconds: float = LEASE_S) -> PauseRequest:
    return PauseRequest(until=(now or utcnow()) + timedelta(seconds=seconds))


def _gpu_list(visible: str | None) -> list[str] | None:
    if visible is None:
        return None  # every GPU
    return [g.strip() for g in visible.split(",") if g.strip()]


def shares_gpu(trainer_visible: str | None, trainer_on_cpu: bool, eval_visible: str | None,
               eval_device: str) -> bool:
    """Whether the evaluator's device is one of the trainer's GPUs (``*_visible``: each process's
    CUDA_VISIBLE_DEVICES, None when unset). Unknown cases count as shared: the config's choice applies."""
    if not eval_device.startswith("cuda") or trainer_on_cpu:
        return False
    train = _gpu_list(trainer_visible)
    if train is not None and not train:
        return False  # CUDA_VISIBLE_DEVICES="" : the trainer sees no GPU
    index = int(eval_device.split(":", 1)[1]) if ":" in eval_device else 0
    ev = _gpu_list(eval_visible)
    if ev is not None:
        if index >= len(ev):
            return True
        physical = ev[index]
    else:
        physical = str(index)
    return train is None or physical in train
