"""Helpers for the sweep tests: the sweep command, reading a study, a throwaway PostgreSQL server."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from conftest import as_a_terminal_starts_it
from shared.trial import SweepRoot

REPO_ROOT = Path(__file__).resolve().parent.parent
DEMO_SWEEP = REPO_ROOT / "configs" / "demo-sweep.toml"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def sweep_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "trainer", "sweep", *args]


def start_sweep(*args: str, log: Path) -> subprocess.Popen:
    """A sweep in its own process group, its output in ``log`` (read it when an assertion fails)."""
    with open(log, "ab") as out:
        return subprocess.Popen(sweep_cmd(*args), cwd=REPO_ROOT, env=ENV, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=as_a_terminal_starts_it)


def python_pids_under(folder: Path) -> list[int]:
    """Processes whose command line names ``folder`` (trainers, evaluators, sweeps working there)."""
    out = subprocess.run(["ps", "-ww", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return [int(line.split()[0]) for line in out.splitlines()[1:]
            if str(folder) in line and "python" in line and int(line.split()[0]) != os.getpid()]


def wait_until_gone(folder: Path, timeout: float) -> list[int]:
    """Wait for every process working in ``folder`` to exit; returns the ones still there."""
    deadline = time.monotonic() + timeout
    while (left := python_pids_under(folder)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def kill_all_under(folder: Path) -> None:
    """Cleanup after a failed test: nothing may keep running in a tmp folder."""
    for pid in python_pids_under(folder):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def load_study(storage: str, name: str):
    import optuna

    from trainer.sweep.storage import with_driver

    return optuna.load_study(study_name=name, storage=with_driver(storage))


def default_study(root: SweepRoot, name: str = "demo"):
    return load_study(root.default_storage, name)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresUnavailable(Exception):
    """PostgreSQL is not installed or cannot start here (the reason is the message)."""


@contextmanager
def postgres_server() -> Iterator[str]:
    """A throwaway PostgreSQL server (Debian's postgresql) on a free loopback port, data and socket in a
    temp dir; yields a postgresql:// URL of an empty database. PostgreSQL refuses to run as root, so as
    root it runs as the ``postgres`` user the Debian package creates."""
    bins = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not bins:
        raise PostgresUnavailable("PostgreSQL is not installed (`make system-deps` installs Debian's postgresql)")
    bindir = bins[-1].parent
    as_user: list[str] = []
    if os.geteuid() == 0:
        if shutil.which("runuser") is None:
            raise PostgresUnavailable("running as root without runuser: cannot start PostgreSQL as another user")
        as_user = ["runuser", "-u", "postgres", "--"]
    base = Path(tempfile.mkdtemp(prefix="epochscope-pg-"))
    if as_user:
        shutil.chown(base, "postgres")
    data, port = base / "data", _free_port()
    pg_ctl = [*as_user, str(bindir / "pg_ctl"), "-D", str(data)]
    try:
        try:
            subprocess.run([*as_user, str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"],
                           check=True, capture_output=True, timeout=120)
            subprocess.run([*pg_ctl, "-l", str(base / "server.log"), "-w", "-t", "60", "-o",
                            f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off", "start"],
                           check=True, capture_output=True, timeout=120)
            subprocess.run([*as_user, str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres",
                            "optuna"], check=True, capture_output=True, timeout=60)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as e:
            detail = getattr(e, "stderr", b"") or b""
            raise PostgresUnavailable(f"could not start PostgreSQL: {e} {detail.decode(errors='replace')[-300:]}")
        yield f"postgresql://postgres:secret@127.0.0.1:{port}/optuna"  # trust auth: the password is ignored
    finally:
        subprocess.run([*pg_ctl, "-m", "immediate", "stop"], capture_output=True, timeout=60)
        shutil.rmtree(base, ignore_errors=True)
