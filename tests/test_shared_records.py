"""Every contract file round-trips, and a bad file gives one clear error naming the file and field."""

import json
import multiprocessing
import os
import time

import pytest

from shared.config import RunConfig
from shared.errors import FileFormatError
from shared.jsonio import atomic_write_text, read_model, read_model_or_none, write_model
from shared.records import (
    BestCheckpoint,
    CheckpointMetrics,
    EvalEntry,
    EvaluationState,
    EvaluationSummary,
    Fingerprint,
    Metrics,
    Params,
    Sample,
    StopRequest,
    SummaryEntry,
    SweepInfo,
    TrainerStatus,
)

FP = Fingerprint(size=10, mtime_ns=123, sha256="ab" * 32)

EXAMPLES = [
    Params(trial_name="trial_0001", backend="builtin", config=RunConfig(), command=["python", "x"],
           versions={"torch": "2"}, sweep=SweepInfo(study_name="s", storage="sqlite:///x.db", trial_number=1,
                                                    params={"training.learning_rate": 1e-4})),
    TrainerStatus(state="running", pid=1, pgid=2, epoch=1, total_epochs=3, step=4, total_steps=12, loss=0.1,
                  last_checkpoint="lora-000001.safetensors"),
    StopRequest(reason="early_stop", requested_by="evaluator", best_checkpoint="lora-000002"),
    EvaluationState(entries={"lora-000001@" + FP.short: EvalEntry(name="lora-000001", file="lora-000001.safetensors",
                                                                  fingerprint=FP, status="done", attempts=1)}),
    EvaluationSummary(trial_name="trial_0001",
                      checkpoints={"lora-000001": SummaryEntry(checkpoint="lora-000001", epoch=1, step=4,
                                                               metrics=Metrics(score=0.5, clip_t=0.2))},
                      best=BestCheckpoint(checkpoint="lora-000001", score=0.5, rule="max score")),
    CheckpointMetrics(checkpoint="lora-000001", metrics=Metrics(score=0.5), encoder="demo:tiny-clip",
                      num_samples=2, samples=[Sample(file="sample_00.png", prompt="<b>x</b>", seed=1)]),
]


@pytest.mark.parametrize("model", EXAMPLES, ids=lambda m: type(m).__name__)
def test_round_trip(tmp_path, model):
    path = tmp_path / "f.json"
    write_model(path, model)
    assert read_model(path, type(model)) == model


@pytest.mark.parametrize("model", EXAMPLES, ids=lambda m: type(m).__name__)
def test_truncated_file_names_the_file(tmp_path, model):
    path = tmp_path / "f.json"
    write_model(path, model)
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    with pytest.raises(FileFormatError) as e:
        read_model(path, type(model))
    assert str(path) in str(e.value) and "not valid JSON" in str(e.value)


def test_wrong_field_is_named(tmp_path):
    path = tmp_path / "trainer_status.json"
    data = json.loads(TrainerStatus().model_dump_json())
    data["step"] = "many"
    path.write_text(json.dumps(data))
    with pytest.raises(FileFormatError) as e:
        read_model(path, TrainerStatus)
    assert e.value.field == "step" and "trainer_status.json: field 'step'" in str(e.value)


def test_wrong_version_is_named(tmp_path):
    path = tmp_path / "evaluation_summary.json"
    data = json.loads(EvaluationSummary(trial_name="t").model_dump_json())
    data["schema_version"] = 99
    path.write_text(json.dumps(data))
    with pytest.raises(FileFormatError) as e:
        read_model(path, EvaluationSummary)
    assert e.value.field == "schema_version" and "99" in str(e.value)


def test_missing_and_non_object_files(tmp_path):
    assert read_model_or_none(tmp_path / "nope.json", StopRequest) is None
    with pytest.raises(FileFormatError, match="file not found"):
        read_model(tmp_path / "nope.json", StopRequest)
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(FileFormatError, match="JSON object"):
        read_model(tmp_path / "list.json", StopRequest)


def _writer(path: str, stop_at: float) -> None:
    i = 0
    while time.time() < stop_at:
        # Large enough that a non-atomic write would be visible half-done.
        atomic_write_text(path, json.dumps({"i": i, "pad": "x" * 200_000}))
        i += 1


def test_concurrent_reader_never_sees_a_partial_file(tmp_path):
    path = tmp_path / "status.json"
    atomic_write_text(path, json.dumps({"i": -1, "pad": ""}))
    proc = multiprocessing.get_context("fork").Process(target=_writer, args=(str(path), time.time() + 1.5))
    proc.start()
    reads, values = 0, set()
    try:
        while proc.is_alive():
            data = json.loads(path.read_text())  # raises if ever partial
            values.add(data["i"])
            reads += 1
    finally:
        proc.join()
    assert reads > 50 and len(values) > 3
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")], "temp files left behind"


def test_atomic_write_creates_readable_file(tmp_path):
    path = tmp_path / "sub" / "x.json"
    atomic_write_text(path, "{}")
    assert path.read_text() == "{}"
    assert oct(path.stat().st_mode & 0o777) != oct(0o600), "should follow the umask, not mkstemp's 0600"
