"""A run's life cycle without training: backups, the trainer lock, liveness and run ids, the kept final,
the lr schedule of a continuation (issue 11). Fast: no model is loaded."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from conftest import proc_state, write_demo_config
from shared.folder_lock import FolderLock, trainer_lock_path
from shared.jsonio import read_model, write_model
from shared.liveness import trainer_state
from shared.records import Params, TrainerStatus
from shared.trial import Trial
from trainer.outputs import back_up_previous_run, retire_final

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc)


def _ckpt(path: Path, step: int, epoch: int, **meta: str) -> Path:
    save_file({"w": torch.zeros(2)}, str(path), metadata={"ss_steps": str(step), "ss_epoch": str(epoch), **meta})
    return path


# ---------------------------------------------------------------- --new keeps the old curves apart (fault 4)


def test_new_backs_up_tensorboard_logs_and_training_log(tmp_path):
    t = Trial(tmp_path / "t")
    t.root.mkdir()
    _ckpt(t.checkpoint_path("lora"), 16, 4)
    (t.logs_dir / "trainer").mkdir(parents=True)
    (t.logs_dir / "trainer" / "events.out.tfevents.1").write_bytes(b"old")
    t.log_path.write_text("old run\n")
    dest = back_up_previous_run(t, "lora")
    assert dest is not None
    assert (dest / "logs" / "trainer" / "events.out.tfevents.1").read_bytes() == b"old"
    assert (dest / "training.log").read_text() == "old run\n"
    assert not t.logs_dir.exists() and not t.log_path.exists() and not t.checkpoint_paths()


def test_new_backs_up_logs_of_a_run_that_saved_no_checkpoint(tmp_path):
    t = Trial(tmp_path / "t")
    (t.logs_dir / "trainer").mkdir(parents=True)
    t.log_path.write_text("failed run\n")
    dest = back_up_previous_run(t, "lora")
    assert dest is not None and (dest / "training.log").exists() and not t.log_path.exists()


# ---------------------------------------------------------------- the old final is kept (faults 2, 3)


def test_retire_final_epoch_name_when_it_ends_an_epoch(tmp_path):
    t = Trial(tmp_path)
    data = _ckpt(t.checkpoint_path("lora"), 16, 4).read_bytes()
    t.state_dir("lora").mkdir()
    kept = retire_final(t, "lora", steps_per_epoch=4)
    assert kept == t.checkpoint_path("lora-000004") and kept.read_bytes() == data
    assert t.state_dir("lora-000004").is_dir() and not t.state_dir("lora").exists()
    assert not t.checkpoint_path("lora").exists()


def test_retire_final_step_name_for_a_partial_epoch(tmp_path):
    t = Trial(tmp_path)
    _ckpt(t.checkpoint_path("lora"), 22, 6)  # written before the fix: epoch 6 though only 5 were done
    assert retire_final(t, "lora", steps_per_epoch=4) == t.checkpoint_path("lora-step00000022")


def test_retire_final_reads_sd_scripts_batches_per_epoch(tmp_path):
    t = Trial(tmp_path)
    _ckpt(t.checkpoint_path("lora"), 8, 2, ss_num_batches_per_epoch="8", ss_gradient_accumulation_steps="2")
    assert retire_final(t, "lora") == t.checkpoint_path("lora-000002")


def test_retire_final_never_overwrites(tmp_path):
    t = Trial(tmp_path)
    _ckpt(t.checkpoint_path("lora"), 16, 4)
    other = _ckpt(t.checkpoint_path("lora-000004"), 16, 4, ss_seed="other").read_bytes()
    assert retire_final(t, "lora", steps_per_epoch=4) == t.checkpoint_path("lora-step00000016")
    assert t.checkpoint_path("lora-000004").read_bytes() == other
    assert retire_final(t, "lora", steps_per_epoch=4) is None  # nothing left to keep


# ---------------------------------------------------------------- lr schedule of a continuation (fault 1)


def _lrs(schedule_steps: int, resume_at: int | None, total: int, name: str) -> list[float]:
    """lr after each step of a run built as the worker builds it, optionally resumed at a step."""
    from diffusers.optimization import get_scheduler

    from trainer.builtin import state

    def fresh(length: int):
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        return opt, get_scheduler(name, opt, num_warmup_steps=3, num_training_steps=length)

    opt, sched = fresh(schedule_steps)
    out = []
    for _ in range(resume_at or total):
        opt.step()
        sched.step()
        out.append(sched.get_last_lr()[0])
    if resume_at is None:
        return out
    counters = state.Counters(step=resume_at, epoch=0, total_steps=schedule_steps, total_epochs=1, steps_per_epoch=1,
                              seed=0, output_name="x", schedule_steps=schedule_steps)
    opt2, sched2 = fresh(state.schedule_length(counters, total))
    opt2.load_state_dict(opt.state_dict())
    sched2.load_state_dict(sched.state_dict())
    state.apply_schedule(opt2, sched2)
    for _ in range(total - resume_at):
        opt2.step()
        sched2.step()
        out.append(sched2.get_last_lr()[0])
    return out


@pytest.mark.parametrize("name", ["cosine", "linear", "constant_with_warmup"])
def test_a_shorter_continuation_follows_the_original_schedule(name):
    straight = _lrs(30, None, 30, name)
    assert _lrs(30, 10, 16, name) == pytest.approx(straight[:16])  # --continue --steps 6 at step 10


def test_a_continuation_past_the_end_stretches_the_schedule():
    from trainer.builtin import state

    c = state.Counters(step=12, epoch=3, total_steps=12, total_epochs=3, steps_per_epoch=4, seed=0, output_name="x")
    assert state.schedule_length(c, 16) == 16  # linear would otherwise train at lr 0 from step 12 on
    assert state.schedule_length(c, 10) == 12
    assert state.schedule_length(None, 10) == 10
    lrs = _lrs(12, 12, 16, "linear")
    assert all(lr > 0 for lr in lrs[12:15])


# ---------------------------------------------------------------- one trainer per folder (fault 5)


def test_a_second_trainer_gets_one_clear_error_and_changes_nothing(tmp_path, capsys, demo_assets):
    from trainer.cli import main

    cfg = write_demo_config(tmp_path / "c.toml", tmp_path / "t")
    t = Trial(tmp_path / "t")
    t.root.mkdir()
    _ckpt(t.checkpoint_path("lora"), 12, 3)
    write_model(t.status_path, TrainerStatus(state="running", pid=os.getpid(), run_id="live"))
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\n"
                               "from shared.folder_lock import FolderLock, trainer_lock_path\n"
                               f"assert FolderLock(trainer_lock_path({str(t.root)!r})).acquire()\n"
                               "print('held', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parent.parent)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main(["run", "--config", str(cfg), "--new"]) == 2
        err = capsys.readouterr().err
        assert f"another trainer (pid {holder.pid})" in err and "Traceback" not in err
        assert t.checkpoint_path("lora").exists() and not t.backup_dir.exists()  # nothing moved
        assert read_model(t.status_path, TrainerStatus).run_id == "live"  # its status untouched
    finally:
        holder.kill()
        holder.wait()
    lock = FolderLock(trainer_lock_path(t.root))
    assert lock.acquire()  # the kernel dropped the dead holder's lock
    lock.release()


# ---------------------------------------------------------------- liveness and run ids (fault 7)


def _status(**kw) -> TrainerStatus:
    base = dict(state="running", pid=os.getpid(), host="here", run_id="r1", updated_at=T0)
    return TrainerStatus(**{**base, **kw})


def test_liveness_final_alive_dead_and_other_runs():
    alive = lambda pid: True  # noqa: E731
    gone = lambda pid: False  # noqa: E731
    now = T0 + timedelta(seconds=10)
    assert trainer_state(None, now) == "absent"
    assert trainer_state(_status(), now, host="here", is_alive=alive) == "alive"
    assert trainer_state(_status(), now, host="here", is_alive=gone) == "dead"  # `trainer run | head -3`
    assert trainer_state(_status(), now, host="elsewhere", is_alive=gone) == "alive"  # pid means nothing here
    late = T0 + timedelta(seconds=61)
    assert trainer_state(_status(), late, host="elsewhere", is_alive=alive) == "dead"  # heartbeat stale
    assert trainer_state(_status(state="finished"), late, host="here", is_alive=gone) == "final"
    # --exit-when-done waits for this run: the previous run's `finished` does not count
    assert trainer_state(_status(state="finished", run_id="old"), now, "r1") == "other_run"
    assert trainer_state(_status(state="finished"), now, "r1") == "final"


def test_liveness_sees_a_real_dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    st = _status(pid=proc.pid, host=None)
    from shared.liveness import pid_alive, this_host

    assert not pid_alive(proc.pid) and pid_alive(os.getpid())
    assert trainer_state(st.model_copy(update={"host": this_host()}), T0) == "dead"


def test_params_keep_a_history_across_continuations(tmp_path):
    from trainer.commands.run import _previous_params

    t = Trial(tmp_path)
    cfg = write_demo_config(tmp_path / "c.toml", tmp_path)
    from shared.config import load_config

    old = Params(trial_name="t", backend="sd-scripts", config=load_config(cfg), command=["python", "train.py"])
    write_model(t.params_path, old)
    previous = _previous_params(t)
    assert previous is not None and previous.history[0].command == ["python", "train.py"]
    assert previous.created_at == old.created_at


# ---------------------------------------------------------------- pause-trainer cannot wedge (fault 6)


def _wait_state(pid: int, want: set[str], timeout: float = 5.0) -> str:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = proc_state(pid)
        if st in want:
            return st
        time.sleep(0.02)
    return proc_state(pid)


@pytest.fixture
def sleeping_group():
    proc = subprocess.Popen(["sleep", "60"], start_new_session=True)
    yield proc
    os.killpg(proc.pid, 9)
    proc.wait()


def test_a_pause_lease_pauses_and_ends_by_itself(tmp_path, sleeping_group):
    """Fault 6: an evaluator killed with -9 while the trainer was SIGSTOPped left it in state T forever.
    Now the supervisor pauses on a lease and resumes when it runs out, with nobody removing it."""
    from shared.pause import lease, pause_request_path
    from trainer.reporting import Console, StatusFile
    from trainer.supervisor import PauseGuard

    t = Trial(tmp_path)
    now = [T0]
    status = StatusFile(t, TrainerStatus(state="running"))
    guard = PauseGuard(t, status, Console(io.StringIO()), now=lambda: now[0])
    pgid = sleeping_group.pid
    write_model(pause_request_path(t.root), lease(T0, seconds=30))  # the evaluator, then kill -9
    guard.check(pgid)
    assert _wait_state(pgid, {"T"}) == "T" and status.status.paused
    now[0] = T0 + timedelta(seconds=29)
    guard.check(pgid)
    assert proc_state(pgid) == "T"
    now[0] = T0 + timedelta(seconds=31)  # the lease ran out: nobody renewed it
    guard.check(pgid)
    assert _wait_state(pgid, {"S", "R"}) in {"S", "R"} and not status.status.paused
    write_model(pause_request_path(t.root), lease(now[0], seconds=30))
    guard.check(pgid, stopping=True)  # a stop (Ctrl-C, stop request) is never held up by a pause
    assert _wait_state(pgid, {"S", "R"}) in {"S", "R"}


def test_a_group_stopped_by_someone_else_is_resumed(tmp_path, sleeping_group):
    from trainer.reporting import Console, StatusFile
    from trainer.supervisor import PauseGuard

    clock = [0.0]
    guard = PauseGuard(Trial(tmp_path), StatusFile(Trial(tmp_path), TrainerStatus()), Console(io.StringIO()),
                       clock=lambda: clock[0])
    os.killpg(sleeping_group.pid, 19)  # SIGSTOP, as the old evaluator did before it died
    assert _wait_state(sleeping_group.pid, {"T"}) == "T"
    clock[0] = PauseGuard.RESCUE_S + 0.1
    guard.check(sleeping_group.pid)
    assert _wait_state(sleeping_group.pid, {"S", "R"}) in {"S", "R"}


def test_the_evaluator_pauses_only_a_trainer_on_its_gpu(tmp_path, monkeypatch):
    from evaluator.gpu_sharing import should_pause, trainer_paused
    from shared.pause import pause_request_path, shares_gpu

    assert shares_gpu("0", False, "0", "cuda:0") and shares_gpu(None, False, None, "cuda:1")
    assert not shares_gpu("0", False, "1", "cuda:0")  # run_pair with 2 GPUs: trainer 0, evaluator 1
    assert not shares_gpu("0,1", False, "2,3", "cuda:0") and shares_gpu("0,1", False, "2,1", "cuda:1")
    assert not shares_gpu(None, True, "0", "cuda:0") and not shares_gpu(None, False, None, "cpu")
    assert not shares_gpu("", False, "0", "cuda:0")

    live = TrainerStatus(state="running", pid=os.getpid(), gpus="0")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    assert not should_pause(live, "pause-trainer", "cuda:0")  # the config said pause-trainer; 2 GPUs
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    assert should_pause(live, "pause-trainer", "cuda:0") and not should_pause(live, "concurrent", "cuda:0")
    assert not should_pause(live.model_copy(update={"state": "finished"}), "pause-trainer", "cuda:0")

    t = Trial(tmp_path)
    write_model(t.status_path, live.model_copy(update={"paused": True}))
    with trainer_paused(t, "pause-trainer", "cuda:0", lease_s=3) as paused:
        assert paused and pause_request_path(t.root).exists()
    assert not pause_request_path(t.root).exists()


def test_trainer_done_waits_for_this_run(monkeypatch):
    from shared.liveness import trainer_done

    monkeypatch.setenv("EPOCHSCOPE_RUN_ID", "r2")
    assert not trainer_done(_status(state="finished", run_id="r1"), now=T0)  # the previous run's
    assert trainer_done(_status(state="finished", run_id="r2"), now=T0)
    assert trainer_done(_status(run_id="r2"), now=T0 + timedelta(minutes=5))  # stale: dead
    monkeypatch.delenv("EPOCHSCOPE_RUN_ID")
    assert trainer_done(_status(state="finished", run_id="r1"), now=T0)


def _evaluator_trial(tmp_path, status: TrainerStatus) -> Trial:
    from shared.config import load_config

    t = Trial(tmp_path / "t")
    t.root.mkdir(parents=True)
    cfg = write_demo_config(tmp_path / "c.toml", t.root)
    write_model(t.params_path, Params(trial_name="t", backend="builtin", config=load_config(cfg)))
    write_model(t.status_path, status)
    return t


def _watch(t: Trial, **env: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "evaluator", "watch", "--dir", str(t.root), "--device", "cpu",
                             "--exit-when-done", "--rescan-interval", "0.5"],
                            cwd=Path(__file__).resolve().parent.parent, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1", **env})


@pytest.mark.slow
def test_exit_when_done_ends_on_a_dead_trainer(tmp_path, demo_assets):
    """Fault 7: after `trainer run ... | head -3` the status said `running` forever and the evaluator
    never exited."""
    from shared.liveness import this_host

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    t = _evaluator_trial(tmp_path, TrainerStatus(state="running", pid=gone.pid, host=this_host(), run_id="r1"))
    proc = _watch(t)
    try:
        out, _ = proc.communicate(timeout=180)
    finally:
        proc.kill()
    assert proc.returncode == 0, out


@pytest.mark.slow
def test_exit_when_done_waits_for_this_run_not_the_previous(tmp_path, demo_assets):
    """Fault 7: `--exit-when-done` started just after `trainer run --continue` exited at once on the
    previous run's `finished`."""
    import time

    from shared.liveness import this_host

    t = _evaluator_trial(tmp_path, TrainerStatus(state="finished", pid=1, host=this_host(), run_id="old"))
    proc = _watch(t, EPOCHSCOPE_RUN_ID="new")
    try:
        time.sleep(20)  # models load in a few seconds; it must still wait for run "new"
        assert proc.poll() is None, proc.communicate()[0]
        write_model(t.status_path, TrainerStatus(state="finished", pid=os.getpid(), host=this_host(), run_id="new"))
        out, _ = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 0, out


