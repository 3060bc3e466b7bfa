"""./run_pair.sh for real: the demo end to end, Ctrl-C, and a failing trainer."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import REPO_ROOT, write_demo_config
from shared.jsonio import read_model
from shared.records import CheckpointMetrics, EvaluationState, EvaluationSummary, Params, TrainerStatus
from shared.trial import Trial

pytestmark = pytest.mark.slow


def run_pair(*args, timeout=600, **kw):
    return subprocess.Popen([str(REPO_ROOT / "run_pair.sh"), *args], cwd=REPO_ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True, **kw)


def python_processes_under(folder: Path) -> list[str]:
    out = subprocess.run(["ps", "-ww", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if str(folder) in line and "python" in line]


def test_demo_end_to_end(tmp_path):
    cfg = write_demo_config(tmp_path / "demo.toml", tmp_path / "trial_0001", epochs=3)
    start = time.monotonic()
    proc = run_pair(str(cfg))
    out, _ = proc.communicate(timeout=600)
    took = time.monotonic() - start
    assert proc.returncode == 0, out
    t = Trial(tmp_path / "trial_0001")
    summary = read_model(t.evaluation_summary_path, EvaluationSummary)
    assert sorted(summary.checkpoints) == sorted(c.stem for c in t.checkpoints("lora")) == [
        "lora", "lora-000001", "lora-000002"]
    assert t.report_path.exists() and "report.html" in out
    assert "[trainer]" in out and "[evaluator]" in out and "★" in out
    assert not python_processes_under(tmp_path)
    print(f"run_pair.sh demo took {took:.1f} s")


def test_ctrl_c_stops_both_cleanly(tmp_path):
    cfg = write_demo_config(tmp_path / "demo.toml", tmp_path / "trial_0001", epochs=40)
    t = Trial(tmp_path / "trial_0001")
    proc = run_pair(str(cfg))
    try:
        deadline = time.monotonic() + 180
        while not t.checkpoint_paths() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert t.checkpoint_paths(), "no checkpoint appeared"
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, out
    time.sleep(0.5)
    assert not python_processes_under(tmp_path), "processes left running"
    assert read_model(t.status_path, TrainerStatus).state == "stopped"
    for path in t.root.rglob("*.json"):
        model = {"params.json": Params, "trainer_status.json": TrainerStatus, "metrics.json": CheckpointMetrics,
                 "evaluation_state.json": EvaluationState, "evaluation_summary.json": EvaluationSummary}.get(path.name)
        if model:
            read_model(path, model)  # raises on any half-written file
        else:
            json.loads(path.read_text())


def test_failing_trainer_fails_the_pair(tmp_path):
    cfg = write_demo_config(tmp_path / "demo.toml", tmp_path / "trial_0001")
    cfg.write_text(cfg.read_text().replace('train_dir = "demo:dataset/train"', f'train_dir = "{tmp_path}/nothing"'))
    proc = run_pair(str(cfg))
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 2, out
    assert "does not exist" in out and "[trainer]" in out
    assert not python_processes_under(tmp_path)
