"""One bad file never stops the evaluator, and every scored version keeps its results (issue 15).

Real trainer checkpoints, real evaluator processes; faults are planted in files (a LoRA whose shapes do
not fit, a process killed with SIGKILL while it scores a file, bytes put back) or, for containment of
an arbitrary exception, in the scoring function of an in-process daemon."""

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
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from conftest import REPO_ROOT, copy_trial, fill_disk, run_cli
from shared.jsonio import read_model
from shared.records import EvaluationState, EvaluationSummary, TrainerStatus
from shared.trial import Trial

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
FAST = ("--device", "cpu", "--num-samples", "2", "--steps", "2")


def _state(t: Trial) -> EvaluationState:
    try:
        return read_model(t.evaluation_state_path, EvaluationState)
    except Exception:  # noqa: BLE001 - not written yet
        return EvaluationState()


def _summary(t: Trial) -> EvaluationSummary:
    return read_model(t.evaluation_summary_path, EvaluationSummary)


def _wait(cond, timeout=180, what="condition", step=0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(step)
    raise AssertionError(f"timed out waiting for {what}")


def _rewrite(src: Path, dest: Path, **metadata: str) -> Path:
    """A copy of ``src`` with some ss_* metadata changed: other bytes, same weights."""
    with safe_open(str(src), "pt") as f:
        meta = dict(f.metadata() or {})
    meta.update(metadata)
    save_file(load_file(str(src)), str(dest), metadata=meta)
    return dest


def _finished(t: Trial) -> None:
    st = read_model(t.status_path, TrainerStatus)
    st.state = "finished"
    t.status_path.write_text(st.model_dump_json())


def _watch(root: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "evaluator", "watch", "--dir", str(root), *FAST,
                             "--rescan-interval", "0.3", *extra], cwd=REPO_ROOT, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_a_lora_whose_shapes_do_not_fit_is_recorded_failed_and_the_rest_scored(tmp_path, trained_trial):
    t = copy_trial(trained_trial, tmp_path / "trial_0001")
    state = load_file(str(t.checkpoint_path("lora-000001")))
    key = next(k for k in state if k.endswith("proj_in.lora_down.weight"))
    state[key] = torch.zeros(state[key].shape[0], state[key].shape[1] + 3)  # trained for another width
    with safe_open(str(t.checkpoint_path("lora-000001")), "pt") as f:
        meta = dict(f.metadata())
    save_file(state, str(t.checkpoint_path("lora-000003")), metadata={**meta, "ss_epoch": "1", "ss_steps": "1"})
    out = run_cli("evaluator", "run", "--dir", str(t.root), *FAST)
    st = _state(t)
    by_name = {e.name: e for e in st.entries.values()}
    assert by_name["lora-000003"].status == "failed"
    assert "lora-000003.safetensors" in by_name["lora-000003"].error and "proj_in" in by_name["lora-000003"].error
    assert all(by_name[n].status == "done" for n in ("baseline", "lora-000001", "lora-000002", "lora"))
    summary = _summary(t)
    assert set(summary.checkpoints) == {"lora-000001", "lora-000002", "lora"}
    assert "lora-000003.safetensors" in summary.failed["lora-000003"]
    assert "internal error" not in out.stderr


def test_any_exception_while_scoring_is_that_versions_failure(tmp_path, trained_trial, monkeypatch):
    from evaluator import daemon as daemon_module
    from evaluator.daemon import Daemon, Options
    from evaluator.settings import Overrides

    t = copy_trial(trained_trial, tmp_path / "trial_0001")
    real_score = daemon_module.score

    def flaky(models, ctx, name, *args, **kw):
        if name == "lora-000002":
            raise ValueError("a metric blew up")
        return real_score(models, ctx, name, *args, **kw)

    monkeypatch.setattr(daemon_module, "score", flaky)
    assert Daemon(t.root, Options(device="cpu", once=True, overrides=Overrides(num_samples=2, steps=2))).run() == 0
    by_name = {e.name: e for e in _state(t).entries.values()}
    assert by_name["lora-000002"].status == "failed"
    assert by_name["lora-000002"].error == "lora-000002.safetensors: ValueError: a metric blew up"
    assert by_name["lora"].status == "done" and by_name["lora-000001"].status == "done"


def test_a_checkpoint_that_crashes_the_evaluator_is_quarantined_and_the_rest_scored(tmp_path, trained_trial):
    t = copy_trial(trained_trial, tmp_path / "trial_0001")
    _finished(t)
    poison = _rewrite(t.checkpoint_path("lora-000001"), t.checkpoint_path("lora-000000"), ss_epoch="0", ss_steps="1")
    kills = 0

    def poison_running() -> bool:  # a new attempt, not the state file a killed process left behind
        return any(e.name == "lora-000000" and e.status == "running" and e.attempts > kills
                   for e in _state(t).entries.values())

    for _ in range(3):
        proc = _watch(t.root, "--exit-when-done")
        try:
            _wait(lambda: proc.poll() is not None or poison_running(), what="the poison")
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)  # the process dies while scoring it, as a crash would
                kills += 1
                proc.wait(timeout=30)
            else:
                break
        finally:
            proc.kill()
            out = proc.communicate()[0]
    assert kills == 2, f"expected two crashes before quarantine, got {kills}\n{out}"
    assert "crashed the evaluator 2 times" in out
    st, summary = _state(t), _summary(t)
    files = sorted(p.name for p in t.checkpoint_paths())
    entries = {e.name: e for e in st.entries.values()}
    rows = set(summary.checkpoints) | set(summary.failed)
    print(f"crash loop: {len(files)} files, {len(st.entries)} state entries, {len(summary.checkpoints)} summary rows "
          f"+ {len(summary.failed)} failed, attempts {sorted((e.name, e.attempts) for e in st.entries.values())}")
    assert entries["lora-000000"].status == "failed" and entries["lora-000000"].attempts == 2
    assert all(entries[n].status == "done" and entries[n].attempts == 1 for n in ("lora-000001", "lora-000002", "lora"))
    assert len(st.entries) == len(files) + 1  # one entry per version, plus the baseline: no duplicates
    assert rows == {p[:-len(".safetensors")] for p in files}
    assert "crashed the evaluator" in summary.failed["lora-000000"] and poison.name in summary.failed["lora-000000"]
    assert not list(t.evaluations_dir.rglob(".*.tmp"))


