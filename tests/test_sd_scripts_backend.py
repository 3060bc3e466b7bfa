"""The sd-scripts backend without sd-scripts: its real captured output, command construction, resume
arithmetic, continuation renaming, and the errors users see when it is missing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from shared.config import load_config
from shared.errors import EpochscopeError
from shared.safetensors_info import inspect
from shared.trial import Trial
from trainer.backends.base import CheckpointSaved, EpochStarted, Progress, ResumePoint, Totals
from trainer.backends.sd_scripts import SdScriptsBackend
from trainer.sd_scripts import continuation
from trainer.sd_scripts.output import parse_line

DATA = Path(__file__).parent / "data" / "sd_scripts"


def pieces(text: str) -> list[str]:
    return [p for p in text.replace("\r\n", "\n").replace("\r", "\n").split("\n") if p.strip()]


def test_parser_on_real_output():
    events = [e for f in ("train_network.stdout", "train_network.stderr")
              for line in pieces((DATA / f).read_text()) for e in parse_line(line)]
    steps = [e.step for e in events if isinstance(e, Progress)]
    assert sorted(set(steps)) == list(range(0, 10)) and steps == sorted(steps) and all(e.total_steps == 9 for e in events if isinstance(e, Progress))
    assert any(isinstance(e, Progress) and e.avg_loss is not None for e in events)
    assert [(e.epoch, e.total_epochs) for e in events if isinstance(e, EpochStarted)] == [(1, 3), (2, 3), (3, 3)]
    saved = [e.path.name for e in events if isinstance(e, CheckpointSaved)]
    assert saved == ["lora1-step00000002.safetensors", "lora1-000001.safetensors", "lora1-step00000004.safetensors",
                     "lora1-step00000006.safetensors", "lora1-000002.safetensors", "lora1-step00000008.safetensors",
                     "lora1.safetensors"]
    assert Totals(total_steps=9) in events and Totals(total_epochs=3) in events


def test_parser_lines():
    assert parse_line("steps:  44%|████▍     | 4/9 [00:15<00:19,  3.92s/it, avr_loss=1.22]") == [
        Progress(step=4, total_steps=9, loss=1.22, avg_loss=1.22)]
    assert parse_line("epoch 2/3") == [EpochStarted(2, 3)]
    err = parse_line("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB")
    assert err and "out of GPU memory" in err[0].message
    assert parse_line("FileNotFoundError: [Errno 2] No such file: 'x'")[0].message.startswith("FileNotFoundError")
    assert parse_line("INFO     prepare images.") == []


@pytest.fixture()
def config(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    (tmp_path / "train").mkdir()
    cfg = tmp_path / "c.toml"
    cfg.write_text(f"""
