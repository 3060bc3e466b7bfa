"""TensorBoard logging survives kill -9 at any point: after a restart every (tag, step) is read once.

A forked child logs a history of checkpoints, then logs one more (a first scoring or a repeat) with every
file operation (``os.replace``/``rename``/``unlink``/``fsync``, the writer's flush and close) wrapped so
that the k-th one, before or after it runs, SIGKILLs the process. k runs from 1 until the call finishes
unkilled. After each kill a fresh process runs ``remove_leftover_temp_files`` (what the daemon does at
start): no temp file is left and no point is doubled or lost. Another fresh process then scores the
interrupted checkpoint again (as the restarted daemon does) and a new one: each point is there once, with
the new value. One test more does the same with separate interpreters.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import pytest

from evaluator import tensorboard_log as tb
from shared.records import Metrics
from shared.trial import Trial

REPO_ROOT = Path(__file__).resolve().parent.parent
IMG = [np.full((8, 8, 3), 0.5, np.float32)] * 2

# (tag, step, score) calls: the history, then the call that is killed
SCENARIOS = {
    "first scoring of a step": ([("baseline", 0, 0.5), ("checkpoint", 4, 0.6)], ("checkpoint", 8, 0.61)),
    "first scoring of a trial": ([], ("baseline", 0, 0.5)),
    "repeat (evaluator run --force)": ([("baseline", 0, 0.5), ("checkpoint", 4, 0.6), ("checkpoint", 8, 0.61)],
                                       ("checkpoint", 4, 0.65)),
    "repeat over two event files": ([("baseline", 0, 0.5), ("checkpoint", 4, 0.6), ("checkpoint", 4, 0.62),
                                     ("checkpoint", 8, 0.61)], ("checkpoint", 8, 0.7)),
}


def _log(trial: Trial, tag: str, step: int, score: float) -> None:
    tb.log_checkpoint(trial, step, Metrics(score=score, failure_rate=round(score / 10, 4)), IMG, tag)


def _read(logdir: Path) -> dict[str, list[tuple[int, float | None]]]:
    """Every tag TensorBoard reads in ``logdir``: its (step, value) points, in order (images: value None)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    out: dict[str, list[tuple[int, float | None]]] = {}
    for tag in acc.Tags()["scalars"]:
        out[tag] = [(e.step, round(e.value, 4)) for e in acc.Scalars(tag)]
    for tag in acc.Tags()["images"]:
        out[tag] = [(e.step, None) for e in acc.Images(tag)]
    return out


def _expected(calls) -> dict[str, dict[int, float | None]]:
    """What the calls should leave: per tag, step -> value (a later call at a step replaces an earlier)."""
    want: dict[str, dict[int, float | None]] = {}
    for tag, step, score in calls:
        want.setdefault("eval/score", {})[step] = score
        want.setdefault("eval/failure_rate", {})[step] = round(score / 10, 4)
        want.setdefault(f"samples/{tag}", {})[step] = None
    return want


def _no_duplicates(got) -> None:
    for tag, points in got.items():
        steps = [s for s, _ in points]
        assert len(steps) == len(set(steps)), f"{tag} has a step more than once: {points}"


def _temp_files(logdir: Path) -> list[str]:
    return sorted(p.name for p in logdir.iterdir() if p.name.endswith(".tmp"))


def _in_child(fn) -> int:
    """Run ``fn`` in a forked process (this one holds no writer); 0 when it returned, -N when signal N
    ended it, 3 when it raised (traceback on stderr)."""
    from torch.utils.tensorboard import SummaryWriter  # noqa: F401 - imported once, not in every child

    tb.close_writers()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 0
        try:
            fn()
        except BaseException:  # noqa: BLE001
            traceback.print_exc()
            code = 3
        finally:
            sys.stderr.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def _die_at(k: int) -> None:
    """SIGKILL this process at the k-th point: just before or just after a file operation."""
    from torch.utils.tensorboard import SummaryWriter

    count = [0]

    def tick():
        count[0] += 1
        if count[0] == k:
            os.kill(os.getpid(), signal.SIGKILL)

    def around(fn):
        def wrapped(*args, **kwargs):
            tick()
            try:
                return fn(*args, **kwargs)
            finally:
                tick()
        return wrapped

    for name in ("replace", "rename", "unlink", "fsync"):
        setattr(os, name, around(getattr(os, name)))
    SummaryWriter.flush = around(SummaryWriter.flush)
    SummaryWriter.close = around(SummaryWriter.close)


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_a_kill_at_any_point_leaves_each_point_once_after_a_restart(tmp_path, scenario):
    history, target = SCENARIOS[scenario]
    tag, step, score = target
    rescored = (tag, step, round(score + 0.05, 4))  # the restarted daemon scores that checkpoint again
    repeat = any((t, s) == (tag, step) for t, s, _ in history)
    before = _expected(history)
    after = _expected([*history, target])
    final = _expected([*history, rescored, ("checkpoint", 12, 0.8)])
    kills = 0
    for k in range(1, 200):
        trial = Trial(tmp_path / f"kill{k:03d}" / "trial_0001")
        logdir = trial.logs_dir / "evaluator"

        def killed_run():
            for call in history:
                _log(trial, *call)
            _die_at(k)
            _log(trial, *target)

        status = _in_child(killed_run)
        if status == 0:
            break  # k is past the last point: the call finished
        assert status == -signal.SIGKILL, f"kill point {k}: the child failed ({status})"
        kills += 1

        assert _in_child(lambda: tb.remove_leftover_temp_files(logdir)) == 0
        assert _temp_files(logdir) == [], f"kill point {k}"
        got = _read(logdir)
        _no_duplicates(got)
        for t, points in got.items():  # nothing but the history and the killed call
            assert {s for s, _ in points} <= set(after.get(t, {})), f"kill point {k}: {t} is {points}"
        for t, points in after.items():
            for s, new in points.items():
                found = [v for s2, v in got.get(t, []) if s2 == s]
                old = before.get(t, {}).get(s, "absent")
                if s != step:
                    assert found == [old], f"kill point {k}: {t} at {s} is {found}"
                elif old == "absent":  # a first scoring: there or not yet
                    assert found in ([], [new]), f"kill point {k}: {t} at {s} is {found}"
                else:  # a repeat: the old value or the new one, never both or none
                    assert found in ([old], [new]), f"kill point {k}: {t} at {s} is {found}"

        def restarted():
            _log(trial, *rescored)
            _log(trial, "checkpoint", 12, 0.8)
            tb.close_writers()

        assert _in_child(restarted) == 0
        got = _read(logdir)
        want = {t: sorted(points.items()) for t, points in final.items()}
        assert got == want, f"kill point {k}"
        assert _temp_files(logdir) == []
    else:
        pytest.fail("the call never finished")
    assert kills >= 4  # every call has an intent, a flush or a rewrite to be killed in