def test_putting_back_earlier_bytes_points_the_summary_at_their_results(tmp_path, trained_trial):
    from evaluator.ledger import fingerprint

    t = copy_trial(trained_trial, tmp_path / "trial_0001")
    original = tmp_path / "original.safetensors"
    shutil.copy2(t.checkpoint_path("lora"), original)
    run_cli("evaluator", "run", "--dir", str(t.root), *FAST)
    first = _summary(t).checkpoints["lora"]
    _rewrite(t.checkpoint_path("lora-000002"), t.checkpoint_path("lora"), ss_epoch="3", ss_steps="12",
             ss_training_comment="retrained")
    run_cli("evaluator", "run", "--dir", str(t.root), *FAST)
    second = _summary(t).checkpoints["lora"]
    assert second.fingerprint != first.fingerprint
    shutil.copy2(original, t.checkpoint_path("lora"))  # the user puts the earlier file back
    run_cli("evaluator", "run", "--dir", str(t.root), *FAST)
    summary = _summary(t)
    now = summary.checkpoints["lora"]
    on_disk = fingerprint(t.checkpoint_path("lora")).short
    assert now.fingerprint == on_disk == first.fingerprint and now.results_dir == first.results_dir
    assert [(h.checkpoint, h.fingerprint) for h in summary.history] == [("lora", second.fingerprint)]
    metrics = json.loads((t.results_dir(now.results_dir, "lora") / "metrics.json").read_text())
    assert metrics["fingerprint"]["sha256"].startswith(on_disk)
    lora_entries = [e for e in _state(t).entries.values() if e.name == "lora"]
    assert len(lora_entries) == 2 and all(e.attempts == 1 for e in lora_entries), "a version was scored twice"
    assert (t.results_dir(second.results_dir, "lora") / "metrics.json").exists(), "history lost its results"


def test_a_sweep_root_evaluator_takes_over_a_trial_when_its_evaluator_exits(tmp_path, trained_trial):
    root = tmp_path / "sweep"
    t1 = copy_trial(trained_trial, root / "trial_0001")
    t2 = copy_trial(trained_trial, root / "trial_0002")
    first = _watch(t1.root)
    try:
        _wait(lambda: any(e.status == "running" for e in _state(t1).entries.values()), what="the first evaluator")
        second = _watch(root)
        try:
            _wait(lambda: _state(t2).entries and all(e.status == "done" for e in _state(t2).entries.values())
                  and len(_state(t2).entries) == 4, what="the root evaluator to score trial_0002")
            first.send_signal(signal.SIGINT)
            first.wait(timeout=120)
            _wait(lambda: len([e for e in _state(t1).entries.values() if e.status == "done"]) == 4,
                  what="the root evaluator to take trial_0001 over")
            _rewrite(t1.checkpoint_path("lora-000002"), t1.checkpoint_path("lora-000003"), ss_epoch="3", ss_steps="12")
            _wait(lambda: any(e.name == "lora-000003" and e.status == "done" for e in _state(t1).entries.values()),
                  timeout=60, what="a checkpoint added after the takeover to be scored")
        finally:
            second.send_signal(signal.SIGINT)
            out = second.communicate(timeout=120)[0]
    finally:
        first.kill()
        first.communicate()
    assert "taking it over when that one stops" in out and "serving it now" in out


