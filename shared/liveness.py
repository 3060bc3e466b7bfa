"""Is the trainer that wrote trainer_status.json still there, and is it this run's?

The trainer rewrites its status at least every ``HEARTBEAT_S`` seconds from a thread of its own, and
records its pid, host and a run id. A reader calls ``trainer_state`` with the time now:

- ``final``: the run ended and said so (finished, failed, stopped, stopped_early);
- ``dead``: it did not say so, but its pid is gone (same host) or its heartbeat is older than
  ``STALE_AFTER_S``: nothing more will come from it;
- ``alive``: it is running (or starting);
- ``other_run``: the status belongs to another run than the one the reader waits for (``run_id``),
  e.g. the previous run's ``finished`` in the seconds before a ``--continue`` rewrites it;
- ``absent``: there is no status yet.

The run id comes from ``$EPOCHSCOPE_RUN_ID`` when the caller (run_pair.sh) sets it for both processes,
else the trainer makes one.
"""

from __future__ import annotations

import os
import socket
import uuid
from datetime import datetime, timezone
from typing import Callable, Literal

from shared.records import TrainerStatus

HEARTBEAT_S = 5.0
STALE_AFTER_S = 60.0
RUN_ID_ENV = "EPOCHSCOPE_RUN_ID"

TrainerLiveness = Literal["absent", "other_run", "alive", "dead", "final"]


def new_run_id(environ: dict[str, str] | None = None) -> str:
    """``$EPOCHSCOPE_RUN_ID`` if set, else a fresh random id."""
    env = os.environ if environ is None else environ
    return env.get(RUN_ID_ENV) or uuid.uuid4().hex[:16]


def expected_run_id(environ: dict[str, str] | None = None) -> str | None:
    """The run a reader should wait for, if its caller told it (``$EPOCHSCOPE_RUN_ID``)."""
    env = os.environ if environ is None else environ
    return env.get(RUN_ID_ENV) or None


def this_host() -> str:
    return socket.gethostname()


def pid_alive(pid: int) -> bool:
    """True if ``pid`` is a live process on this machine (a zombie counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: it exists
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True


def trainer_state(status: TrainerStatus | None, now: datetime, run_id: str | None = None, *,
                  host: str | None = None, is_alive: Callable[[int], bool] = pid_alive,
                  stale_after_s: float = STALE_AFTER_S) -> TrainerLiveness:
    """What ``status`` says about its trainer at ``now`` (see the module docstring).

    ``run_id``: the run the caller waits for, or None for whatever run wrote the status. ``host``: this
    machine's name (default: the real one); the pid is checked only when the status was written here.
    """
    if status is None:
        return "absent"
    if run_id is not None and status.run_id != run_id:
        return "other_run"
    if status.is_final:
        return "final"
    if status.pid is not None and status.host is not None and status.host == (host or this_host()):
        if not is_alive(status.pid):
            return "dead"
    updated = status.updated_at if status.updated_at.tzinfo else status.updated_at.replace(tzinfo=timezone.utc)
    if (now - updated).total_seconds() > stale_after_s:
        return "dead"
    return "alive"


def trainer_done(status: TrainerStatus | None, run_id: str | None = None, now: datetime | None = None) -> bool:
    """Nothing more will come from the trainer a reader waits for: it ended (``final``) or it is ``dead``.
    ``run_id`` defaults to ``$EPOCHSCOPE_RUN_ID`` (none set: whatever run wrote the status)."""
    state = trainer_state(status, now or datetime.now(timezone.utc), run_id or expected_run_id())
    return state in ("final", "dead")
