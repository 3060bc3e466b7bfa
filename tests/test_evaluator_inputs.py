"""What a user hands the evaluator that is not quite right: an unreadable reference image, LoRA files without
metadata (no step) and with a '#' in their name, out-of-range flags, a report asked of a folder never
scored, a file replaced while it is scored, and a baseline that keeps killing the evaluator.

Real trainer checkpoints, real evaluator processes (``run_cli``) unless a fault must land mid-scoring."""

from __future__ import annotations

import shutil
from pathlib import Path
from urllib.parse import unquote

import pytest
from safetensors.torch import load_file, save_file

from conftest import copy_trial, run_cli
from shared.demo_assets import resolve_demo
from shared.jsonio import read_model
from shared.records import CheckpointMetrics, EvaluationState, EvaluationSummary
from shared.trial import Trial

FAST = ("--device", "cpu", "--num-samples", "2", "--steps", "2")


def _scalars(logdir: Path, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0})
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


@pytest.fixture
def plain_folder(tmp_path, trained_trial, demo_assets):
    """A folder as a user keeps it: metadata-less LoRA copies named 'char#1-00000N', a validation folder
    (``<tmp>/val``) and a config for scoring it."""
    folder = tmp_path / "out"
    folder.mkdir()
    for epoch, stem in ((1, "lora-000001"), (2, "lora-000002")):
        save_file(load_file(str(trained_trial.checkpoint_path(stem))), str(folder / f"char#1-{epoch:06d}.safetensors"))
    refs = tmp_path / "val"
    shutil.copytree(resolve_demo("demo:dataset/validation"), refs)
    cfg = tmp_path / "eval.toml"
    cfg.write_text(f'[model]\nbase = "demo:tiny"\n\n[dataset]\nvalidation_dir = "{refs}"\n\n[evaluation]\n'
                   'prompts = ["a red circle on a blue background, sks style"]\nresolution = 64\n'
                   'clip_model = "demo:tiny-clip"\n')
    return folder, cfg


