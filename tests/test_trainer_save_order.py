"""A checkpoint and its ``-state`` folder are two writes; a trainer killed between them must lose
nothing and write nothing twice on --continue. The builtin backend is run for real; the sd-scripts
continuation's adoption is run on folders shaped like sd-scripts' output."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import run_cli, write_demo_config
from shared.jsonio import read_model
from shared.records import TrainerStatus
from shared.safetensors_info import inspect
from shared.trial import Trial
from trainer.sd_scripts import continuation


@pytest.mark.slow
def test_continue_writes_the_final_checkpoint_missing_beside_its_state(tmp_path):
    """A kill after the final's state and before its checkpoint (the old order): --continue said
    'finished' and no lora.safetensors was ever written."""
    cfg = write_demo_config(tmp_path / "c.toml", tmp_path / "t", epochs=2)
    run_cli("trainer", "run", "--config", str(cfg), "--new")
    t = Trial(tmp_path / "t")
    final = t.checkpoint_path("lora")
    written = load_file(str(final))
    final.unlink()  # what the kill left: lora-state/ complete, lora.safetensors never written
    assert (t.state_dir("lora") / "train_state.json").exists()

    out = run_cli("trainer", "run", "--config", str(cfg), "--continue")
    assert "resuming at step 8" in out.stdout + out.stderr
    info = inspect(final)
    assert info.is_complete and info.metadata_int("ss_steps") == 8 and info.metadata_int("ss_epoch") == 2
    restored = load_file(str(final))
    assert restored.keys() == written.keys()
    assert all(torch.equal(restored[k], written[k]) for k in written)  # the state's very weights
    assert [c.path.name for c in t.checkpoints("lora")] == ["lora-000001.safetensors", "lora.safetensors"]
    st = read_model(t.status_path, TrainerStatus)
    assert st.state == "finished" and st.last_checkpoint == "lora.safetensors"


@pytest.mark.slow
def test_a_kill_between_checkpoint_and_state_keeps_the_checkpoint_and_writes_it_once(tmp_path):
    """The final's state cannot be written (a file sits where its temp folder goes), so the worker dies
    between the two writes, deterministically. The checkpoint must already be there; --continue redoes
    the steps from the previous state and keeps that file rather than writing (or retiring) it again."""
    cfg = write_demo_config(tmp_path / "c.toml", tmp_path / "t", epochs=2)
    t = Trial(tmp_path / "t")
    t.root.mkdir(parents=True)
    blocker = t.root / ".lora-state.tmp"
    blocker.write_text("in the way of the state's temp folder")
    out = run_cli("trainer", "run", "--config", str(cfg), "--new", check=False)
    assert out.returncode != 0
    final = t.checkpoint_path("lora")
    assert inspect(final).is_complete and inspect(final).metadata_int("ss_steps") == 8
    assert not t.state_dir("lora").exists()
    before = final.read_bytes()

    blocker.unlink()
    out = run_cli("trainer", "run", "--config", str(cfg), "--continue")
    assert "resuming at step 4" in out.stdout + out.stderr
    assert final.read_bytes() == before, "the checkpoint was written a second time"
    assert [c.path.name for c in t.checkpoints("lora")] == ["lora-000001.safetensors", "lora.safetensors"]
    assert json.loads((t.state_dir("lora") / "train_state.json").read_text())["step"] == 8
    assert read_model(t.status_path, TrainerStatus).state == "finished"


# --- sd-scripts continuation: staged outputs adopted into the trial -------------------------------------


def _staged_state(staging: Path, name: str, step: int, epoch: int) -> Path:
    """A complete sd-scripts state folder (random_states_0.pkl is written last)."""
    state = staging / name
    state.mkdir(parents=True)
    (state / "optimizer.bin").write_bytes(b"optimizer")
    (state / "train_state.json").write_text(json.dumps({"current_step": step, "current_epoch": epoch}))
    (state / "random_states_0.pkl").write_bytes(b"never unpickled")
    return state


def _lora(path: Path, epoch: int, step: int) -> None:
    save_file({"w": torch.ones(2)}, str(path), metadata={"ss_epoch": str(epoch), "ss_steps": str(step),
                                                        "ss_num_batches_per_epoch": "3"})


def test_adopting_again_after_an_interruption_counts_step0_once(tmp_path, monkeypatch):
    """Interrupted between correcting train_state.json and moving the folder, the next collect added the
    resume step a second time (the staged file already held the true step)."""
    t = Trial(tmp_path / "t")
    staging = continuation.staging_dir(t)
    _staged_state(staging, "lora1-000001-state", step=3, epoch=1)
    _lora(staging / "lora1-000001.safetensors", 1, 3)
    real_replace = os.replace

    def killed_before_moving_folders(src, dst):
        if Path(src).is_dir():
            raise OSError("killed")
        real_replace(src, dst)

    monkeypatch.setattr(continuation.os, "replace", killed_before_moving_folders)
    with pytest.raises(OSError, match="killed"):
        continuation.adopt_outputs(t, "lora1", step0=9, epoch0=3)
    monkeypatch.undo()

    continuation.adopt_outputs(t, "lora1", step0=9, epoch0=3)
    state = t.state_dir("lora1-000004")
    assert json.loads((state / "train_state.json").read_text()) == {"current_step": 12, "current_epoch": 4}
    assert (state / "optimizer.bin").read_bytes() == b"optimizer"
    assert inspect(t.checkpoint_path("lora1-000004")).metadata_int("ss_steps") == 12
    assert not any(staging.iterdir())


def test_adopting_a_final_twice_does_not_keep_a_second_copy(tmp_path):
    """Interrupted after the adopted final was renamed into place but before the staged file was
    removed: adopting again retired the just-adopted final under its step name, a duplicate."""
    t = Trial(tmp_path / "t")
    staging = continuation.staging_dir(t)
    staging.mkdir(parents=True)
    _lora(staging / "lora1.safetensors", 1, 2)
    kept = staging.parent / "kept.safetensors"
    shutil.copy2(staging / "lora1.safetensors", kept)
    continuation.adopt_outputs(t, "lora1", step0=6, epoch0=2)
    adopted = t.checkpoint_path("lora1").read_bytes()
    os.replace(kept, staging / "lora1.safetensors")  # as the interruption left it

    assert continuation.adopt_outputs(t, "lora1", step0=6, epoch0=2) == []
    assert [p.name for p in t.checkpoint_paths()] == ["lora1.safetensors"]
    assert t.checkpoint_path("lora1").read_bytes() == adopted
    assert not (staging / "lora1.safetensors").exists()


def test_a_state_folder_in_the_way_is_moved_aside_not_deleted(tmp_path):
    """The trial's lora1-state (e.g. the old final's, left by a kill inside retire_final) was rmtree'd."""
    t = Trial(tmp_path / "t")
    staging = continuation.staging_dir(t)
    old = t.state_dir("lora1")
    old.mkdir(parents=True)
    (old / "optimizer.bin").write_bytes(b"the earlier run's optimizer")
    (old / "train_state.json").write_text(json.dumps({"current_step": 6, "current_epoch": 2}))
    _staged_state(staging, "lora1-state", step=3, epoch=1)

    continuation.adopt_outputs(t, "lora1", step0=6, epoch0=2)
    assert json.loads((old / "train_state.json").read_text())["current_step"] == 9
    kept = [p for p in t.backup_dir.iterdir() if p.name.startswith("lora1-state")]
    assert len(kept) == 1 and (kept[0] / "optimizer.bin").read_bytes() == b"the earlier run's optimizer"
    assert json.loads((kept[0] / "train_state.json").read_text())["current_step"] == 6
