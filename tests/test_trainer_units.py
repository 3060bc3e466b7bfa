"""Pure pieces of the trainer: resume arithmetic, the worker protocol, kohya keys, dataset order."""

from pathlib import Path

import pytest

from trainer.backends.base import CheckpointSaved, EpochStarted, Progress, ResumePoint, Totals
from trainer.backends.builtin import BuiltinBackend
from trainer.builtin import events
from trainer.builtin.dataset import Item, epoch_order
from trainer.supervisor import continue_targets, step_with_offset


def test_continue_targets_mean_more():
    rp = ResumePoint(Path("s"), step=40, epoch=4)
    assert continue_targets(rp, 10, None) == (50, None)
    assert continue_targets(rp, None, 2) == (None, 6)
    assert continue_targets(None, 10, None) == (10, None)
    assert continue_targets(rp, None, None) == (None, None)


def test_step_offset_only_for_restarting_counters():
    rp = ResumePoint(Path("s"), step=40, epoch=4)
    assert step_with_offset(3, rp, restarts=True) == 43
    assert step_with_offset(43, rp, restarts=False) == 43
    assert step_with_offset(3, None, restarts=True) == 3


def test_worker_protocol_round_trip(capsys):
    b = BuiltinBackend()
    events.emit("progress", step=3, total_steps=9, loss=0.5, avg_loss=0.4, lr=1e-4)
    events.emit("epoch", epoch=2, total_epochs=3)
    events.emit("checkpoint", path="/x/lora-000002.safetensors")
    events.emit("totals", total_steps=9, total_epochs=3)
    lines = capsys.readouterr().out.splitlines()
    parsed = [e for line in lines for e in b.parse_line(line)]
    assert parsed == [Progress(3, 9, 0.5, 0.4, 1e-4), EpochStarted(2, 3),
                      CheckpointSaved(Path("/x/lora-000002.safetensors")), Totals(9, 3)]
    assert b.parse_line("epoch 1/3") == [] and b.parse_line("@@epochscope {broken") == []


def test_epoch_order_repeats_and_is_reproducible():
    items = [Item(Path("a"), "a", 2), Item(Path("b"), "b", 1)]
    assert sorted(epoch_order(items, 1, 1)) == [0, 0, 1]
    assert epoch_order(items, 1, 3) == epoch_order(items, 1, 3)


def test_non_finite_steps_are_skipped_and_only_a_run_of_them_is_divergence():
    from trainer.builtin.nonfinite import NonFiniteSteps

    guard = NonFiniteSteps(limit=3)
    assert guard.take(1, 0.5, 1.0)
    assert not guard.take(2, float("nan"), 1.0) and not guard.take(3, 0.5, float("inf"))
    assert not guard.diverged and guard.first == 2
    assert guard.take(4, 0.4, 2.0)  # one bad batch (an fp16 overflow) is not divergence
    assert guard.in_a_row == 0 and guard.first is None and guard.skipped == 2
    for step in (5, 6, 7):
        assert not guard.take(step, float("nan"), float("nan"))
    assert guard.diverged
    message = guard.explain(1e-2, "fp16")
    assert "steps 5-7" in message and "step 4's" in message and 'mixed_precision = "bf16"' in message


def test_a_non_finite_loss_is_warned_once_per_run_of_them_for_sd_scripts_too(tmp_path):
    """sd-scripts trains on through NaN (avr_loss=nan); the console says so once when it starts, and again
    only after the loss was finite in between. The status file keeps loss null meanwhile."""
    import io

    from shared.trial import Trial
    from trainer.backends.sd_scripts import SdScriptsBackend
    from trainer.reporting import Console, StatusFile
    from trainer.supervisor import Supervisor, new_status

    out = io.StringIO()
    trial = Trial(tmp_path / "t")
    trial.root.mkdir()
    sup = Supervisor(SdScriptsBackend(), trial, StatusFile(trial, new_status("sd-scripts")), "lora",
                     console=Console(stream=out, plain_interval_s=1e9))
    try:
        for step, loss in enumerate(["0.5", "nan", "nan", "0.4", "inf", "nan"], start=1):
            sup._handle(f"steps:  {step * 10}%|█         | {step}/9 [00:01<00:08,  1.00s/it, avr_loss={loss}]")
    finally:
        sup._tb().close()  # its writer thread, before tmp_path goes
    warnings = [line for line in out.getvalue().splitlines() if line.startswith("warning:")]
    assert [w.split(" at step ")[1].split(":")[0] for w in warnings] == ["2", "5"], warnings
    assert "training.learning_rate" in warnings[0] and "the loss is nan" in warnings[0]
    assert sup.status.status.loss is None and sup.status.status.step == 6


