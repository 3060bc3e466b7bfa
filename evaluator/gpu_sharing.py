"""Time-sharing one GPU with the trainer: with ``pause-trainer``, ask it to pause while we generate.

The evaluator never stops the trainer itself: it writes a pause lease (shared/pause.py), renews it from
a thread while it works, and removes it afterwards. The trainer's supervisor pauses and resumes its own
training, and resumes by itself when the lease runs out, so an evaluator that dies mid-pause cannot
freeze training. The pause applies only when the evaluator's device is one of the trainer's GPUs.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from contextlib import contextmanager

from shared.errors import FileFormatError
from shared.jsonio import read_model_or_none, write_model
from shared.liveness import trainer_state
from shared.pause import LEASE_S, lease, pause_request_path, shares_gpu
from shared.records import TrainerStatus, utcnow
from shared.trial import Trial

log = logging.getLogger("epochscope.evaluator")

ACK_WAIT_S = 5.0


def _status(trial: Trial) -> TrainerStatus | None:
    try:
        return read_model_or_none(trial.status_path, TrainerStatus)
    except FileFormatError:
        return None


def _default_device() -> str:
    try:
        import torch

        return "cuda:0" if torch.cuda.is_available() else "cpu"
    except ImportError:
        return "cpu"


def should_pause(status: TrainerStatus | None, mode: str, device: str | None = None) -> bool:
    """``pause-trainer`` is asked for, the trainer is alive, and it trains on the evaluator's GPU."""
    if mode != "pause-trainer" or status is None or status.state != "running":
        return False
    if trainer_state(status, utcnow()) != "alive":
        return False
    gpus = status.gpus
    device = device or _default_device()
    if gpus is None:  # a trainer that did not say: the config's choice applies
        return device.startswith("cuda")
    return shares_gpu(None if gpus == "all" else gpus, gpus == "cpu", os.environ.get("CUDA_VISIBLE_DEVICES"),
                      device)


@contextmanager
def trainer_paused(trial: Trial, mode: str, device: str | None = None, lease_s: float = LEASE_S):
    """Hold the trainer paused for the block when ``should_pause``; yields True if it is paused.
    ``concurrent`` (the default) does nothing: both share the GPU."""
    if not should_pause(_status(trial), mode, device):
        yield False
        return
    path = pause_request_path(trial.root)
    write_model(path, lease(seconds=lease_s))
    done = threading.Event()

    def renew() -> None:
        while not done.wait(lease_s / 3):
            try:
                write_model(path, lease(seconds=lease_s))
            except OSError as e:
                log.warning("cannot renew the trainer pause lease: %s", e)

    renewer = threading.Thread(target=renew, name="pause-lease", daemon=True)
    renewer.start()
    try:
        yield _wait_for_ack(trial)
    finally:
        done.set()
        renewer.join(timeout=5)
        try:
            path.unlink()
        except FileNotFoundError:
            pass


def _wait_for_ack(trial: Trial) -> bool:
    """Until the supervisor says it paused (it polls twice a second), or ACK_WAIT_S passes."""
    deadline = time.monotonic() + ACK_WAIT_S
    while time.monotonic() < deadline:
        st = _status(trial)
        if st is None or st.is_final:
            return False
        if st.paused:
            return True
        time.sleep(0.1)
    log.warning("%s: the trainer did not confirm the pause within %.0f s; generating anyway", trial.name,
                ACK_WAIT_S)
    return False
