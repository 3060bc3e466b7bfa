"""The sweep's child processes (one trainer per trial, maybe one evaluator): started in their own
process group so they can be stopped as a whole, and told to stop if the sweep itself dies.

A sweep killed with SIGKILL cannot clean up. Each child therefore asks Linux for SIGTERM when its
parent dies (``PR_SET_PDEATHSIG``, set by ``python -m trainer.sweep.children`` just before it
``exec``s the real command, so no ``preexec_fn`` runs in a threaded parent). The trainer saves and
stops on SIGTERM, the evaluator exits; nothing keeps running in a dead sweep's trial folder.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import IO

PR_SET_PDEATHSIG = 1


RESUME_ORPHAN = "--resume-if-orphaned"
ORPHAN_POLL_S = 0.2


def guarded(argv: list[str], python: str = sys.executable, resume_if_orphaned: bool = False) -> list[str]:
    """``argv`` wrapped so that it receives SIGTERM when the calling process dies. ``resume_if_orphaned``:
    for a group the caller may SIGSTOP (a paused trainer), see :func:`_start_orphan_resumer`."""
    return [python, "-m", "trainer.sweep.children", *([RESUME_ORPHAN] if resume_if_orphaned else []),
            str(os.getpid()), *argv]


def spawn(argv: list[str], env: dict[str, str], out: IO[bytes] | None = None) -> subprocess.Popen:
    """Start a guarded child in a new session (its own process group; the terminal's Ctrl-C goes to the
    sweep, which stops its children itself)."""
    return subprocess.Popen(guarded(argv), env=env, stdout=out, stderr=subprocess.STDOUT if out else None,
                            stdin=subprocess.DEVNULL, start_new_session=True)


def stop_group(proc: subprocess.Popen, wait_s: float = 60.0) -> None:
    """Ask a child's group to stop (the trainer saves on SIGINT), then make sure it is gone."""
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGINT, wait_s), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def child_env() -> dict[str, str]:
    """On a CPU-only machine the trainer and the evaluator split the cores: each taking all of them
    makes both several times slower."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if "OMP_NUM_THREADS" not in env:
        try:
            import torch

            cpu_only = not torch.cuda.is_available()
        except ImportError:
            cpu_only = True
        if cpu_only:
            env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 2) // 2))
    return env


def alive(pid: object) -> bool:
    try:
        os.kill(int(pid), 0)  # type: ignore[arg-type]
        return True
    except (TypeError, ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True


def evaluator_serving(root: Path, proc_dir: Path = Path("/proc")) -> int | None:
    """The pid of an ``evaluator watch`` process on this machine whose --dir is ``root``, if any.

    Read from /proc (command line and working directory), so an evaluator that has not taken on a
    trial yet is found too; ``proc_dir`` is a parameter for tests."""
    root = root.resolve()
    try:
        entries = [p for p in proc_dir.iterdir() if p.name.isdigit()]
    except OSError:
        return None
    for entry in entries:
        try:
            args = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        folder = _watch_dir(args)
        if folder is None or int(entry.name) == os.getpid():
            continue
        if not Path(folder).is_absolute():
            try:
                folder = os.path.join(os.readlink(entry / "cwd"), folder)
            except OSError:
                continue
        if Path(folder).resolve() == root:
            return int(entry.name)
    return None


def _watch_dir(args: list[str]) -> str | None:
    """The --dir of an ``evaluator ... watch`` command line, else None."""
    names = [os.path.basename(a) for a in args]
    if "watch" not in args or not any(n in ("evaluator", "epochscope-evaluator") for n in names):
        return None
    for i, a in enumerate(args):
        if a == "--dir" and i + 1 < len(args):
            return args[i + 1]
        if a.startswith("--dir="):
            return a.split("=", 1)[1]
    return None


def _exec_guarded(parent: int, argv: list[str], resume_if_orphaned: bool = False) -> None:
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (AttributeError, OSError):
        pass  # not Linux: the sweep's own cleanup (and the next run's orphan check) must do
    if os.getppid() != parent:  # the parent died before the guard was set
        sys.exit(143)
    if resume_if_orphaned:
        _start_orphan_resumer(parent)
    os.execvp(argv[0], argv)


def _parent_of(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])  # after "pid (comm) state": the parent's pid


def _start_orphan_resumer(parent: int) -> None:
    """A stopped process takes no signal but SIGKILL and SIGCONT: if the supervisor dies (kill -9) while it
    has the training group paused, the SIGTERM that PR_SET_PDEATHSIG sends stays pending for ever, and the
    frozen worker keeps its GPU memory and can wake up later in a folder another run has taken. So a small
    process forked here, in a session of its own (the group's SIGSTOP passes it by), looks a few times a
    second: once the worker's parent is no longer ``parent`` it SIGCONTs the group, which then takes its
    SIGTERM (the built-in worker saves and exits). It ends when the worker does."""
    worker = os.getpid()  # after exec, the worker: the leader of its own group (start_new_session)
    if os.fork() != 0:
        return
    try:
        os.setsid()
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)  # the supervisor reads the worker's pipes to EOF: hold none of them open
        os.closerange(3, os.sysconf("SC_OPEN_MAX"))
        import time

        while os.getppid() == worker:  # reparented: the worker has gone
            if _parent_of(worker) not in (parent, None):
                os.killpg(worker, signal.SIGCONT)
                break
            time.sleep(ORPHAN_POLL_S)
    except BaseException:  # noqa: BLE001 - a helper must never outlive its job by an exception
        pass
    finally:
        os._exit(0)


if __name__ == "__main__":
    resume = sys.argv[1] == RESUME_ORPHAN
    args = sys.argv[2:] if resume else sys.argv[1:]
    _exec_guarded(int(args[0]), args[1:], resume_if_orphaned=resume)
