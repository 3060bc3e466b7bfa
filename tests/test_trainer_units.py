"""Pure pieces of the trainer: resume arithmetic, the worker protocol, kohya keys, dataset order."""

from pathlib import Path


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
