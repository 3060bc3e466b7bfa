"""The background writer: jobs in order, bounded, contained, reports coalesced; and the daemon's use of it
(the next checkpoint is scored while the last one's files are written, an entry is done only once its files
are on disk, a failing write is that version's failure naming the file)."""

from __future__ import annotations

import threading
import time

import pytest

from conftest import copy_trial
from evaluator.background_writer import BackgroundWriter, Job
from shared.jsonio import read_model
from shared.records import EvaluationState, EvaluationSummary
from shared.trial import Trial


def _job(what: str, run, errors: list | None = None) -> Job:
    return Job(what, run, lambda e: errors.append((what, e)) if errors is not None else None)


def test_jobs_run_in_order_and_drain_waits_for_them():
    done: list[int] = []
    w = BackgroundWriter(lambda key: None, maxsize=2)
    for i in range(6):
        w.submit(_job(str(i), lambda i=i: (time.sleep(0.01), done.append(i))))
    assert w.drain(timeout=10)
    assert done == list(range(6)) and w.pending() == 0
    assert w.close(timeout=10)


def test_submit_blocks_while_the_queue_is_full():
    release = threading.Event()
    w = BackgroundWriter(lambda key: None, maxsize=1)
    w.submit(_job("held", lambda: release.wait(10)))  # taken by the worker, which then waits
    time.sleep(0.1)
    w.submit(_job("queued", lambda: None))  # fills the queue
    third = threading.Thread(target=w.submit, args=(_job("blocked", lambda: None),))
    third.start()
    third.join(timeout=0.3)
    assert third.is_alive(), "a third job was accepted while one ran and one waited"
    release.set()
    third.join(timeout=10)
    assert not third.is_alive() and w.close(timeout=10)


def test_a_failing_job_goes_to_its_on_error_and_the_worker_goes_on():
    errors: list = []
    done: list[str] = []

    def boom() -> None:
        raise OSError(28, "No space left on device")

    w = BackgroundWriter(lambda key: None)
    w.submit(_job("a", lambda: done.append("a"), errors))
    w.submit(_job("b", boom, errors))
    w.submit(_job("c", lambda: done.append("c"), errors))
    assert w.close(timeout=10)
    assert done == ["a", "c"] and [(what, type(e)) for what, e in errors] == [("b", OSError)]


def test_reports_are_drawn_once_for_versions_that_finished_together():
    drawn: list[str] = []
    draw_started, release = threading.Event(), threading.Event()

    def draw(key: str) -> None:
        drawn.append(key)
        draw_started.set()
        release.wait(10)  # a slow report: three versions finish while it is drawn

    w = BackgroundWriter(draw, maxsize=4)
    w.submit(_job("v1", lambda: w.redraw("trial")))
    assert draw_started.wait(10)
    for v in ("v2", "v3", "v4"):
        w.submit(_job(v, lambda: w.redraw("trial")))
    release.set()
    assert w.close(timeout=10)
    assert drawn == ["trial", "trial"], "v2..v4 finished during one drawing: one more drawing covers them"
    assert w.draws == 2


def test_a_failing_report_is_logged_and_later_reports_still_drawn(caplog):
    calls: list[str] = []

    def draw(key: str) -> None:
        calls.append(key)
        if len(calls) == 1:
            raise ValueError("matplotlib broke")

    w = BackgroundWriter(draw)
    w.redraw("t")
    assert w.drain(timeout=10)
    w.redraw("t")
    assert w.close(timeout=10)
    assert calls == ["t", "t"] and "matplotlib broke" in caplog.text


# ---------------------------------------------------------------------------------------- with the daemon

def _daemon(t: Trial):
    from evaluator.daemon import Daemon, Options
    from evaluator.settings import Overrides

    return Daemon(t.root, Options(device="cpu", once=True, overrides=Overrides(num_samples=2, steps=2)))


def _entries(t: Trial) -> dict:
    return {e.name: e for e in read_model(t.evaluation_state_path, EvaluationState).entries.values()}


