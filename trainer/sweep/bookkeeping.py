"""Which trials of a study count towards ``n_trials``, and what happens to trials a dead sweep left behind.

A trial counts when it is COMPLETE, PRUNED, RUNNING (on some worker, so several workers do not
overshoot), or FAILED on its own: the trainer failed, or the evaluator never scored it
(``fail_reason`` is set). A trial that FAILED only because its sweep process died ("interrupted":
killed, Ctrl-C, or its worker's heartbeat stopped) is not a result of the search: it keeps its
number and its folder, and a new trial with a new number replaces it.
"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

from trainer.sweep.children import alive

log = logging.getLogger("epochscope.sweep")

FAIL_REASON = "fail_reason"
INTERRUPTED = "interrupted"
HOST = "host"
PID = "pid"
PID_START = "pid_start"


def counts(trial) -> bool:
    """Whether a (frozen) trial counts towards n_trials."""
    from optuna.trial import TrialState as S

    if trial.state in (S.COMPLETE, S.PRUNED, S.RUNNING):
        return True
    if trial.state == S.FAIL:
        return bool(trial.user_attrs.get(FAIL_REASON)) and not trial.user_attrs.get(INTERRUPTED)
    return False


def counted(study) -> int:
    return sum(1 for t in study.get_trials(deepcopy=False) if counts(t))


def claim(trial) -> None:
    """Record which process runs a trial, so that a later sweep on this machine can tell it died."""
    trial.set_user_attr(HOST, socket.gethostname())
    trial.set_user_attr(PID, os.getpid())
    trial.set_user_attr(PID_START, process_start(os.getpid()))


def process_start(pid: object) -> int | None:
    """When a process started (clock ticks since boot, from /proc): tells a reused pid from the original."""
    try:
        stat = Path(f"/proc/{int(pid)}/stat").read_text()  # type: ignore[arg-type]
        return int(stat.rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError, TypeError):
        return None


def still_running(attrs: dict) -> bool:
    """Whether the sweep process named in a trial's user attrs is still the one that claimed it."""
    pid = attrs.get(PID)
    if pid == os.getpid() or not alive(pid):
        return False
    recorded = attrs.get(PID_START)
    return recorded is None or process_start(pid) in (None, recorded)


def mark_interrupted(trial, why: str) -> None:
    trial.set_user_attr(FAIL_REASON, why)
    trial.set_user_attr(INTERRUPTED, True)


def fail_orphans(study) -> list[int]:
    """Mark FAIL (interrupted) the RUNNING trials whose sweep process on this machine is gone.

    Orphans of other machines are failed by Optuna's heartbeat after its grace period. Returns the
    Optuna numbers of the trials marked."""
    import optuna

    host = socket.gethostname()
    marked = []
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        if t.user_attrs.get(HOST) != host or still_running(t.user_attrs):
            continue
        storage = study._storage  # user attrs of a trial this process did not ask for
        storage.set_trial_user_attr(t._trial_id, FAIL_REASON, "the sweep process running it died")
        storage.set_trial_user_attr(t._trial_id, INTERRUPTED, True)
        try:
            study.tell(t.number, state=optuna.trial.TrialState.FAIL)
        except (ValueError, RuntimeError):  # another sweep on this machine marked it first
            continue
        marked.append(t.number)
        log.info("trial %d was left running by a sweep that died: marked FAIL (interrupted)", t.number + 1)
    return marked
