"""The evaluator daemon for real: real checkpoints from the real trainer, real processes, real files."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPO_ROOT, copy_trial, run_cli
from shared.jsonio import read_model, write_model
from shared.records import EvaluationState, EvaluationSummary, StopRequest, TrainerStatus
from shared.trial import SweepRoot, Trial

pytestmark = pytest.mark.slow


def _watch(trial_dir, *extra):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "evaluator", "watch", "--dir", str(trial_dir), "--device", "cpu",
                             "--rescan-interval", "0.5", *extra], cwd=REPO_ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _state(t: Trial) -> EvaluationState:
    return read_model(t.evaluation_state_path, EvaluationState) if t.evaluation_state_path.exists() else EvaluationState()


def _wait(cond, timeout=120, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _set_state(t: Trial, state: str) -> None:
    """Stand in for the trainer's status (the daemon only reads this file): a live trainer is this test
    process, with a heartbeat far enough ahead that a slow machine does not see it go stale."""
    from datetime import datetime, timedelta, timezone

    from shared.liveness import this_host

    st = read_model(t.status_path, TrainerStatus)
    st.state, st.pid, st.host = state, os.getpid(), this_host()
    st.updated_at = datetime.now(timezone.utc) + timedelta(minutes=30)
    write_model(t.status_path, st)


def _finish(t: Trial) -> None:
    _set_state(t, "finished")


def test_chunked_checkpoint_is_not_scored_before_its_last_byte(tmp_path, trained_trial):
    t = copy_trial(trained_trial, tmp_path / "trial_0001")
    _set_state(t, "running")
    data = t.checkpoint_path("lora-000002").read_bytes()
    t.checkpoint_path("lora-000002").unlink()
    proc = _watch(t.root, "--exit-when-done")
    try:
        _wait(lambda: any(e.name == "lora" and e.status == "done" for e in _state(t).entries.values()),
              what="the complete checkpoints to be scored")
        target = t.checkpoint_path("lora-000002")
        chunk = len(data) // 6 + 1
        with open(target, "wb") as f:  # sd-scripts writes in place, like this
            for i in range(0, len(data), chunk):
                f.write(data[i:i + chunk])
                f.flush()
                time.sleep(0.4)
                if i + chunk < len(data):
                    assert not any(e.name == "lora-000002" for e in _state(t).entries.values()), \
                        "scored before its last byte"
        _finish(t)
        out, _ = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 0, out
    entries = [e for e in _state(t).entries.values() if e.name == "lora-000002"]
    assert len(entries) == 1 and entries[0].status == "done" and entries[0].fingerprint.size == len(data)


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads a process's CPU time from /proc (Linux)")
def test_an_idle_daemon_sleeps_and_still_sees_a_new_checkpoint(tmp_path, trained_trial):
    """Its scan opens every checkpoint to read the header; those opens must not wake it again (they did, and
    an idle daemon took a whole core from the trainer beside it)."""
    t = copy_trial(trained_trial, tmp_path / "trial_0001")
    _set_state(t, "running")
    proc = _watch(t.root)
    try:
        _wait(lambda: sum(e.status == "done" for e in _state(t).entries.values()) == 4, what="everything scored")
        time.sleep(1.0)  # the background writer's last files
        before = _cpu_seconds(proc.pid)
        time.sleep(4.0)
        idle = _cpu_seconds(proc.pid) - before
        assert idle < 0.8, f"an idle daemon used {idle:.2f} s of CPU in 4 s"
        tmp = t.root / ".copy.tmp"  # written aside, renamed into place: one "moved" event
        shutil.copy2(t.checkpoint_path("lora"), tmp)
        os.replace(tmp, t.checkpoint_path("lora-000009"))  # the same bytes: recorded under the new name
        _wait(lambda: any(e.name == "lora-000009" for e in _state(t).entries.values()), timeout=60,
              what="the new checkpoint to be picked up")
    finally:
        proc.kill()
        proc.wait(timeout=30)


def test_kill_9_mid_evaluation_then_restart_scores_each_exactly_once(tmp_path, trained_trial):
    t = copy_trial(trained_trial, tmp_path / "trial_0001")
    proc = _watch(t.root, "--steps", "20", "--num-samples", "6")
    try:
        _wait(lambda: any(e.status == "running" and e.name != "baseline" for e in _state(t).entries.values()),
              what="an evaluation in progress")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    killed_during = [e.name for e in _state(t).entries.values() if e.status == "running"]
    assert killed_during
    done_before = {k: e.attempts for k, e in _state(t).entries.items() if e.status == "done"}
    out = run_cli("evaluator", "watch", "--dir", str(t.root), "--device", "cpu", "--exit-when-done",
                  "--rescan-interval", "0.5", "--steps", "20", "--num-samples", "6")
    state = _state(t)
    summary = read_model(t.evaluation_summary_path, EvaluationSummary)
    names = [c.stem for c in t.checkpoints("lora")]
    assert sorted(summary.checkpoints) == sorted(names) and summary.baseline is not None
    assert all(e.status == "done" for e in state.entries.values())
    assert len(state.entries) == len(names) + 1  # one per version, plus the baseline
    for key, attempts in done_before.items():
        assert state.entries[key].attempts == attempts, f"{key} was scored twice"
    assert all(state.entries[k].attempts == 2 for k, e in state.entries.items() if e.name in killed_during)
    assert "scoring it again" in out.stderr + out.stdout
    for name in names:
        assert (t.results_dir(summary.checkpoints[name].results_dir, name) / "metrics.json").exists()
    assert not list(t.evaluations_dir.rglob(".*.tmp")), "a killed writer's temporary files stay behind"


def test_corrupt_file_fails_others_scored_and_rewrite_keeps_history(tmp_path, trained_trial):
    t = copy_trial(trained_trial, tmp_path / "trial_0001")
    _set_state(t, "running")
    (t.root / "lora-000009.safetensors").write_bytes(b"\x18\x00\x00\x00\x00\x00\x00\x00{this is not json}      ")
    (t.root / "lora-000010.ckpt").write_bytes(b"pickle would run code")
    proc = _watch(t.root, "--incomplete-timeout", "1", "--exit-when-done")
    try:
        _wait(lambda: {e.name for e in _state(t).entries.values() if e.status == "done"} >= {"lora", "lora-000001",
                                                                                            "lora-000002"},
              what="the good checkpoints")
        _wait(lambda: any(e.name == "lora-000009" and e.status == "failed" for e in _state(t).entries.values()),
              what="the corrupt file to be recorded failed")
        first = next(e for e in _state(t).entries.values() if e.name == "lora" and e.status == "done")
        tmp = t.root / ".lora.rewrite.tmp"
        shutil.copy2(t.checkpoint_path("lora-000001"), tmp)
        os.replace(tmp, t.checkpoint_path("lora"))  # last.safetensors-style rewrite
        _wait(lambda: sum(e.name == "lora" and e.status == "done" for e in _state(t).entries.values()) == 2,
              what="the rewritten file to be recorded")
        _finish(t)
        out, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    summary = read_model(t.evaluation_summary_path, EvaluationSummary)
    assert summary.checkpoints["lora"].fingerprint != first.fingerprint.short
    # The new bytes are lora-000001's: recorded against its results, not scored again; the old row is history.
    assert summary.checkpoints["lora"].results_dir == summary.checkpoints["lora-000001"].results_dir
    new = next(e for e in _state(t).entries.values() if e.name == "lora" and e.key != first.key)
    assert new.attempts == 0
    assert [(h.checkpoint, h.fingerprint) for h in summary.history] == [("lora", first.fingerprint.short)]
    assert "lora-000009" in summary.failed and "corrupt" in summary.failed["lora-000009"]
    assert "pickle format" in out


def test_sweep_root_with_two_trials_is_served_by_one_process(tmp_path, trained_trial):
    root = SweepRoot(tmp_path / "sweep")
    for n in (1, 2):
        copy_trial(trained_trial, root.trial(n).root)
    out = run_cli("evaluator", "run", "--dir", str(root.root), "--device", "cpu")
    log = out.stderr + out.stdout
    assert log.count("loaded demo:tiny") == 1, log
    for trial in root.trials():
        summary = read_model(trial.evaluation_summary_path, EvaluationSummary)
        assert len(summary.checkpoints) == 3 and summary.best is not None


def test_second_evaluator_on_the_same_trial_is_refused(tmp_path, trained_trial):
    t = copy_trial(trained_trial, tmp_path / "trial_0001")
    proc = _watch(t.root)
    try:
        _wait(lambda: t.evaluator_lock_path.exists() and t.evaluator_lock_path.read_text().strip(), what="the lock")
        out = run_cli("evaluator", "run", "--dir", str(t.root), "--device", "cpu", check=False)
        assert out.returncode == 2 and "already serving" in out.stderr
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)


def test_early_stop_writes_one_stop_request(tmp_path, trained_trial):
    t = copy_trial(trained_trial, tmp_path / "trial_0001")
    params = json.loads(t.params_path.read_text())
    params["config"]["evaluation"]["early_stop"] = {"enabled": True, "patience": 1, "min_delta": 0.5,
                                                    "min_checkpoints": 2}
    t.params_path.write_text(json.dumps(params))
    _set_state(t, "running")
    run_cli("evaluator", "run", "--dir", str(t.root), "--device", "cpu")
    req = read_model(t.stop_request_path, StopRequest)
    assert req.reason == "early_stop" and req.requested_by == "evaluator" and req.best_checkpoint == "lora-000001"
    stamp = t.stop_request_path.stat().st_mtime_ns
    run_cli("evaluator", "run", "--dir", str(t.root), "--device", "cpu", "--force")
    assert t.stop_request_path.stat().st_mtime_ns == stamp, "stop request written twice"


def test_merge_swap_equals_fresh_pipeline_and_restores_base(trained_trial, demo_assets):
    from diffusers import StableDiffusionPipeline

    from evaluator.lora_swap import LoraSwapper
    from evaluator.pipeline import GenerationSettings, generate, load_pipeline, set_scheduler

    gen = GenerationSettings.uniform(["a red circle"] * 2, [1, 2], "", 4, 5.0, 64, None)
    pipe = load_pipeline("demo:tiny", "cpu", torch.float32)
    set_scheduler(pipe, "ddim")
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    swapper = LoraSwapper(pipe.unet, pipe.text_encoder)
    fresh = StableDiffusionPipeline.from_pretrained(demo_assets.pipeline_dir, local_files_only=True)
    fresh.set_progress_bar_config(disable=True)
    set_scheduler(fresh, "ddim")
    for ckpt in trained_trial.checkpoints("lora"):
        with swapper.applied(ckpt.path) as n:
            merged, _ = generate(pipe, gen)
        assert n > 0
        fresh.load_lora_weights(str(ckpt.path.parent), weight_name=ckpt.path.name, adapter_name="x")
        reference, _ = generate(fresh, gen)
        fresh.delete_adapters("x")
        assert np.abs(np.array(merged) - np.array(reference)).max() < 1e-4
        assert all(torch.equal(before[k], v) for k, v in pipe.unet.state_dict().items()), "base not restored"


def test_lora_for_another_architecture_is_refused(tmp_path, demo_assets):
    from safetensors.torch import save_file

    from evaluator.lora_swap import LoraSwapper
    from evaluator.pipeline import load_pipeline
    from shared.errors import CheckpointError

    pipe = load_pipeline("demo:tiny", "cpu", torch.float32)
    path = tmp_path / "sdxl.safetensors"
    save_file({"lora_unet_input_blocks_4_1_proj_in.lora_down.weight": torch.zeros(4, 8),
               "lora_unet_input_blocks_4_1_proj_in.lora_up.weight": torch.zeros(8, 4)}, str(path))
    with pytest.raises(CheckpointError, match="an SDXL LoRA on an SD 1.x base"):
        with LoraSwapper(pipe.unet, pipe.text_encoder).applied(path):
            pass


def test_choose_best_and_early_stop_rule():
    from evaluator.summary import choose_best, early_stop
    from shared.records import Metrics, SummaryEntry

    entries = [SummaryEntry(checkpoint=f"c{i}", epoch=i, metrics=Metrics(score=s)) for i, s in
               enumerate([0.2, 0.5, 0.5, 0.3], 1)]
    best = choose_best(entries, "rule")
    assert best.checkpoint == "c2" and best.score == 0.5  # ties go to the earlier one
    scores = [(e.checkpoint, e.metrics.score) for e in entries]
    assert early_stop(scores, patience=2, min_delta=0.0, min_checkpoints=2).stop
    assert early_stop(scores, patience=2, min_delta=0.0, min_checkpoints=2).best == "c2"
    assert not early_stop(scores[:3], patience=2, min_delta=0.0, min_checkpoints=2).stop
    assert not early_stop([("a", 0.1), ("b", 0.2), ("c", 0.3)], patience=1, min_delta=0.0, min_checkpoints=2).stop


def test_folders_made_again_at_one_path_raise_no_watchdog_warnings_and_checkpoints_still_wake(tmp_path):
    """watchdog's inotify observer warns ("Callback with id ... already exists for watch <...>. It will be
    Overwritten", a screenful each) when a folder is made again at a path whose old watch it has not dropped,
    as the evaluator's temporary results folders are; the watch is replaced, so the daemon hides the warning."""
    import threading
    import warnings

    from evaluator.detect import start_observer

    wake = threading.Event()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        observer = start_observer(tmp_path, wake, polling=False)
        try:
            for _ in range(300):
                d = tmp_path / ".results.tmp"
                (d / "sub").mkdir(parents=True)
                (d / "sub" / "sample_00.png").write_bytes(b"png")
                shutil.rmtree(d)
            time.sleep(0.5)
            wake.clear()
            (tmp_path / "lora-000001.safetensors").write_bytes(b"x")
            assert wake.wait(10), "a new checkpoint no longer wakes the daemon"
        finally:
            observer.stop()
            observer.join()
    assert not [w for w in caught if "already exists" in str(w.message)], [str(w.message)[:120] for w in caught]