def test_sigterm_during_start_up_records_stopped(tmp_path):
    """Fault 9: a SIGTERM while the trainer was starting left the status at `starting` for good. Here
    start-up is held by an sd-scripts Python that takes 60 s to answer the backend's check."""
    import signal
    import time

    scripts = tmp_path / "sd-scripts"
    scripts.mkdir()
    (scripts / "train_network.py").write_text("")
    slow_python = tmp_path / "python"
    slow_python.write_text("#!/bin/sh\nsleep 60\n")
    slow_python.chmod(0o755)
    (tmp_path / "model.safetensors").write_bytes(b"")
    cfg = write_demo_config(tmp_path / "c.toml", tmp_path / "t")
    cfg.write_text(cfg.read_text().replace('base = "demo:tiny"', f'base = "{tmp_path}/model.safetensors"')
                   .replace("[training]\n", f'[training]\nbackend = "sd-scripts"\nsd_scripts_dir = "{scripts}"\n'
                            f'sd_scripts_python = "{slow_python}"\n')
                   .replace('train_dir = "demo:dataset/train"', f'train_dir = "{tmp_path}"'))
    t = Trial(tmp_path / "t")
    proc = subprocess.Popen([sys.executable, "-m", "trainer", "run", "--config", str(cfg), "--new"],
                            cwd=Path(__file__).resolve().parent.parent, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not t.status_path.exists():
            time.sleep(0.05)
        assert read_model(t.status_path, TrainerStatus).state == "starting"
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 130, out
    st = read_model(t.status_path, TrainerStatus)
    assert st.state == "stopped" and st.exit_code == 130, st
