"""Time-sharing one GPU with the trainer: optionally pause its process group while we generate."""

from __future__ import annotations

import logging
import os
import signal
from contextlib import contextmanager

from shared.errors import FileFormatError
from shared.jsonio import read_model_or_none
from shared.records import TrainerStatus
from shared.trial import Trial

log = logging.getLogger("epochscope.evaluator")


@contextmanager
def trainer_paused(trial: Trial, mode: str):
    """With ``pause-trainer``: SIGSTOP the trainer's process group, and SIGCONT it afterwards whatever
    happens. ``concurrent`` (the default) does nothing: both share the GPU."""
    pgid = None
    if mode == "pause-trainer":
        try:
            status = read_model_or_none(trial.status_path, TrainerStatus)
        except FileFormatError:
            status = None
        if status is not None and status.state == "running" and status.pgid and status.pgid != os.getpgrp():
            try:
                os.killpg(status.pgid, signal.SIGSTOP)
                pgid = status.pgid
            except (ProcessLookupError, PermissionError) as e:
                log.warning("cannot pause the trainer (pgid %s): %s", status.pgid, e)
    try:
        yield pgid
    finally:
        if pgid is not None:
            try:
                os.killpg(pgid, signal.SIGCONT)
            except ProcessLookupError:
                pass