_SAVES_NAN = """
import sys, time
import torch
from safetensors.torch import save_file
root, bad = sys.argv[1], int(sys.argv[2])
for epoch in (1, 2, 3, 4):
    path = f"{root}/lora-{epoch:06d}.safetensors"
    print(f"saving checkpoint: {path}", flush=True)  # sd-scripts says so before it writes the file
    time.sleep(0.3)
    weights = torch.ones(8, 4)
    if epoch >= bad:
        weights[0, 0] = float("nan")
    save_file({"lora_unet_a.lora_down.weight": weights.half()}, path)
    time.sleep(0.7)
"""


@pytest.mark.parametrize("bad", [2, 4, 5])
def test_a_saved_network_file_holding_nan_stops_the_run_as_failed(tmp_path, bad):
    """sd-scripts trains on through NaN to the last epoch and says "finished". The supervisor checks each file
    once it is complete: the first one with NaN stops the run (failed, naming it); earlier ones are kept; a run
    whose last file is the first bad one ends failed too; a clean run finishes."""
    import io
    import sys
    import time

    from shared.trial import Trial
    from trainer.backends.base import LaunchSpec
    from trainer.backends.sd_scripts import SdScriptsBackend
    from trainer.reporting import Console, StatusFile
    from trainer.supervisor import StopPolicy, Supervisor, new_status

    trial = Trial(tmp_path / "t")
    trial.root.mkdir()
    out = io.StringIO()
    sup = Supervisor(SdScriptsBackend(), trial, StatusFile(trial, new_status("sd-scripts")), "lora",
                     console=Console(stream=out, plain_interval_s=1e9), policy=StopPolicy(2.0, 2.0))
    started = time.monotonic()
    with open(tmp_path / "training.log", "ab", buffering=0) as log:
        outcome = sup.run(LaunchSpec([sys.executable, "-c", _SAVES_NAN, str(trial.root), str(bad)]), log)
    written = sorted(p.name for p in trial.root.glob("*.safetensors"))
    if bad == 5:
        assert outcome.state == "finished" and len(written) == 4
        return
    assert outcome.state == "failed" and outcome.exit_code == 1, outcome
    assert outcome.message.startswith(f"training diverged: lora-{bad:06d}.safetensors holds 1 NaN or infinite "
                                      "values of 32 (in lora_unet_a.lora_down.weight)"), outcome.message
    assert written == [f"lora-{e:06d}.safetensors" for e in range(1, bad + 1)], "stopped at the first bad file"
    assert outcome.last_checkpoint == f"lora-{bad:06d}.safetensors"
    assert "training diverged" in out.getvalue()
    assert time.monotonic() - started < 15


def test_a_retry_copies_the_run_up_to_the_state_it_goes_on_from(tmp_path):
    """trainer.outputs.copy_run_until (a sweep retry going on from its interrupted trial): the checkpoints up
    to the state, the run's params, log and the trainer's TensorBoard logs; not later checkpoints (they are
    trained again), not the evaluator's files; the source folder is only read."""
    import torch
    from safetensors.torch import save_file

    from shared.trial import Trial
    from trainer.outputs import copy_run_until

    source, dest = Trial(tmp_path / "trial_0001"), Trial(tmp_path / "trial_0002")
    source.root.mkdir()
    for epoch in (1, 2, 3):
        save_file({"w": torch.full((2,), float(epoch))}, str(source.checkpoint_path(f"lora-{epoch:06d}")),
                  metadata={"ss_epoch": str(epoch), "ss_steps": str(4 * epoch)})
    state = source.state_dir("lora-000002")
    state.mkdir()
    (state / "train_state.json").write_text('{"step": 8}')
    source.params_path.write_text("{}")
    source.log_path.write_text("step 8\n")
    for sub in ("trainer", "evaluator"):
        (source.logs_dir / sub).mkdir(parents=True)
        (source.logs_dir / sub / "events.out").write_bytes(sub.encode())
    before = {p: p.read_bytes() for p in source.root.rglob("*") if p.is_file()}

    copied = copy_run_until(source, dest, "lora", state, step=8, epoch=2)
    names = sorted(str(p.relative_to(dest.root)) for p in copied)
    assert names == ["logs/trainer", "lora-000001.safetensors", "lora-000002-state", "lora-000002.safetensors",
                     "params.json", "training.log"], names
    assert copied[-1] == dest.state_dir("lora-000002"), "the state last: a cut-short copy holds no state"
    assert (dest.state_dir("lora-000002") / "train_state.json").read_text() == '{"step": 8}'
    assert dest.checkpoint_path("lora-000002").read_bytes() == source.checkpoint_path("lora-000002").read_bytes()
    assert not dest.evaluations_dir.exists() and not (dest.logs_dir / "evaluator").exists()
    assert not [p for p in dest.root.rglob(".*")], "temporary copies left behind"
    assert {p: p.read_bytes() for p in source.root.rglob("*") if p.is_file()} == before