def test_run_mode_says_corrupt_or_incomplete_and_removes_leftover_temp_files(tmp_path, trained_trial):
    t = copy_trial(trained_trial, tmp_path / "trial_0001")
    data = t.checkpoint_path("lora-000001").read_bytes()
    t.checkpoint_path("lora-000005").write_bytes(data[: len(data) // 2])
    t.checkpoint_path("lora-000006").write_bytes(b"\x18\x00\x00\x00\x00\x00\x00\x00{this is not json}      ")
    leftover = t.evaluations_dir / "lora-000001@0123456789ab" / ".sample_01.png.k2j3h4.tmp"
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(b"half a png")
    out = run_cli("evaluator", "run", "--dir", str(t.root), *FAST)
    assert "lora-000005.safetensors is incomplete" in out.stderr
    assert "lora-000006.safetensors is corrupt" in out.stderr
    assert not leftover.exists()


class _PipelineWithLittleMemory:
    """The real demo pipeline behind a GPU that holds ``fits`` images a batch: a bigger batch raises CUDA's
    out-of-memory error, as a real card would (no GPU here to run out of)."""

    def __init__(self, pipe, fits: int):
        self._pipe, self.fits, self.batches = pipe, fits, []

    def __getattr__(self, name):
        return getattr(self._pipe, name)

    def __call__(self, **kw):
        n = len(kw["generator"])
        self.batches.append(n)
        if n > self.fits:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (planted)")
        return self._pipe(**kw)


def test_after_an_out_of_memory_the_batch_size_that_fitted_is_kept_and_images_do_not_change(demo_assets, caplog):
    from evaluator.pipeline import GenerationSettings, generate, load_pipeline, set_scheduler

    pipe = load_pipeline("demo:tiny", "cpu", torch.float32)
    set_scheduler(pipe, "ddim")
    gen = GenerationSettings.uniform(["a red circle on a blue background, sks style"] * 8, list(range(8)), "", 2, 5.0, 64)
    reference, _ = generate(pipe, gen)
    small = _PipelineWithLittleMemory(pipe, fits=3)
    first, _ = generate(small, gen)
    assert small.batches == [8, 4, 2, 2, 2, 2]  # halved until it fitted, then kept for the rest
    assert "out of GPU memory with 8 images a batch: 4 from now on" in caplog.text
    small.batches.clear()
    second, _ = generate(small, gen)  # the next checkpoint starts at the size that fitted
    assert small.batches == [2, 2, 2, 2]
    for a, b, c in zip(reference, first, second):
        np.testing.assert_allclose(a, b, atol=1e-5)  # each sample's noise is its own: same image in any batch
        np.testing.assert_allclose(a, c, atol=1e-5)


def test_a_full_disk_is_waited_out_never_recorded_as_a_failure(small_disk, trained_trial):
    """A disk that fills up while the evaluator writes (samples, the ledger) is the machine's state, not the
    checkpoints' fault. Before: `evaluator run` said "internal error", the daemon died, and a version whose
    files could not be written was recorded failed for good. Now `evaluator run` stops with one clear line
    (exit 2, nothing recorded failed) and the daemon keeps running, waits, and once there is room scores
    everything; every version ends done, none failed."""
    t = copy_trial(trained_trial, small_disk / "trial")
    _finished(t)
    filler = fill_disk(small_disk, leave_kb=48)  # room for a few files, not for everything
    once = run_cli("evaluator", "run", "--dir", str(t.root), *FAST, check=False)
    assert once.returncode == 2, once.stdout + once.stderr
    assert "no space left on device" in once.stderr and "free some space" in once.stderr, once.stderr
    assert "internal error" not in once.stderr
    assert not [e for e in _state(t).entries.values() if e.status == "failed"]

    log = small_disk.parent / "watch.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "evaluator", "watch", "--dir", str(t.root), *FAST,
                                 "--exit-when-done"], cwd=REPO_ROOT, env=ENV, stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait(lambda: "no space left on device" in log.read_text(), 120, "the daemon to find the disk full")
        time.sleep(1.0)
        assert proc.poll() is None, log.read_text()
        filler.unlink()
        assert proc.wait(timeout=180) == 0, log.read_text()
    finally:
        proc.kill()
    state = _state(t)
    assert state.entries and all(e.status == "done" for e in state.entries.values()), state
    summary = _summary(t)
    assert {c.stem for c in t.checkpoints()} <= set(summary.checkpoints), sorted(summary.checkpoints)
    assert all(e.metrics.failure_rate == 0.0 for e in summary.checkpoints.values())
    assert "there is space on disk again" in log.read_text()
