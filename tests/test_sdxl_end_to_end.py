"""SDXL end to end: ./run_pair.sh on the repo's configs/demo-sdxl.toml (the real built-in trainer on the tiny
SDXL model, UNet and both text encoders, and the real evaluator with SDXL's pipeline), then --continue for
one more epoch. Every checkpoint is scored once with every key applied (the evaluator refuses a file with
a key it cannot apply), with finite metrics, its samples and the summary."""

from __future__ import annotations

import math
import time

import pytest

from _report_helpers import REPO_ROOT
from shared.jsonio import read_model
from shared.records import CheckpointMetrics, EvaluationState, EvaluationSummary, TrainerStatus
from shared.safetensors_info import inspect
from shared.trial import Trial
from test_run_pair import assert_every_json_valid, assert_scored_once_each, processes_of, run_pair

pytestmark = pytest.mark.slow
NAME = "demo_sdxl_lora"


def _config_into(folder):
    """configs/demo-sdxl.toml, unchanged except that its trial folder is under ``folder``."""
    text = (REPO_ROOT / "configs" / "demo-sdxl.toml").read_text()
    assert 'dir = "../runs/demo-sdxl/trial_0001"' in text
    cfg = folder / "demo-sdxl.toml"
    cfg.write_text(text.replace('dir = "../runs/demo-sdxl/trial_0001"', f'dir = "{folder}/trial_0001"'))
    return cfg


def _pair(*args: str) -> tuple[int, str, float]:
    start = time.monotonic()
    proc = run_pair(*args)
    out, _ = proc.communicate(timeout=600)
    return proc.returncode, out, time.monotonic() - start


def _assert_scored(trial: Trial, summary: EvaluationSummary) -> None:
    """Each scored checkpoint: an SDXL file, done, with finite metrics and its sample PNGs."""
    state = read_model(trial.evaluation_state_path, EvaluationState)
    for stem, entry in summary.checkpoints.items():
        assert inspect(trial.checkpoint_path(stem)).metadata["ss_base_model_version"] == "sdxl_base_v1-0"
        assert all(math.isfinite(v) for v in (entry.metrics.score, entry.metrics.clip_t, entry.metrics.clip_i)), stem
        folder = trial.evaluations_dir / (entry.results_dir or stem)
        metrics = read_model(folder / "metrics.json", CheckpointMetrics)
        # A renamed copy of a scored file (a continuation's old final) shares that version's results.
        assert metrics.fingerprint.sha256.startswith(entry.fingerprint) and math.isfinite(metrics.metrics.score)
        assert metrics.num_samples == 4 and len(metrics.samples) == 4
        assert not any(s.failed for s in metrics.samples)
        assert all((folder / s.file).stat().st_size > 0 and s.file.endswith(".png") for s in metrics.samples)
    assert not [e for e in state.entries.values() if e.status == "failed"], state.entries


def test_sdxl_demo_trains_scores_and_continues(tmp_path):
    cfg = _config_into(tmp_path)
    trial = Trial(tmp_path / "trial_0001")
    rc, out, took = _pair(str(cfg))
    print(f"\n./run_pair.sh configs/demo-sdxl.toml took {took:.1f} s")
    assert rc == 0, out
    status = read_model(trial.status_path, TrainerStatus)
    assert (status.state, status.epoch, status.step) == ("finished", 4, 16)
    summary = assert_scored_once_each(trial, NAME)
    assert sorted(summary.checkpoints) == [f"{NAME}", f"{NAME}-000001", f"{NAME}-000002", f"{NAME}-000003"]
    assert summary.baseline is not None and math.isfinite(summary.baseline.metrics.score)
    assert summary.best is not None and summary.best.checkpoint in summary.checkpoints
    assert (trial.evaluations_dir / "baseline" / "metrics.json").is_file()
    _assert_scored(trial, summary)
    assert trial.report_path.is_file() and f"run_pair: report: {trial.report_path}" in out
    assert "Traceback" not in out
    first = {stem: e.fingerprint for stem, e in summary.checkpoints.items() if stem != NAME}

    # One more epoch: the old final is kept under its epoch name, the new final is scored, nothing twice.
    rc, out, took = _pair(str(cfg), "--continue", "--epochs", "1")
    print(f"./run_pair.sh configs/demo-sdxl.toml --continue --epochs 1 took {took:.1f} s")
    assert rc == 0, out
    status = read_model(trial.status_path, TrainerStatus)
    assert (status.state, status.epoch, status.step) == ("finished", 5, 20)
    assert inspect(trial.checkpoint_path(NAME)).metadata_int("ss_steps") == 20
    summary = read_model(trial.evaluation_summary_path, EvaluationSummary)
    assert sorted(summary.checkpoints) == [NAME] + [f"{NAME}-00000{i}" for i in range(1, 5)]
    assert {stem: summary.checkpoints[stem].fingerprint for stem in first} == first  # not scored again
    # The ledger: one entry per version. The final was rewritten, so both its versions are there; the old
    # one's renamed copy (-000004, same bytes) takes over its results, and no version was scored twice.
    ledger = read_model(trial.evaluation_state_path, EvaluationState).entries
    entries = [e for key, e in ledger.items() if key != "baseline"]
    assert sorted(e.name for e in entries if e.status == "done") == [NAME, NAME] + [f"{NAME}-00000{i}"
                                                                                     for i in range(1, 5)]
    versions = {key.rsplit("@", 1)[1] for key in ledger if key != "baseline"}
    assert sum(e.attempts for e in entries) == len(versions) == 5, "a version was scored twice"
    _assert_scored(trial, summary)
    assert_every_json_valid(trial)
    assert not processes_of(tmp_path), "processes left running"