@pytest.mark.slow
def test_the_next_checkpoint_is_scored_while_the_last_ones_files_are_written(tmp_path, trained_trial, monkeypatch):
    from evaluator import daemon as daemon_module

    t = copy_trial(trained_trial, tmp_path / "trial_0001")
    real_score, real_write = daemon_module.score, daemon_module.write_outputs
    scoring_next = threading.Event()
    seen: dict[str, tuple] = {}

    def score(models, ctx, name, *args, **kw):
        if name == "lora-000002":
            scoring_next.set()
        return real_score(models, ctx, name, *args, **kw)

    def write_outputs(scored):
        name = scored.result.checkpoint
        before = (_entries(t)[name].status, [p.exists() for p in scored.files])
        if name == "lora-000001":  # held until the daemon is scoring the next one: it must not wait for us
            seen["overlapped"] = scoring_next.wait(60)
        real_write(scored)
        seen[name] = before

    monkeypatch.setattr(daemon_module, "score", score)
    monkeypatch.setattr(daemon_module, "write_outputs", write_outputs)
    assert _daemon(t).run() == 0
    assert seen.pop("overlapped"), "lora-000002 was not scored while lora-000001's files were being written"
    # While its files are written an entry is pending again (a kill then is no crash of it), never done.
    assert seen == {n: ("pending", [False] * 3) for n in ("baseline", "lora-000001", "lora-000002", "lora")}, \
        "an entry was done, or a file written, before its writer job ran"
    entries = _entries(t)
    summary = read_model(t.evaluation_summary_path, EvaluationSummary)
    assert all(e.status == "done" and e.attempts == 1 for e in entries.values())
    assert set(summary.checkpoints) == {"lora-000001", "lora-000002", "lora"}
    for row in summary.checkpoints.values():  # ssim_prev needs the previous samples: taken from memory
        folder = t.results_dir(row.results_dir, row.checkpoint)
        assert (folder / "metrics.json").is_file() and len(list(folder.glob("sample_*.png"))) == 2
    assert summary.checkpoints["lora-000002"].metrics.ssim_prev is not None
    assert t.report_path.is_file() and t.report_path.stat().st_mtime >= max(
        e.finished_at.timestamp() for e in entries.values()) - 0.01, "report drawn before the last version ended"


@pytest.mark.slow
def test_a_failing_write_is_that_versions_failure_naming_the_file(tmp_path, trained_trial, monkeypatch):
    from evaluator import daemon as daemon_module

    t = copy_trial(trained_trial, tmp_path / "trial_0001")
    real_write = daemon_module.write_outputs

    def write_outputs(scored):
        if scored.result.checkpoint == "lora-000002":
            scored.folder.mkdir(parents=True, exist_ok=True)
            (scored.folder / "metrics.json").mkdir()  # a folder where the file must go: the rename fails
        real_write(scored)

    monkeypatch.setattr(daemon_module, "write_outputs", write_outputs)
    assert _daemon(t).run() == 0
    entries = _entries(t)
    assert entries["lora-000002"].status == "failed"
    assert "lora-000002.safetensors: could not write" in entries["lora-000002"].error
    assert "metrics.json" in entries["lora-000002"].error
    assert entries["lora"].status == "done" and entries["lora-000001"].status == "done"
    summary = read_model(t.evaluation_summary_path, EvaluationSummary)
    assert "metrics.json" in summary.failed["lora-000002"] and "lora-000002" not in summary.checkpoints
    assert set(summary.checkpoints) == {"lora-000001", "lora"}


def test_the_summary_with_versions_in_flight_is_the_file_once_they_are_written(tmp_path):
    """What the daemon decides with (the file plus the versions still being written, applied in order)
    equals the file the writer leaves, and applying a version the file already holds changes nothing."""
    from evaluator import summary as summaries
    from shared.records import CheckpointMetrics, Fingerprint, Metrics

    t = Trial(tmp_path / "trial_0001")
    t.evaluations_dir.mkdir(parents=True)

    def version(name: str, epoch: int, score: float, sha: str) -> CheckpointMetrics:
        return CheckpointMetrics(checkpoint=name, file=f"{name}.safetensors", epoch=epoch, step=4 * epoch,
                                 fingerprint=Fingerprint(size=1, mtime_ns=epoch, sha256=sha * 64),
                                 metrics=Metrics(score=score), encoder="demo", num_samples=2)

    summaries.record(t, version("lora-000001", 1, 0.5, "a"), "rule", results_dir="lora-000001@a")
    in_flight = [(version("lora-000002", 2, 0.7, "b"), None), (version("lora", 3, 0.6, "c"), None),
                 (None, ("lora-000003", "lora-000003.safetensors is corrupt")), (version("lora", 3, 0.65, "d"), None)]

    def apply_all(summary) -> None:
        for result, failure in in_flight:
            if result is not None:
                summaries.apply_result(summary, result, results_dir=f"{result.checkpoint}@{result.fingerprint.short}")
            else:
                summaries.apply_failure(summary, *failure)

    view = summaries.load_summary(t)
    apply_all(view)
    for result, failure in in_flight:  # what the writer does, one version after another
        if result is not None:
            summaries.record(t, result, "rule", results_dir=f"{result.checkpoint}@{result.fingerprint.short}")
        else:
            summaries.record_failure(t, *failure, "rule")
    written = summaries.load_summary(t)
    again = summaries.load_summary(t)
    apply_all(again)  # the race the daemon allows: the file already holds what it applies
    for s in (view, again):
        assert {k: (e.fingerprint, e.metrics.score) for k, e in s.checkpoints.items()} == {
            k: (e.fingerprint, e.metrics.score) for k, e in written.checkpoints.items()}
        assert s.failed == written.failed and [h.fingerprint for h in s.history] == [
            h.fingerprint for h in written.history]
    assert written.checkpoints["lora"].metrics.score == 0.65 and [h.checkpoint for h in written.history] == ["lora"]