[model]
base = "{tmp_path}/model.safetensors"
[dataset]
train_dir = "{tmp_path}/train"
resolution = 64
[network]
dim = 16
alpha = 8.0
[training]
backend = "sd-scripts"
sd_scripts_dir = "/opt/sd-scripts"
sd_scripts_python = "/opt/venv/bin/python"
max_train_epochs = 3
save_every_n_epochs = 1
learning_rate = 2e-4
tokenizer_cache_dir = "{tmp_path}/tok"
extra_args = ["--xformers", "--max_grad_norm", "0.5"]
[output]
dir = "{tmp_path}/t"
name = "lora1"
""")
    return load_config(cfg)


def _args(spec) -> dict[str, str | None]:
    out, argv = {}, spec.argv
    for i, a in enumerate(argv):
        if a.startswith("--"):
            out[a] = argv[i + 1] if i + 1 < len(argv) and not argv[i + 1].startswith("--") else None
    return out


def test_command_for_a_fresh_run(config):
    spec = SdScriptsBackend().build_launch(config, Trial(config.output.dir), None, None, None)
    assert spec.argv[:2] == ["/opt/venv/bin/python", "/opt/sd-scripts/train_network.py"]
    a = _args(spec)
    assert a["--pretrained_model_name_or_path"].endswith("model.safetensors")
    assert a["--output_dir"] == config.output.dir and a["--output_name"] == "lora1"
    assert a["--network_module"] == "networks.lora" and a["--network_dim"] == "16" and a["--network_alpha"] == "8"
    assert a["--max_train_epochs"] == "3" and a["--save_every_n_epochs"] == "1" and "--save_state" in a
    assert a["--logging_dir"] == str(Path(config.output.dir) / "logs" / "sd-scripts") and a["--log_with"] == "tensorboard"
    assert "--console_log_simple" in a and "--network_train_unet_only" in a and a["--resolution"] == "64,64"
    assert a["--tokenizer_cache_dir"].endswith("tok") and spec.env["HF_HUB_OFFLINE"] == "1"
    assert spec.env["PYTHONUNBUFFERED"] == "1" and spec.argv[-3:] == ["--xformers", "--max_grad_norm", "0.5"]
    assert "--resume" not in a


def test_command_variants(config):
    b = SdScriptsBackend()
    multi = config.model_copy(update={"training": config.training.model_copy(update={"num_gpus": 2})})
    spec = b.build_launch(multi, Trial(config.output.dir), None, 20, None)
    assert spec.argv[1:5] == ["-m", "accelerate.commands.launch", "--num_processes", "2"]
    assert _args(spec)["--max_train_steps"] == "20" and "--max_train_epochs" not in _args(spec)
    ds = config.model_copy(update={"dataset": config.dataset.model_copy(update={"dataset_config": "/d/ds.toml"})})
    a = _args(b.build_launch(ds, Trial(config.output.dir), None, None, None))
    assert a["--dataset_config"] == "/d/ds.toml" and "--train_data_dir" not in a
    te = config.model_copy(update={"network": config.network.model_copy(update={"train_text_encoder": True})})
    assert "--network_train_unet_only" not in _args(b.build_launch(te, Trial(config.output.dir), None, None, None))


def _sdxl(config, **training):
    return config.model_copy(update={"model": config.model.model_copy(update={"family": "sdxl"}),
                                     "training": config.training.model_copy(update=training)})


def test_sdxl_runs_sdxl_train_network_with_its_own_arguments(config):
    """Issue 13: SDXL launches sdxl_train_network.py, with --no_half_vae by default (SDXL's VAE overflows in
    fp16), --cache_text_encoder_outputs when asked, and one text-encoder lr per encoder."""
    b, t = SdScriptsBackend(), Trial(config.output.dir)
    spec = b.build_launch(_sdxl(config, cache_text_encoder_outputs=True), t, None, None, None)
    assert spec.argv[:2] == ["/opt/venv/bin/python", "/opt/sd-scripts/sdxl_train_network.py"]
    a = _args(spec)
    assert "--no_half_vae" in a and "--cache_text_encoder_outputs" in a and "--clip_skip" not in a
    assert a["--network_module"] == "networks.lora" and a["--max_train_epochs"] == "3"
    two = _sdxl(config, text_encoder_lr=1e-5, text_encoder_2_lr=2e-5)
    argv = b.build_launch(two, t, None, None, None).argv
    i = argv.index("--text_encoder_lr")
    assert argv[i + 1:i + 3] == ["1e-05", "2e-05"]
    one = b.build_launch(_sdxl(config, text_encoder_lr=1e-5, no_half_vae=False), t, None, None, None).argv
    assert one[one.index("--text_encoder_lr") + 1:one.index("--text_encoder_lr") + 3][1].startswith("--")
    assert "--no_half_vae" not in one
    assert "--no_half_vae" not in b.build_launch(config, t, None, None, None).argv  # SD 1.x: only when asked
    multi = _sdxl(config, num_gpus=2)
    assert b.build_launch(multi, t, None, None, None).argv[5:7] == ["--num_machines", "1"]
    assert b.build_launch(multi, t, None, None, None).argv[7].endswith("sdxl_train_network.py")


def test_sdxl_settings_that_cannot_work_are_config_errors(tmp_path):
    from shared.config import config_from_dict
    from shared.errors import ConfigError

    with pytest.raises(ConfigError, match="clip_skip"):
        config_from_dict({"model": {"family": "sdxl", "clip_skip": 1}})
    with pytest.raises(ConfigError, match="cache_text_encoder_outputs"):
        config_from_dict({"network": {"train_text_encoder": True}, "training": {"cache_text_encoder_outputs": True}})
    assert config_from_dict({"model": {"family": "sdxl"}}).dataset.resolution == 1024
    assert config_from_dict({}).dataset.resolution == 512


def test_resume_counts_this_run_from_zero(config, tmp_path):
    t = Trial(config.output.dir)
    rp = ResumePoint(t.root / "lora1-000003-state", step=9, epoch=3)
    spec = SdScriptsBackend().build_launch(config, t, rp, 11, None)  # --continue --steps 2
    a = _args(spec)
    assert a["--resume"] == str(rp.state_dir) and a["--initial_step"] == "0" and a["--max_train_steps"] == "2"
    assert a["--output_dir"] == str(continuation.staging_dir(t)), "a resumed run must not overwrite earlier files"
    assert _args(SdScriptsBackend().build_launch(config, t, rp, None, 5))["--max_train_epochs"] == "2"
    with pytest.raises(EpochscopeError, match="nothing to train"):
        SdScriptsBackend().build_launch(config, t, rp, None, None)  # 3 epochs configured, 3 done


def test_a_continuation_never_deletes_the_uncollected_files_of_a_killed_one(config, tmp_path, capsys):
    """A continuation killed before its outputs were collected left them in staging; the next --continue used
    to rmtree that folder. They are moved under backup/ instead, and staging starts empty."""
    t = Trial(config.output.dir)
    staging = continuation.staging_dir(t)
    staging.mkdir(parents=True)
    _lora(staging / "lora1-000001.safetensors", 1, 3)
    rp = ResumePoint(t.root / "lora1-000003-state", step=9, epoch=3)
    SdScriptsBackend().build_launch(config, t, rp, 11, None)
    kept = list(t.backup_dir.glob(f"{staging.name}.replaced-*/lora1-000001.safetensors"))
    assert len(kept) == 1 and not staging.exists(), kept
    assert str(kept[0].parent) in capsys.readouterr().out


def _lora(path: Path, epoch: int, step: int) -> None:
    save_file({"lora_unet_x.lora_down.weight": torch.ones(2, 4), "lora_unet_x.lora_up.weight": torch.ones(4, 2)},
              str(path), metadata={"ss_epoch": str(epoch), "ss_steps": str(step), "ss_output_name": "lora1"})


def test_continuation_outputs_get_their_true_names(tmp_path):
    t = Trial(tmp_path / "t")
    staging = continuation.staging_dir(t)
    staging.mkdir(parents=True)
    _lora(t.root / "lora1-000001.safetensors", 1, 3)  # from the first run: must survive
    _lora(staging / "lora1-000001.safetensors", 1, 3)  # the continuation's own epoch 1 = epoch 4
    _lora(staging / "lora1-step00000002.safetensors", 1, 2)
    _lora(staging / "lora1.safetensors", 2, 6)
    state = staging / "lora1-state"
    state.mkdir()
    (state / "random_states_0.pkl").write_bytes(b"never unpickled")
    (state / "train_state.json").write_text(json.dumps({"current_step": 6, "current_epoch": 2}))
    unfinished = staging / "lora1-000001-state"
    unfinished.mkdir()
    (unfinished / "train_state.json").write_text("{}")
    moved = continuation.adopt_outputs(t, "lora1", step0=9, epoch0=3)
    assert sorted(p.name for p in moved) == ["lora1-000004.safetensors", "lora1-step00000011.safetensors",
                                             "lora1.safetensors"]
    assert inspect(t.checkpoint_path("lora1")).metadata_int("ss_steps") == 15
    assert inspect(t.checkpoint_path("lora1-000004")).metadata_int("ss_epoch") == 4
    assert inspect(t.checkpoint_path("lora1-000001")).metadata_int("ss_steps") == 3
    assert json.loads((t.root / "lora1-state" / "train_state.json").read_text()) == {"current_step": 15,
                                                                                     "current_epoch": 5}
    assert unfinished.exists(), "an incomplete state is left alone"
    rp = SdScriptsBackend().find_resume_point(load_config_for(t), t)
    assert rp.step == 15 and rp.epoch == 5 and rp.state_dir.name == "lora1-state"


def load_config_for(t: Trial):
    from shared.config import RunConfig

    return RunConfig.model_validate({"output": {"dir": str(t.root), "name": "lora1"}})


def test_missing_sd_scripts_is_one_clear_error(config, tmp_path, capsys, monkeypatch):
    from trainer.cli import main

    monkeypatch.delenv("SD_SCRIPTS_DIR", raising=False)
    monkeypatch.delenv("SD_SCRIPTS_PYTHON", raising=False)
    bare = config.model_copy(update={"training": config.training.model_copy(
        update={"sd_scripts_dir": None, "sd_scripts_python": None})})
    with pytest.raises(EpochscopeError, match="SD_SCRIPTS_DIR"):
        SdScriptsBackend().check(bare)
    cfg = tmp_path / "c2.toml"
    cfg.write_text(f'[model]\nbase = "demo:tiny"\n[dataset]\ntrain_dir = "demo:dataset/train"\n'
                   f'[training]\nbackend = "sd-scripts"\n[output]\ndir = "{tmp_path}/t2"\n')
    assert main(["run", "--config", str(cfg), "--new"]) == 2
    err = capsys.readouterr().err
    assert "sd-scripts" in err and "SD_SCRIPTS_PYTHON" in err and "Traceback" not in err
    assert main(["run", "--config", str(cfg), "--dry-run"]) == 0
    captured = capsys.readouterr()
    assert "train_network.py" in captured.out and "warning" in captured.err


def _with(config, **training):
    return config.model_copy(update={"training": config.training.model_copy(update=training)})


def test_a_continuation_keeps_the_original_lr_schedule(config):
    """Issue 11, fault 1: `--max_train_steps N --resume` made sd-scripts build its schedule for N steps.
    A continuation now names the schedule function with the run's own length (sd-scripts restores the
    step from the state)."""
    t = Trial(config.output.dir)
    cosine = _with(config, lr_scheduler="cosine", lr_warmup_steps=2)
    rp = ResumePoint(t.root / "lora1-step00000027-state", step=27, epoch=9, schedule_steps=90)
    argv = SdScriptsBackend().build_launch(cosine, t, rp, 33, None).argv  # --continue --steps 6
    i = argv.index("--lr_scheduler_type")
    assert argv[i:i + 5] == ["--lr_scheduler_type", "transformers.optimization.get_cosine_schedule_with_warmup",
                             "--lr_scheduler_args", "num_warmup_steps=2", "num_training_steps=90"]
    assert "--lr_warmup_steps" not in argv and _args(SdScriptsBackend().build_launch(
        cosine, t, rp, 33, None))["--max_train_steps"] == "6"
    past_the_end = SdScriptsBackend().build_launch(cosine, t, rp, 100, None).argv  # stretched to the new end
    assert "num_training_steps=100" in past_the_end
    two_gpus = SdScriptsBackend().build_launch(_with(cosine, num_gpus=2), t, rp, 33, None).argv
    assert "num_training_steps=180" in two_gpus  # sd-scripts steps the scheduler once per process
    warm = SdScriptsBackend().build_launch(_with(config, lr_scheduler="constant_with_warmup", lr_warmup_steps=2),
                                           t, rp, 33, None).argv
    assert "--lr_scheduler_type" not in warm and "--lr_warmup_steps" in warm  # its length does not matter
    fresh = SdScriptsBackend().build_launch(cosine, t, None, None, None).argv
    assert "--lr_scheduler_type" not in fresh and "--lr_warmup_steps" in fresh


def test_the_schedule_length_comes_from_the_state_or_its_checkpoint(config, tmp_path):
    t = Trial(config.output.dir)
    t.root.mkdir(parents=True)
    for stem, step, extra in (("lora1-000003", 9, {}), ("lora1-step00000011", 11, {"epochscope_schedule_steps": 30})):
        save_file({"w": torch.zeros(1)}, str(t.checkpoint_path(stem)), metadata={"ss_max_train_steps": "9"})
        state = t.state_dir(stem)
        state.mkdir()
        (state / "random_states_0.pkl").write_bytes(b"")
        (state / "train_state.json").write_text(json.dumps({"current_step": step, "current_epoch": 3, **extra}))
    rp = SdScriptsBackend().find_resume_point(config, t)
    assert (rp.step, rp.schedule_steps) == (11, 30)
    (t.state_dir("lora1-step00000011") / "random_states_0.pkl").unlink()
    rp = SdScriptsBackend().find_resume_point(config, t)
    assert (rp.step, rp.schedule_steps) == (9, 9)  # a first run's state: ss_max_train_steps of its checkpoint


def test_a_continuation_from_mid_epoch_labels_epochs_honestly(tmp_path):
    """Issue 11, faults 2 and 3: resumed at step 28 (3 steps an epoch), the continuation's own epoch 1
    ends at step 31, which ends no epoch of the run; the old final is kept under its step name."""
    t = Trial(tmp_path / "t")
    staging = continuation.staging_dir(t)
    staging.mkdir(parents=True)
    spe = {"ss_num_batches_per_epoch": "3"}

    def lora(path: Path, epoch: int, step: int) -> None:
        save_file({"w": torch.ones(2)}, str(path), metadata={"ss_epoch": str(epoch), "ss_steps": str(step), **spe})

    lora(t.root / "lora1.safetensors", 10, 28)  # the previous final: 9 epochs and 1 step
    old_final = (t.root / "lora1.safetensors").read_bytes()
    lora(staging / "lora1-000001.safetensors", 1, 3)
    lora(staging / "lora1-000002.safetensors", 2, 6)  # would end epoch 2 of the continuation: step 34
    lora(staging / "lora1.safetensors", 2, 5)
    state = staging / "lora1-000001-state"
    state.mkdir()
    (state / "random_states_0.pkl").write_bytes(b"")
    (state / "train_state.json").write_text(json.dumps({"current_step": 3, "current_epoch": 1}))
    moved = continuation.adopt_outputs(t, "lora1", step0=28, epoch0=9, schedule_steps=90)
    assert sorted(p.name for p in moved) == ["lora1-step00000031.safetensors", "lora1-step00000034.safetensors",
                                             "lora1.safetensors"]
    assert (t.root / "lora1-step00000028.safetensors").read_bytes() == old_final
    for stem, step, epoch in (("lora1-step00000031", 31, 10), ("lora1-step00000034", 34, 11), ("lora1", 33, 11)):
        info = inspect(t.checkpoint_path(stem))
        assert (info.metadata_int("ss_steps"), int(info.metadata["ss_epoch"])) == (step, epoch), stem
        assert info.metadata["ss_max_train_steps"] == "90"
    data = json.loads((t.root / "lora1-step00000031-state" / "train_state.json").read_text())
    assert data == {"current_step": 31, "current_epoch": 10, "epochscope_schedule_steps": 90}
    continuation.remove_if_empty(staging)
    assert not staging.exists()  # fault 9: an empty .continue-staging/ was left behind


def test_versions_are_those_of_sd_scripts_own_python(config, tmp_path):
    """Issue 11, fault 9: params.json recorded our venv's diffusers for an sd-scripts run."""
    fake = tmp_path / "python"
    fake.write_text('#!/bin/sh\necho \'{"diffusers": "0.25.0", "torch": "2.1.0"}\'\n')
    fake.chmod(0o755)
    v = SdScriptsBackend().versions(_with(config, sd_scripts_python=str(fake)))
    assert v["diffusers"] == "0.25.0" and v["torch"] == "2.1.0"


