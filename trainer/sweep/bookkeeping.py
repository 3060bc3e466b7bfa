"""Which trials of a study count towards ``n_trials``, and what happens to trials a dead sweep left behind.

A trial counts when it is COMPLETE, PRUNED, RUNNING (on some worker, so several workers do not
overshoot), or FAILED on its own: the trainer failed, or the evaluator never scored it
(``fail_reason`` is set). A trial that FAILED only because its sweep process died ("interrupted":
killed, Ctrl-C, or its worker's heartbeat stopped) is not a result of the search: it keeps its
number and its folder, and a new trial with a new number and the same parameters replaces it
(``retry_of`` names the trial it replaces). A trial whose pruning decision was made before its sweep
died (``pruned_at``) is a result: it is recorded PRUNED.
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
ROOT = "root"  # the sweep root holding the trial's folder: its re-run owns the trial
PRUNED_AT = "pruned_at"  # the epoch (or step) at which the pruner said stop, recorded at once
RETRY_OF = "retry_of"  # on a re-enqueued trial: the number of the interrupted trial it replaces
RESUMED_FROM = "resumed_from"  # on a retry: the interrupted trial's state it went on from (trial_NNNN/x-state)
DIVERGED = "diverged"  # the trainer's message, on a trial PRUNED because its training diverged
SURPLUS = "surplus"  # asked when the study already had its n_trials (workers racing): never run, not a result


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


def surplus(trial, n_trials: int) -> bool:
    """Whether a trial just asked for is one too many: n_trials trials numbered before it already count.

    Two workers that finish together both see room for one more trial and both ask. The storage numbers
    trials in the order it creates them, so the later of the two sees the earlier one RUNNING and stands
    down; checking the count before asking cannot close that race."""
    earlier = (t for t in trial.study.get_trials(deepcopy=False) if t.number < trial.number)
    return sum(1 for t in earlier if counts(t)) >= n_trials


def stand_down(trial) -> None:
    """Record a surplus trial as such, and give back the enqueued values it took (a retry, or a trial the
    config plants), with the retry's link, so the trial that runs them later is the one that counts."""
    trial.set_user_attr(SURPLUS, True)
    frozen = next(t for t in trial.study.get_trials(deepcopy=False) if t.number == trial.number)
    fixed = frozen.system_attrs.get("fixed_params")
    if fixed:
        kept = {k: v for k, v in frozen.user_attrs.items() if k == RETRY_OF}
        trial.study.enqueue_trial(fixed, user_attrs=kept, skip_if_exists=False)


def claim(trial, root: Path | None = None) -> None:
    """Record which process runs a trial (and in which root), so that a later sweep on this machine can
    tell it died and try its parameters again."""
    trial.set_user_attr(HOST, socket.gethostname())
    trial.set_user_attr(PID, os.getpid())
    trial.set_user_attr(PID_START, process_start(os.getpid()))
    if root is not None:
        trial.set_user_attr(ROOT, str(Path(root).resolve()))


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
    """Mark FAIL (interrupted) the RUNNING trials whose sweep process on this machine is gone; PRUNED
    the ones whose pruning decision was already made (``pruned_at``).

    Orphans of other machines are failed by Optuna's heartbeat after its grace period. Returns the
    Optuna numbers of the trials marked."""
    import optuna

    S = optuna.trial.TrialState
    host = socket.gethostname()
    marked = []
    for t in study.get_trials(deepcopy=False, states=(S.RUNNING,)):
        if t.user_attrs.get(HOST) != host or still_running(t.user_attrs):
            continue
        pruned = t.user_attrs.get(PRUNED_AT) is not None
        if not pruned:
            storage = study._storage  # user attrs of a trial this process did not ask for
            storage.set_trial_user_attr(t._trial_id, FAIL_REASON, "the sweep process running it died")
            storage.set_trial_user_attr(t._trial_id, INTERRUPTED, True)
        try:
            study.tell(t.number, state=S.PRUNED if pruned else S.FAIL)
        except (ValueError, RuntimeError):  # another sweep on this machine marked it first
            continue
        marked.append(t.number)
        if pruned:
            log.info("trial %d was pruned at epoch %s before its sweep died: marked PRUNED", t.number + 1,
                     t.user_attrs[PRUNED_AT])
        else:
            log.info("trial %d was left running by a sweep that died: marked FAIL (interrupted)", t.number + 1)
    return marked


def interrupted(trial) -> bool:
    """A FAILed trial that got no result of its own: its sweep was stopped or died (with or without
    saying so), so its parameters were never judged."""
    from optuna.trial import TrialState as S

    return trial.state == S.FAIL and not counts(trial) and not trial.user_attrs.get(SURPLUS)


def owned(trial, root: Path, shared_storage: bool) -> bool:
    """Whether this sweep (this machine, this root) answers for an interrupted trial: its folder is here.
    A trial interrupted before it was claimed names no machine; on a storage of its own it is ours."""
    host = trial.user_attrs.get(HOST)
    if host is None:
        return not shared_storage
    recorded = trial.user_attrs.get(ROOT)
    return host == socket.gethostname() and (recorded is None or recorded == str(Path(root).resolve()))


def retry_params(trial) -> dict:
    """What the interrupted trial was asked to try: its enqueued values (kept even if it died before
    suggesting them), then whatever it had sampled."""
    return {**trial.params, **trial.system_attrs.get("fixed_params", {})}


def requeue_interrupted(study, root: Path, shared_storage: bool) -> list[tuple[int, dict]]:
    """Enqueue once, with the same parameters, every interrupted trial of this root not replaced yet.

    Called under the root's sweep lock, so two sweeps on one root never enqueue the same retry; the
    retry and its ``retry_of`` are written in one step, so a sweep killed here loses nothing and a
    re-run does not enqueue it twice. Returns (interrupted trial number, params) per retry enqueued."""
    trials = study.get_trials(deepcopy=False)
    replaced = {t.user_attrs.get(RETRY_OF) for t in trials}
    out = []
    for t in trials:
        if not interrupted(t) or t.number in replaced or not owned(t, root, shared_storage):
            continue
        params = retry_params(t)
        if not params:
            continue  # nothing was asked of it: the sampler's next trial is as good
        study.enqueue_trial(params, user_attrs={RETRY_OF: t.number}, skip_if_exists=False)
        out.append((t.number, params))
        log.info("trial %d was interrupted: its parameters %s are tried again", t.number + 1, params)
    return out
