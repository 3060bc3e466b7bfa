"""The built-in trainer for real: checkpoints, metadata, status, resume, stop requests, bad input."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from _sweep_helpers import kill_all_under, python_pids_under
from conftest import REPO_ROOT, proc_state, run_cli, write_demo_config
from shared.jsonio import read_model, write_model
from shared.records import Params, StopRequest, TrainerStatus
from shared.safetensors_info import inspect
from shared.trial import Trial

pytestmark = pytest.mark.slow


def test_three_epochs_names_metadata_status(trained_trial):
    names = [c.path.name for c in trained_trial.checkpoints("lora")]
    assert names == ["lora-000001.safetensors", "lora-000002.safetensors", "lora.safetensors"]
    for ckpt, epoch in zip(trained_trial.checkpoints("lora"), (1, 2, 3)):
        meta = ckpt.info.metadata
        assert meta["ss_epoch"] == str(epoch) and meta["ss_steps"] == str(4 * epoch)
        assert meta["ss_network_dim"] == "4" and float(meta["ss_network_alpha"]) == 4.0
        assert meta["ss_output_name"] == "lora" and meta["ss_num_epochs"] == "3"
        assert meta["ss_base_model_version"] == "sd_v1" and float(meta["ss_training_started_at"]) > 0
        assert (trained_trial.root / f"{ckpt.stem}-state" / "train_state.json").exists()
    status = read_model(trained_trial.status_path, TrainerStatus)
    assert (status.state, status.step, status.total_steps, status.epoch, status.exit_code) == ("finished", 12, 12, 3, 0)
    assert status.last_checkpoint == "lora.safetensors" and status.loss is not None
    params = read_model(trained_trial.params_path, Params)
    assert params.backend == "builtin" and "torch" in params.versions
    assert any((trained_trial.logs_dir / "trainer").glob("events.out.tfevents.*"))
    assert "epoch 3/3" in trained_trial.log_path.read_text()


def test_kohya_keys_and_diffusers_accepts_every_file(trained_trial, demo_assets):
    import numpy as np
    from diffusers import StableDiffusionPipeline

    sd = load_file(str(trained_trial.checkpoint_path("lora")))
    assert all(k.startswith("lora_unet_") for k in sd)
    assert {k.rsplit(".", 2)[-2] if k.endswith(".weight") else "alpha" for k in sd} == {"lora_down", "lora_up", "alpha"}
    assert "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight" in sd

    pipe = StableDiffusionPipeline.from_pretrained(demo_assets.pipeline_dir, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)

    def image():
        return pipe("a red circle", num_inference_steps=2, height=64, width=64,
                    generator=torch.Generator().manual_seed(0), output_type="np").images[0]

    base = image()
    for ckpt in trained_trial.checkpoints("lora"):
        pipe.load_lora_weights(str(ckpt.path.parent), weight_name=ckpt.path.name, adapter_name=ckpt.stem.replace("-", "_"))
        pipe.set_adapters([ckpt.stem.replace("-", "_")])
        assert np.abs(image() - base).max() > 1e-4, f"{ckpt.stem} changed nothing"
        pipe.unload_lora_weights()

    # Fusing gives W + up @ down * alpha / rank.
    module = pipe.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1.to_q
    w0 = module.weight.detach().clone()
    final = trained_trial.checkpoint_path("lora")
    pipe.load_lora_weights(str(final.parent), weight_name=final.name)  # diffusers < 0.32 offline needs the name
    pipe.fuse_lora()
    key = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    up, down, alpha = sd[f"{key}.lora_up.weight"], sd[f"{key}.lora_down.weight"], float(sd[f"{key}.alpha"])
    expected = w0 + up @ down * alpha / down.shape[0]
    fused = pipe.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1.to_q
    weight = getattr(fused, "base_layer", fused).weight
    assert torch.allclose(weight, expected, atol=1e-6)


def test_resume_matches_uninterrupted_and_counts_steps(tmp_path, trained_trial):
    cfg = write_demo_config(tmp_path / "c.toml", tmp_path / "t")
    run_cli("trainer", "run", "--config", str(cfg), "--new", "--epochs", "1")
    run_cli("trainer", "run", "--config", str(cfg), "--continue", "--epochs", "1")
    t = Trial(tmp_path / "t")
    assert inspect(t.checkpoint_path("lora")).metadata_int("ss_steps") == 8
    out = run_cli("trainer", "run", "--config", str(cfg), "--continue")  # to the configured 3 epochs
    assert "resuming at step 8" in out.stdout + out.stderr
    resumed, straight = load_file(str(t.checkpoint_path("lora"))), load_file(str(trained_trial.checkpoint_path("lora")))
    assert resumed.keys() == straight.keys()
    for k in straight:
        assert torch.allclose(resumed[k], straight[k], atol=1e-5, rtol=1e-4), k
    info = inspect(t.checkpoint_path("lora"))
    assert info.metadata_int("ss_steps") == 12 and info.metadata_int("ss_epoch") == 3
    status = read_model(t.status_path, TrainerStatus)
    assert status.state == "finished" and status.step == 12


def test_continue_steps_adds_exactly_n(tmp_path):
    cfg = write_demo_config(tmp_path / "c.toml", tmp_path / "t")
    run_cli("trainer", "run", "--config", str(cfg), "--new", "--steps", "3")
    run_cli("trainer", "run", "--config", str(cfg), "--continue", "--steps", "2")
    t = Trial(tmp_path / "t")
    assert inspect(t.checkpoint_path("lora")).metadata_int("ss_steps") == 5
    assert read_model(t.status_path, TrainerStatus).step == 5


def _start(cfg, *extra):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, "-m", "trainer", "run", "--config", str(cfg), "--new", *extra],
                            cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for_step(t: Trial, step: int, timeout: float = 120) -> TrainerStatus:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if t.status_path.exists():
            st = read_model(t.status_path, TrainerStatus)
            if st.step >= step:
                return st
        time.sleep(0.05)
    raise AssertionError(f"trainer did not reach step {step}")


def test_stop_request_stops_within_a_step(tmp_path):
    cfg = write_demo_config(tmp_path / "c.toml", tmp_path / "t", epochs=50)
    t = Trial(tmp_path / "t")
    proc = _start(cfg)
    try:
        _wait_for_step(t, 2)
        write_model(t.stop_request_path, StopRequest(reason="early_stop", requested_by="evaluator",
                                                     best_checkpoint="lora-000001"))
        asked_at = read_model(t.status_path, TrainerStatus).step
        out, _ = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 0, out
    st = read_model(t.status_path, TrainerStatus)
    assert st.state == "stopped_early" and "early_stop" in st.message
    assert st.step <= asked_at + 2, "should stop within one step of seeing the request"
    assert st.last_checkpoint and inspect(t.root / st.last_checkpoint).is_complete
    assert (t.root / (st.last_checkpoint.removesuffix(".safetensors") + "-state")).is_dir()
    assert st.step < 200


def test_sigint_saves_and_reports_stopped(tmp_path):
    cfg = write_demo_config(tmp_path / "c.toml", tmp_path / "t", epochs=50)
    t = Trial(tmp_path / "t")
    proc = _start(cfg)
    try:
        _wait_for_step(t, 1)
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=120)
    finally:
        proc.kill()
    st = read_model(t.status_path, TrainerStatus)
    assert st.state == "stopped" and st.last_checkpoint and inspect(t.root / st.last_checkpoint).is_complete
    assert proc.returncode == 130


def test_new_backs_up_and_missing_flag_is_explained(tmp_path, trained_trial, capsys):
    from conftest import copy_trial
    from trainer.cli import main
    from trainer.outputs import back_up_previous_run

    t = copy_trial(trained_trial, tmp_path / "t")
    cfg = write_demo_config(tmp_path / "c.toml", t.root)
    assert main(["run", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "--continue" in err and "--new" in err and "Traceback" not in err
    before = {p.name: p.read_bytes() for p in t.checkpoint_paths()}
    dest = back_up_previous_run(t, "lora")
    assert dest is not None and dest.parent == t.backup_dir
    assert {p.name: p.read_bytes() for p in dest.glob("*.safetensors")} == before
    assert not t.checkpoint_paths()


BAD_INPUTS = {
    "missing model": ('base = "/nope/model"', "model.base"),
    "missing dataset": ('train_dir = "/nope/data"', "does not exist"),
    "empty dataset": ("EMPTY", "has no images"),
    "unreadable image": ("BROKEN", "cannot read training image"),
    "invalid value": ("dim = -1", "network.dim"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_gives_one_clear_line(tmp_path, case, capsys, demo_assets):
    import shutil

    from trainer.cli import main

    change, expected = BAD_INPUTS[case]
    cfg = write_demo_config(tmp_path / "c.toml", tmp_path / "t")
    text = cfg.read_text()
    data = tmp_path / "data"
    if change == "EMPTY":
        (data / "3_thing").mkdir(parents=True)
        text = text.replace('train_dir = "demo:dataset/train"', f'train_dir = "{data}"')
    elif change == "BROKEN":
        shutil.copytree(demo_assets.train_dir, data)
        (data / "2_circle" / "circle_00.png").write_bytes(b"not a png")
        text = text.replace('train_dir = "demo:dataset/train"', f'train_dir = "{data}"')
    elif change.startswith("base"):
        text = text.replace('base = "demo:tiny"', change)
    elif change.startswith("train_dir"):
        text = text.replace('train_dir = "demo:dataset/train"', change)
    else:
        text = text.replace("dim = 4", change)
    cfg.write_text(text)
    assert main(["run", "--config", str(cfg), "--new"]) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    status_path = tmp_path / "t" / "trainer_status.json"
    if case != "invalid value":  # a config that does not parse has no trial folder to write to
        st = read_model(status_path, TrainerStatus)
        assert st.state == "failed" and expected in st.message


def test_unwritable_output_folder(tmp_path, capsys):
    from trainer.cli import main

    blocker = tmp_path / "file"
    blocker.write_text("")
    cfg = write_demo_config(tmp_path / "c.toml", blocker / "t")
    assert main(["run", "--config", str(cfg), "--new"]) == 2
    assert f"{blocker} is a file, not a folder" in capsys.readouterr().err


def test_dry_run_prints_the_command(tmp_path, capsys):
    from trainer.cli import main

    cfg = write_demo_config(tmp_path / "c.toml", tmp_path / "t")
    assert main(["run", "--config", str(cfg), "--dry-run"]) == 0
    assert "trainer.builtin.worker" in capsys.readouterr().out
    assert not (tmp_path / "t" / "params.json").exists()


# ---------------------------------------------------------------- continuation: lr, kept files, labels


def _tb_scalars(logs_dir, tag: str) -> dict[int, float]:
    """Every value of ``tag`` in the trainer's TensorBoard files, by step (a step logged twice fails)."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    out: dict[int, float] = {}
    for path in sorted((logs_dir / "trainer").glob("events.out.tfevents.*")):
        for event in EventFileLoader(str(path)).Load():
            for value in event.summary.value:
                if value.tag == tag:
                    assert event.step not in out, f"step {event.step} logged twice"
                    kind = value.WhichOneof("value")
                    out[event.step] = value.simple_value if kind == "simple_value" else value.tensor.float_val[0]
    return out