def test_a_continuation_to_an_epoch_target_from_mid_epoch_runs_the_steps_to_it(config):
    t = Trial(config.output.dir)
    t.root.mkdir(parents=True)
    save_file({"w": torch.zeros(1)}, str(t.checkpoint_path("lora1")), metadata={"ss_num_batches_per_epoch": "3"})
    rp = ResumePoint(t.root / "lora1-state", step=5, epoch=1, schedule_steps=9)
    a = _args(SdScriptsBackend().build_launch(config, t, rp, None, None))  # to the configured 3 epochs
    assert a["--max_train_steps"] == "4" and "--max_train_epochs" not in a  # not 2 whole epochs: step 11


def test_lr_comes_from_sd_scripts_own_tensorboard_files(tmp_path):
    """sd-scripts' console never prints the lr; its TensorBoard files (lr/unet) are followed instead,
    and files of an earlier run (before a --continue) are ignored."""
    import os
    import time

    from torch.utils.tensorboard import SummaryWriter

    from trainer.sd_scripts.tensorboard_lr import LrReader

    old = tmp_path / "sd-scripts" / "20261101000000" / "network_train"
    w = SummaryWriter(str(old))
    w.add_scalar("lr/unet", 9e-9, 50)
    w.close()
    for f in old.iterdir():
        os.utime(f, (time.time() - 3600, time.time() - 3600))
    reader = LrReader(tmp_path / "sd-scripts", since=time.time())
    assert reader.poll() is None
    w = SummaryWriter(str(tmp_path / "sd-scripts" / "20261123000000" / "network_train"))
    w.add_scalar("lr/textencoder", 5e-5, 1)
    w.add_scalar("lr/unet", 1e-4, 1)
    w.flush()
    assert abs(reader.poll() - 1e-4) < 1e-10
    w.add_scalar("lr/unet", 7.5e-5, 2)
    w.flush()
    assert abs(reader.poll() - 7.5e-5) < 1e-10
    w.close()