def test_one_unreadable_reference_is_left_out_and_no_checkpoint_is_blamed(plain_folder):
    folder, cfg = plain_folder
    (folder.parent / "val" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    out = run_cli("evaluator", "run", "--dir", str(folder), "--config", str(cfg), "--name", "char#1", *FAST)
    said = [line for line in out.stderr.splitlines() if "broken.png" in line]
    assert len(said) == 1, out.stderr  # said once, not once per checkpoint
    assert "reference left out" in out.stderr
    t = Trial(folder)
    summary = read_model(t.evaluation_summary_path, EvaluationSummary)
    assert set(summary.checkpoints) == {"char#1-000001", "char#1-000002"} and not summary.failed, summary.failed
    metrics = read_model(t.results_dir(summary.checkpoints["char#1-000001"].results_dir, "char#1-000001")
                         / "metrics.json", CheckpointMetrics)
    n_refs = len(list(Path(resolve_demo("demo:dataset/validation")).glob("*.png")))
    assert metrics.num_references == n_refs and metrics.metrics.clip_i is not None


def test_files_without_a_step_are_ordered_and_logged_by_epoch(plain_folder):
    """No ss_steps metadata: SSIM to the previous checkpoint still works, and TensorBoard keeps one point
    per checkpoint (every one used to land on step 0 and replace the last)."""
    folder, cfg = plain_folder
    run_cli("evaluator", "run", "--dir", str(folder), "--config", str(cfg), "--name", "char#1", *FAST)
    t = Trial(folder)
    summary = read_model(t.evaluation_summary_path, EvaluationSummary)
    first, second = summary.checkpoints["char#1-000001"], summary.checkpoints["char#1-000002"]
    assert (first.epoch, first.step, second.epoch, second.step) == (1, None, 2, None)
    assert first.metrics.ssim_prev is None and second.metrics.ssim_prev is not None
    assert [step for step, _ in _scalars(t.logs_dir / "evaluator", "eval/score")] == [0, 1, 2]


def test_report_links_to_samples_of_a_name_with_a_hash(plain_folder):
    import re

    folder, cfg = plain_folder
    run_cli("evaluator", "run", "--dir", str(folder), "--config", str(cfg), "--name", "char#1", *FAST)
    report = Trial(folder).report_path
    srcs = re.findall(r"<img[^>]* src='([^']+)'", report.read_text())
    assert srcs and all("#" not in s for s in srcs), srcs  # '#' would start a fragment: a broken image
    assert all((report.parent / unquote(s)).is_file() for s in srcs)
    assert any("char%231-000001" in s for s in srcs)


def test_out_of_range_flags_are_refused_before_anything_is_written(tmp_path, trained_trial):
    t = copy_trial(trained_trial, tmp_path / "trial_0001")
    for flag, value in (("--num-samples", "0"), ("--num-samples", "-2"), ("--steps", "-3"),
                        ("--rescan-interval", "0"), ("--max-attempts", "0")):
        out = run_cli("evaluator", "run" if flag != "--max-attempts" else "watch", "--dir", str(t.root), flag, value,
                      check=False)
        assert out.returncode == 2 and flag in out.stderr, (flag, value, out.stderr)
    assert not t.evaluations_dir.exists()


def test_report_of_a_folder_never_scored_is_refused_and_creates_nothing(tmp_path):
    folder = tmp_path / "notes"
    (folder / "docs").mkdir(parents=True)
    out = run_cli("evaluator", "report", "--dir", str(folder), "--table", check=False)
    assert out.returncode == 2 and "nothing evaluated" in out.stderr and "evaluator run" in out.stderr
    assert sorted(p.name for p in folder.iterdir()) == ["docs"]


def test_a_quarantined_baseline_is_not_retried_until_asked(tmp_path, trained_trial):
    """A baseline that killed the evaluator max-attempts times is failed like any checkpoint (it used to be
    retried on every start, starving every checkpoint); --retry-failed scores it again."""
    from evaluator.ledger import BASELINE_KEY, Ledger
    from shared.trial import BASELINE

    t = copy_trial(trained_trial, tmp_path / "trial_0001")
    ledger = Ledger(t)
    entry = ledger.ensure(BASELINE, None, None, key=BASELINE_KEY)
    ledger.start(entry)
    ledger.start(entry)  # as two evaluators killed while generating it leave it: running, 2 attempts
    out = run_cli("evaluator", "run", "--dir", str(t.root), *FAST)
    assert "baseline crashed the evaluator 2 times" in out.stderr and "scoring the baseline" not in out.stderr
    state = read_model(t.evaluation_state_path, EvaluationState)
    assert state.entries[BASELINE_KEY].status == "failed"
    assert sum(e.status == "done" for e in state.entries.values()) == 3, "the checkpoints were still scored"
    out = run_cli("evaluator", "run", "--dir", str(t.root), "--retry-failed", *FAST)
    assert "scoring the baseline" in out.stderr and "scoring lora" not in out.stderr, out.stderr
    assert read_model(t.evaluation_state_path, EvaluationState).entries[BASELINE_KEY].status == "done"


def test_a_file_replaced_while_scored_is_not_filed_under_its_old_bytes(tmp_path, trained_trial, monkeypatch):
    """The bytes change between fingerprinting and loading: the result is thrown away and the new version is
    scored as itself, once."""
    from evaluator import daemon as daemon_module
    from evaluator.daemon import Daemon, Options
    from evaluator.settings import Overrides

    t = copy_trial(trained_trial, tmp_path / "trial_0001")
    target = t.checkpoint_path("lora-000002")
    replacement = t.root / ".replacement"
    save_file(load_file(str(t.checkpoint_path("lora"))), str(replacement), metadata={"ss_epoch": "2", "ss_steps": "8"})
    real_score = daemon_module.score

    def score_then_replace(models, ctx, name, lora, *args, **kwargs):
        result = real_score(models, ctx, name, lora, *args, **kwargs)
        if lora == target and replacement.exists():
            replacement.replace(target)  # as a user copying another file over it mid-scoring
        return result

    monkeypatch.setattr(daemon_module, "score", score_then_replace)
    opts = Options(device="cpu", once=True, overrides=Overrides(num_samples=2, steps=2))
    assert Daemon(t.root, opts).run() == 0
    summary = read_model(t.evaluation_summary_path, EvaluationSummary)
    state = read_model(t.evaluation_state_path, EvaluationState)
    versions = [e for e in state.entries.values() if e.name == "lora-000002"]
    assert len(versions) == 2 and {e.status for e in versions} == {"failed", "done"}, versions
    old = next(e for e in versions if e.status == "failed")
    assert "replaced while being scored" in old.error and "lora-000002" not in summary.failed
    new = next(e for e in versions if e.status == "done")
    from evaluator.ledger import FingerprintCache

    assert new.fingerprint.sha256 == FingerprintCache().get(target).sha256
    assert summary.checkpoints["lora-000002"].results_dir.endswith(new.fingerprint.short)