@pytest.mark.parametrize("uid", [0, 8, 98])  # 8: the rewrite takes 9, the next writer 10
def test_files_written_in_one_second_are_read_in_the_order_they_were_written(tmp_path, monkeypatch, uid):
    """TensorBoard reads a folder's event files in name order. A writer's file is named by the second, the
    host, the pid and a per-process counter, so within one second the counter going from 9 to 10 put a later
    file first: the step-8 point was read before the rewritten steps 0 and 4, a curve that jumps back. (Seen
    when the suite ran on two workers: a forked child inherited a counter at 9.)"""
    from tensorboard.summary.writer import event_file_writer

    monkeypatch.setattr(event_file_writer._global_uid, "_value", uid)
    monkeypatch.setattr(time, "time", lambda: 1_800_000_000.25)  # every file in one second
    trial = Trial(tmp_path / "trial_0001")
    _log(trial, "baseline", 0, 0.5)
    _log(trial, "checkpoint", 4, 0.6)
    _log(trial, "checkpoint", 4, 0.65)  # a repeat: every event file rewritten as one
    _log(trial, "checkpoint", 8, 0.7)  # a first scoring: a new writer, a new file, the same second
    tb.close_writers()
    logdir = trial.logs_dir / "evaluator"
    assert len(tb._event_files(logdir)) == 2
    assert _read(logdir)["eval/score"] == [(0, 0.5), (4, 0.65), (8, 0.7)]


def test_cleanup_of_a_folder_without_leftovers():
    from pathlib import Path as P

    assert tb.remove_leftover_temp_files(P("/nonexistent/logs/evaluator")) == 0


def test_cleanup_removes_a_stray_ledger_temp_file_and_finishes_nothing(tmp_path):
    trial = Trial(tmp_path / "trial_0001")
    _log(trial, "baseline", 0, 0.5)
    tb.close_writers()
    logdir = trial.logs_dir / "evaluator"
    (logdir / ".logged.json.abc123.tmp").write_text("{")
    (logdir / ".events-rewrite.xyz.tmp").write_bytes(b"partial")
    assert tb.remove_leftover_temp_files(trial) == 2
    assert _temp_files(logdir) == [] and _read(logdir)["eval/score"] == [(0, 0.5)]


_CHILD = """
import os, signal, sys
import numpy as np
from torch.utils.tensorboard import SummaryWriter
from evaluator import tensorboard_log as tb
from shared.records import Metrics
from shared.trial import Trial

trial, phase = Trial(sys.argv[1]), sys.argv[2]
img = [np.full((8, 8, 3), 0.5, np.float32)]
log = lambda step, score, tag="checkpoint": tb.log_checkpoint(trial, step, Metrics(score=score), img, tag)
if phase == "first":
    log(0, 0.5976, "baseline")
    log(4, 0.603)
    flush = SummaryWriter.flush
    def flush_then_die(self):
        flush(self)
        os.kill(os.getpid(), signal.SIGKILL)  # kill -9 right after the flush of step 8
    SummaryWriter.flush = flush_then_die
    log(8, 0.61)
else:
    print("removed", tb.remove_leftover_temp_files(trial.logs_dir / "evaluator"))
    log(8, 0.61)  # the restarted daemon scores the interrupted checkpoint again
    log(12, 0.62)
    tb.close_writers()
"""


def test_kill_right_after_the_flush_then_a_restart_in_a_new_interpreter(tmp_path):
    """The audit's case with real processes: eval/score must not read [(0,..),(4,..),(8,..),(8,..),..]."""
    trial_dir = tmp_path / "trial_0001"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO_ROOT)}
    first = subprocess.run([sys.executable, "-c", _CHILD, str(trial_dir), "first"], cwd=REPO_ROOT, env=env,
                           capture_output=True, text=True)
    assert first.returncode == -signal.SIGKILL, first.stderr
    second = subprocess.run([sys.executable, "-c", _CHILD, str(trial_dir), "restart"], cwd=REPO_ROOT, env=env,
                            capture_output=True, text=True)
    assert second.returncode == 0, second.stderr
    logdir = trial_dir / "logs" / "evaluator"
    got = _read(logdir)
    assert got["eval/score"] == [(0, 0.5976), (4, 0.603), (8, 0.61), (12, 0.62)]
    assert got["samples/checkpoint"] == [(4, None), (8, None), (12, None)]
    assert got["samples/baseline"] == [(0, None)]
    assert _temp_files(logdir) == []
