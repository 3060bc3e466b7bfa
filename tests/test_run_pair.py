"""./run_pair.sh for real (real trainer, real evaluator): the repo's demo end to end, Ctrl-C and resume,
and a failing trainer."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from _report_helpers import REPO_ROOT
from conftest import as_a_terminal_starts_it, write_demo_config
from shared.jsonio import read_model
from shared.records import (CheckpointMetrics, EvaluationState, EvaluationSummary, Params, StopRequest,
                            TrainerStatus)
from shared.trial import Trial

pytestmark = pytest.mark.slow
MODELS = {"params.json": Params, "trainer_status.json": TrainerStatus, "metrics.json": CheckpointMetrics,
          "evaluation_state.json": EvaluationState, "evaluation_summary.json": EvaluationSummary,
          "stop_request.json": StopRequest}


def run_pair(*args: str, cwd: Path = REPO_ROOT) -> subprocess.Popen:
    """run_pair.sh in its own session, as a terminal would run it (Ctrl-C goes to its process group)."""
    return subprocess.Popen([str(REPO_ROOT / "run_pair.sh"), *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            preexec_fn=as_a_terminal_starts_it)


def processes_of(folder: Path) -> list[str]:
    """Every process whose command line names the folder: the trainer, its worker, the evaluator."""
    out = subprocess.run(["ps", "-ww", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if str(folder) in line and "ps -ww" not in line]


def demo_config_into(folder: Path) -> Path:
    """The repo's configs/demo.toml, unchanged except that its trial folder is under ``folder``."""
    text = (REPO_ROOT / "configs" / "demo.toml").read_text()
    assert 'dir = "../runs/demo/trial_0001"' in text
    cfg = folder / "demo.toml"
    cfg.write_text(text.replace('dir = "../runs/demo/trial_0001"', f'dir = "{folder}/trial_0001"'))
    return cfg


def assert_every_json_valid(trial: Trial) -> None:
    for path in trial.root.rglob("*.json"):
        model = MODELS.get(path.name)
        read_model(path, model) if model else json.loads(path.read_text())  # raises on a half-written file


def assert_scored_once_each(trial: Trial, output_name: str) -> EvaluationSummary:
    """Every complete checkpoint is in the summary, and the ledger holds one finished entry per checkpoint."""
    summary = read_model(trial.evaluation_summary_path, EvaluationSummary)
    on_disk = sorted(c.stem for c in trial.checkpoints(output_name))
    assert on_disk and sorted(summary.checkpoints) == on_disk
    state = read_model(trial.evaluation_state_path, EvaluationState)
    done = sorted(e.name for e in state.entries.values() if e.status == "done" and e.name != "baseline")
    assert done == on_disk, "a checkpoint was scored twice or not at all"
    return summary


def after_first_checkpoint(proc: subprocess.Popen, trial: Trial, act: Callable[[], None]) -> str:
    """Wait (bounded) for the run's first complete checkpoint, then act; run_pair's whole output."""
    try:
        deadline = time.monotonic() + 240
        while not trial.checkpoints("lora") and time.monotonic() < deadline:
            time.sleep(0.2)
        assert trial.checkpoints("lora"), "no checkpoint appeared"
        act()
        out, _ = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return out


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """One full ./run_pair.sh on the repo's demo config, shared by the assertions below."""
    folder = tmp_path_factory.mktemp("demo")
    cfg = demo_config_into(folder)
    start = time.monotonic()
    proc = run_pair(str(cfg))
    out, _ = proc.communicate(timeout=600)
    took = time.monotonic() - start
    print(f"\n./run_pair.sh on configs/demo.toml took {took:.1f} s")
    return proc.returncode, out, Trial(folder / "trial_0001"), folder


def test_demo_finishes_and_scores_every_checkpoint(demo_run):
    rc, out, trial, _ = demo_run
    assert rc == 0, out
    assert read_model(trial.status_path, TrainerStatus).state == "finished"
    summary = assert_scored_once_each(trial, "demo_lora")
    assert len(summary.checkpoints) == 4