def _stop_at(cfg, t: Trial, step: int, *extra: str) -> int:
    """Start a new run, ask it to stop once it reaches ``step``; the step it stopped at."""
    proc = _start(cfg, *extra)
    try:
        _wait_for_step(t, step)
        write_model(t.stop_request_path, StopRequest(reason="user"))
        out, _ = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 0, out
    return read_model(t.status_path, TrainerStatus).step


@pytest.mark.parametrize("scheduler", ["cosine", "linear", "constant_with_warmup"])
def test_continued_lr_equals_the_uninterrupted_runs(tmp_path, scheduler):
    """Stop at step ~5 of 16, --continue --steps 2, then --continue: TensorBoard's lr at every step is
    the uninterrupted run's (issue 11, fault 1: the continuation used to rebuild the schedule for its
    own length, e.g. cosine over 7 steps)."""
    sets = ["--set", f'training.lr_scheduler="{scheduler}"', "--set", "training.lr_warmup_steps=3"]
    straight_cfg = write_demo_config(tmp_path / "a.toml", tmp_path / "straight", epochs=4)
    run_cli("trainer", "run", "--config", str(straight_cfg), "--new", *sets)
    straight = _tb_scalars(Trial(tmp_path / "straight").logs_dir, "lr")
    assert sorted(straight) == list(range(1, 17))

    cfg = write_demo_config(tmp_path / "b.toml", tmp_path / "t", epochs=4)
    t = Trial(tmp_path / "t")
    stopped = _stop_at(cfg, t, 5, *sets)
    assert stopped < 14
    last = read_model(t.status_path, TrainerStatus).last_checkpoint
    info = inspect(t.root / last)  # fault 3: a stop mid-epoch carried the unfinished epoch's number
    assert (info.metadata_int("ss_steps"), int(info.metadata["ss_epoch"])) == (stopped, stopped // 4), last
    run_cli("trainer", "run", "--config", str(cfg), "--continue", "--steps", "2", *sets)
    run_cli("trainer", "run", "--config", str(cfg), "--continue", *sets)
    pieced = _tb_scalars(t.logs_dir, "lr")
    assert sorted(pieced) == list(range(1, 17))
    for step in range(1, 17):
        assert pieced[step] == pytest.approx(straight[step], rel=1e-6, abs=1e-12), (step, pieced, straight)
    status = read_model(t.status_path, TrainerStatus)
    assert status.state == "finished" and status.step == 16
    assert status.lr == pytest.approx(straight[16], rel=1e-6, abs=1e-12)


def test_continuation_keeps_the_old_final_and_labels_partial_epochs(tmp_path):
    """Fault 2: --continue overwrote <name>.safetensors and its -state; fault 3: a final at step 11
    (4 steps an epoch) said ss_epoch 3."""
    cfg = write_demo_config(tmp_path / "c.toml", tmp_path / "t", epochs=2)
    t = Trial(tmp_path / "t")
    run_cli("trainer", "run", "--config", str(cfg), "--new")
    first = t.checkpoint_path("lora").read_bytes()
    run_cli("trainer", "run", "--config", str(cfg), "--continue", "--steps", "3")
    assert t.checkpoint_path("lora-000002").read_bytes() == first  # the epoch-2 final, under its epoch name
    assert (t.root / "lora-000002-state" / "train_state.json").exists()
    info = inspect(t.checkpoint_path("lora"))
    assert (info.metadata_int("ss_steps"), int(info.metadata["ss_epoch"])) == (11, 2)
    second = t.checkpoint_path("lora").read_bytes()
    run_cli("trainer", "run", "--config", str(cfg), "--continue", "--steps", "1")
    assert t.checkpoint_path("lora-step00000011").read_bytes() == second  # partial epoch: its step name
    assert t.checkpoint_path("lora-000002").read_bytes() == first
    info = inspect(t.checkpoint_path("lora"))
    assert (info.metadata_int("ss_steps"), int(info.metadata["ss_epoch"])) == (12, 3)
    names = [c.stem for c in t.checkpoints("lora")]
    assert names == ["lora-000001", "lora-000002", "lora-step00000011", "lora"]


def test_a_diverging_run_skips_non_finite_steps_and_stops_with_one_clear_error(tmp_path):
    """A learning rate of 1e30: step 1 blows the weights up and every later loss is NaN. Those steps are
    skipped, so the checkpoints hold step 1's finite weights (before: every one was NaN, and the run said
    "finished"); the console warns once; after 50 in a row the run fails, naming training.learning_rate,
    and writes no final checkpoint (15 epochs of 4 steps: it stops in epoch 13)."""
    from trainer.builtin.nonfinite import MAX_IN_A_ROW

    cfg = write_demo_config(tmp_path / "c.toml", tmp_path / "t", lr=1e30, epochs=15)
    out = run_cli("trainer", "run", "--config", str(cfg), "--new", check=False)
    t = Trial(tmp_path / "t")
    assert out.returncode != 0, out.stdout
    assert (out.stdout + out.stderr).count("warning: the loss is nan at step 2") == 1, out.stdout
    status = read_model(t.status_path, TrainerStatus)
    assert status.state == "failed", status
    assert f"steps 2-{MAX_IN_A_ROW + 1}" in status.message and "diverged" in status.message, status.message
    assert "training.learning_rate (now 1e+30)" in status.message, status.message
    saved = [c.stem for c in t.checkpoints("lora")]
    assert saved == [f"lora-{e:06d}" for e in range(1, MAX_IN_A_ROW // 4 + 1)], saved
    for stem in saved:
        weights = load_file(str(t.checkpoint_path(stem)))
        assert weights and all(torch.isfinite(w.float()).all() for w in weights.values()), stem


def test_a_supervisor_killed_while_paused_leaves_no_frozen_worker_and_the_worker_saves(tmp_path):
    """kill -9 of `trainer run` while an evaluator's lease has its worker SIGSTOPped. The SIGTERM that the
    worker gets for its parent's death (PR_SET_PDEATHSIG) stayed pending for ever in the stopped process,
    which kept its memory (a GPU's, for real) and could wake up in a folder a later run had taken; and an
    orphan that did take it died of a BrokenPipeError before saving. Now the guard's helper resumes the group,
    the worker saves a checkpoint and its state at its step and exits, and `--continue` goes on from there."""
    from shared.pause import lease, pause_request_path

    cfg = write_demo_config(tmp_path / "c.toml", tmp_path / "t", epochs=500)
    t = Trial(tmp_path / "t")
    proc = _start(cfg)
    try:
        worker = _wait_for_step(t, 3).pgid  # the worker leads its own group
        write_model(pause_request_path(t.root), lease(seconds=600))  # an evaluator generating, then killed
        deadline = time.monotonic() + 30
        while proc_state(worker) != "T":
            assert time.monotonic() < deadline, "the supervisor never paused its worker"
            time.sleep(0.05)
        proc.kill()
        proc.wait(timeout=30)
        deadline = time.monotonic() + 60
        while Path(f"/proc/{worker}").exists() or python_pids_under(t.root):
            assert time.monotonic() < deadline, (proc_state(worker), python_pids_under(t.root))
            time.sleep(0.1)
    finally:
        proc.kill()
        kill_all_under(t.root)
    saved = sorted(t.root.glob("lora-step*.safetensors"))
    assert len(saved) == 1 and inspect(saved[0]).is_complete, sorted(p.name for p in t.root.iterdir())
    step = inspect(saved[0]).metadata_int("ss_steps")
    assert (t.root / f"{saved[0].stem}-state").is_dir()
    pause_request_path(t.root).unlink()  # the evaluator's lease would run out by itself
    out = run_cli("trainer", "run", "--config", str(cfg), "--continue", "--steps", "1")
    assert f"resuming at step {step}" in out.stdout + out.stderr
    assert read_model(t.status_path, TrainerStatus).step == step + 1


def test_a_full_disk_stops_the_run_with_one_clear_error_and_continue_resumes(tmp_path, small_disk):
    """Checkpoints every epoch into a 3 MB file system. Before: the supervisor died of an OSError at the
    status file ("internal error"), the status said "running", and a half-written state folder stayed.
    Now the run fails naming the disk and `--continue`; nothing half-written is left; and once there is
    room, `--continue` resumes from the last complete state and finishes."""
    from conftest import resize_disk

    resize_disk(small_disk, 3)
    cfg = write_demo_config(tmp_path / "c.toml", small_disk / "t", epochs=20)
    out = run_cli("trainer", "run", "--config", str(cfg), "--new", check=False)
    t = Trial(small_disk / "t")
    assert out.returncode == 2, out.stdout + out.stderr
    assert "internal error" not in out.stderr
    status = read_model(t.status_path, TrainerStatus)
    assert status.state == "failed" and "no space left on device" in status.message, status
    assert "--continue" in status.message
    assert not list(t.root.glob(".*.tmp")), sorted(p.name for p in t.root.iterdir())
    states = sorted(p.name for p in t.root.glob("lora-*-state"))
    assert states, "some epochs were saved before the disk filled"
    resize_disk(small_disk, 64)
    out = run_cli("trainer", "run", "--config", str(cfg), "--continue")
    assert read_model(t.status_path, TrainerStatus).state == "finished"
    assert inspect(t.checkpoint_path("lora")).metadata_int("ss_steps") == 80