def test_demo_prints_prefixed_lines_the_summary_table_and_the_report_path(demo_run):
    rc, out, trial, _ = demo_run
    lines = out.splitlines()
    assert any(line.startswith("[trainer] ") for line in lines) and any(line.startswith("[evaluator] ") for line in lines)
    assert all(line.startswith(("[trainer] ", "[evaluator] ", "run_pair: ")) for line in lines[:lines.index("")])
    table = lines[lines.index(""):]
    for stem in ("baseline", "demo_lora-000001", "demo_lora-000002", "demo_lora-000003", "demo_lora"):
        assert any(f"│ {stem} " in row for row in table), stem
    summary = read_model(trial.evaluation_summary_path, EvaluationSummary)
    starred = [row for row in table if "★" in row]
    assert len(starred) == 1 and f"│ {summary.best.checkpoint} " in starred[0]
    assert lines[-1] == f"run_pair: report: {trial.report_path}" and trial.report_path.is_file()


def test_demo_leaves_nothing_running(demo_run):
    _, _, _, folder = demo_run
    assert not processes_of(folder)


def test_ctrl_c_stops_both_cleanly_and_continue_finishes_the_run(tmp_path):
    cfg = write_demo_config(tmp_path / "demo.toml", tmp_path / "trial_0001", epochs=40)
    t = Trial(tmp_path / "trial_0001")
    proc = run_pair(str(cfg))
    # What a terminal's Ctrl-C does: SIGINT to the whole foreground process group.
    out = after_first_checkpoint(proc, t, lambda: os.killpg(proc.pid, signal.SIGINT))
    assert proc.returncode == 130, out
    assert "run_pair: stopping" in out and "run_pair: stopped; to go on where it stopped: " in out
    assert not processes_of(tmp_path), "processes left running"
    status = read_model(t.status_path, TrainerStatus)
    assert status.state == "stopped" and status.epoch < 40
    assert_every_json_valid(t)

    # Resume: one more epoch; the evaluator scores what it had not scored yet and nothing twice.
    proc = run_pair(str(cfg), "--continue", "--epochs", "1")
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    assert read_model(t.status_path, TrainerStatus).state == "finished"
    assert_scored_once_each(t, "lora")
    assert_every_json_valid(t)
    assert not processes_of(tmp_path)


def test_a_failing_trainer_fails_the_pair_with_its_message(tmp_path):
    cfg = write_demo_config(tmp_path / "demo.toml", tmp_path / "trial_0001")
    cfg.write_text(cfg.read_text().replace('train_dir = "demo:dataset/train"', f'train_dir = "{tmp_path}/nothing"'))
    proc = run_pair(str(cfg))
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 2, out
    message = [line for line in out.splitlines() if line.startswith("[trainer] ") and "nothing" in line]
    assert message and "does not exist" in message[0], out
    assert "Traceback" not in out and "run_pair: trainer exited with status 2" in out
    assert not processes_of(tmp_path), "the evaluator (or the trainer) is still running"
    assert read_model(Trial(tmp_path / "trial_0001").status_path, TrainerStatus).state == "failed"


def test_the_evaluator_exits_when_the_trainer_fails_mid_run(tmp_path):
    """Training dies after the evaluator started (its worker killed, as the OOM killer would): the trainer
    records failed, the evaluator sees the final status and exits, and run_pair exits non-zero."""
    cfg = write_demo_config(tmp_path / "demo.toml", tmp_path / "trial_0001", epochs=40)
    t = Trial(tmp_path / "trial_0001")
    proc = run_pair(str(cfg))

    def kill_the_training_work() -> None:
        assert any("evaluator watch" in line for line in processes_of(tmp_path)), "evaluator not started"
        os.killpg(read_model(t.status_path, TrainerStatus).pgid, signal.SIGKILL)  # not the supervisor

    out = after_first_checkpoint(proc, t, kill_the_training_work)
    assert proc.returncode != 0, out
    assert not processes_of(tmp_path), "processes left running"
    assert read_model(t.status_path, TrainerStatus).state == "failed"


def test_a_finished_sweep_returns_its_own_status(tmp_path):
    """Issue 11, fault 8: after a successful sweep run_pair exited 130 or 137, because it stopped the root
    evaluator itself (SIGINT, then SIGKILL 5 s later) and passed that code on."""
    proc = run_pair("--sweep", str(REPO_ROOT / "configs" / "demo-sweep.toml"), "--root", str(tmp_path / "sweep"),
                    "--n-trials", "1")
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, out
    assert "killing it" not in out and "did not exit by itself" not in out, out
    assert not processes_of(tmp_path), "processes left running"
