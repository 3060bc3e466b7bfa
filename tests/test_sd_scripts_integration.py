"""Against a real kohya-ss sd-scripts checkout and its own venv, on CPU, with an SD-1.5-architecture model
with random weights built offline. Runs when SD_SCRIPTS_DIR and SD_SCRIPTS_PYTHON are set."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO_ROOT, run_cli
from shared.jsonio import read_model, write_model
from shared.records import Params, StopRequest, TrainerStatus
from shared.safetensors_info import inspect
from shared.trial import Trial
from _disk import FULL_SIZE_MODEL

SD_DIR, SD_PY = os.environ.get("SD_SCRIPTS_DIR"), os.environ.get("SD_SCRIPTS_PYTHON")
pytestmark = [FULL_SIZE_MODEL, pytest.mark.sdscripts, pytest.mark.slow, pytest.mark.skipif(
    not (SD_DIR and SD_PY), reason="set SD_SCRIPTS_DIR and SD_SCRIPTS_PYTHON to test against a real sd-scripts "
                                   "(docs/sd-scripts.md says how)")]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, demo_assets):
    from _sd_scripts_helpers import build_sd15_random, tokenizer_cache_and_images

    root = tmp_path_factory.mktemp("sdscripts")
    model = build_sd15_random(REPO_ROOT / ".cache" / "sd15-random")
    tokenizer_cache_and_images(root, demo_assets.train_dir, images=3)
    return root, model


def config(root: Path, model: Path, out: str, epochs: int, lr: float = 1e-4) -> Path:
    cfg = root / f"{out}.toml"
    cfg.write_text(f"""
[model]
base = "{model}"
[dataset]
train_dir = "{root}/data"
resolution = 64
[network]
dim = 4
alpha = 1.0
[training]
backend = "sd-scripts"
max_train_epochs = {epochs}
save_every_n_epochs = 1
learning_rate = {lr:g}
tokenizer_cache_dir = "{root}/tok"
[output]
dir = "{root}/{out}"
name = "lora"
""")
    return cfg


def test_trains_resumes_and_counts_steps(setup):
    root, model = setup
    cfg = config(root, model, "t1", epochs=3)
    run_cli("trainer", "run", "--config", str(cfg), "--new", timeout=1200)
    t = Trial(root / "t1")
    st = read_model(t.status_path, TrainerStatus)
    assert (st.state, st.step, st.total_steps, st.epoch) == ("finished", 9, 9, 3), st
    assert [c.stem for c in t.checkpoints("lora")] == ["lora-000001", "lora-000002", "lora"]
    assert inspect(t.checkpoint_path("lora")).metadata_int("ss_steps") == 9
    params = read_model(t.params_path, Params)
    assert params.command and params.command[1].endswith("train_network.py")
    # A checkout records its commit; a copied tree without .git records none (never our own repo's).
    assert params.sd_scripts_commit or not (Path(os.environ["SD_SCRIPTS_DIR"]) / ".git").exists()
    assert st.lr is not None and st.lr > 0, "the lr read from sd-scripts' own TensorBoard files"
    before = {p.name: p.read_bytes() for p in t.checkpoint_paths() if p.name != "lora.safetensors"}

    run_cli("trainer", "run", "--config", str(cfg), "--continue", "--steps", "2", timeout=1200)
    st = read_model(t.status_path, TrainerStatus)
    assert st.state == "finished" and st.step == 11, st
    assert inspect(t.checkpoint_path("lora")).metadata_int("ss_steps") == 11
    assert {p.name: p.read_bytes() for p in t.checkpoint_paths() if p.name in before} == before, "history kept"


def test_a_diverged_run_stops_at_its_first_nan_checkpoint(setup):
    """sd-scripts itself trains on through NaN to the last epoch and exits 0; with a learning rate of 1e12 its
    first checkpoint is already NaN, and the run stops there, failed, with that file named."""
    from shared.nonfinite import nonfinite_values

    root, model = setup
    cfg = config(root, model, "diverged", epochs=30, lr=1e12)
    result = run_cli("trainer", "run", "--config", str(cfg), "--new", timeout=1200, check=False)
    t = Trial(root / "diverged")
    st = read_model(t.status_path, TrainerStatus)
    assert result.returncode == 1 and st.state == "failed", (st, result.stdout, result.stderr)
    assert st.message.startswith("training diverged: lora-000001.safetensors holds "), st.message
    assert [c.stem for c in t.checkpoints("lora")] in (["lora-000001"], ["lora-000001", "lora-000002"])
    assert nonfinite_values(t.checkpoint_path("lora-000001")), "the file named holds NaN"
    assert st.epoch < 5, "stopped, not trained on to epoch 30"


def test_stop_request_records_the_last_complete_checkpoint(setup):
    root, model = setup
    cfg = config(root, model, "t2", epochs=30)
    t = Trial(root / "t2")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "trainer", "run", "--config", str(cfg), "--new"], cwd=REPO_ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 900
        while not t.checkpoints("lora") and time.monotonic() < deadline:
            time.sleep(0.5)
        assert t.checkpoints("lora"), "no checkpoint appeared"
        write_model(t.stop_request_path, StopRequest(reason="user", requested_by="test"))
        out, _ = proc.communicate(timeout=300)
    finally:
        proc.kill()
    st = read_model(t.status_path, TrainerStatus)
    assert st.state == "stopped_early" and st.last_checkpoint, out
    assert inspect(t.root / st.last_checkpoint).is_complete


def _sd_scripts_lr(t: Trial) -> list[dict[int, float]]:
    """sd-scripts' own ``lr/unet`` TensorBoard scalars, one dict (its step -> lr) per process, oldest first."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    runs = []
    for run_dir in sorted(p for p in (t.logs_dir / "sd-scripts").iterdir() if p.is_dir()):
        series: dict[int, float] = {}
        for path in sorted(run_dir.rglob("events.out.tfevents.*")):
            for event in EventFileLoader(str(path)).Load():
                for value in event.summary.value:
                    if value.tag == "lr/unet":
                        kind = value.WhichOneof("value")
                        series[event.step] = value.simple_value if kind == "simple_value" else value.tensor.float_val[0]
        runs.append(series)
    return runs


def _uninterrupted_lr(scheduler: str, warmup: int, total: int, lr: float = 1e-4) -> dict[int, float]:
    """What sd-scripts logs for an uninterrupted run: the same schedule functions, stepped once a step."""
    from diffusers.optimization import get_scheduler

    opt = torch_sgd(lr)
    sched = get_scheduler(scheduler, opt, num_warmup_steps=warmup, num_training_steps=total)
    out = {}
    for step in range(1, total + 1):
        opt.step()
        sched.step()
        out[step] = sched.get_last_lr()[0]
    return out


def torch_sgd(lr: float):
    import torch

    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)


@pytest.mark.parametrize("scheduler", ["cosine", "linear", "constant_with_warmup"])
def test_a_stopped_and_continued_run_keeps_the_lr_schedule(setup, scheduler):
    """Issue 11, fault 1: stop a 9-step run after its first epoch, `--continue --steps 2`, `--continue`:
    the lr sd-scripts itself logs (lr/unet) at every step is the uninterrupted run's."""
    root, model = setup
    out = f"lr-{scheduler}"
    cfg = config(root, model, out, epochs=3)
    cfg.write_text(cfg.read_text().replace("[training]\n", f'[training]\nlr_scheduler = "{scheduler}"\n'
                                                            "lr_warmup_steps = 2\n"))
    t = Trial(root / out)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "trainer", "run", "--config", str(cfg), "--new",
                             "--stop-timeout", "3"], cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline and not any(
                (d / "random_states_0.pkl").exists() for _, d in t.state_dirs("lora")):  # a complete state
            time.sleep(0.2)
        write_model(t.stop_request_path, StopRequest(reason="user", requested_by="test"))
        proc.communicate(timeout=300)
    finally:
        proc.kill()
    resume_steps = []
    for extra in (["--steps", "2"], []):
        done = run_cli("trainer", "run", "--config", str(cfg), "--continue", *extra, timeout=1200)
        text = done.stdout + done.stderr
        resume_steps.append(int(text.split("resuming at step ")[1].split()[0]))
    runs = _sd_scripts_lr(t)
    assert len(runs) == 3, runs
    k1, k2 = resume_steps
    logged = {s: v for s, v in runs[0].items() if s <= k1}  # the stopped process: up to its last state
    logged.update({k1 + s: v for s, v in runs[1].items()})  # a continuation counts from 0 (sd-scripts #1999)
    logged.update({k2 + s: v for s, v in runs[2].items()})
    expected = _uninterrupted_lr(scheduler, 2, 9)
    assert sorted(logged) == list(range(1, 10)), f"resumed at {k1}, {k2}; per process: {runs}"
    pairs = [(s, f"{logged[s]:.3g}", f"{expected[s]:.3g}") for s in range(1, 10)]
    assert all(logged[s] == pytest.approx(expected[s], rel=1e-5, abs=1e-12) for s in range(1, 10)), (
        f"{scheduler}: resumed at {k1} and {k2}; (step, logged, uninterrupted): {pairs}")
    st = read_model(t.status_path, TrainerStatus)
    assert st.state == "finished" and st.step == 9
    assert not continuation_staging(t).exists()  # fault 9: no empty .continue-staging/ left behind


def continuation_staging(t: Trial) -> Path:
    from trainer.sd_scripts.continuation import staging_dir

    return staging_dir(t)


def test_a_copy_up_to_a_state_goes_on_in_its_own_folder(setup):
    """What a sweep retry does with its interrupted trial (trainer.outputs.copy_run_until, then --continue in
    the new folder): sd-scripts resumes from the copied state, and the source folder stays as it was."""
    from trainer.backends.sd_scripts import SdScriptsBackend
    from trainer.outputs import copy_run_until
    from shared.config import load_config

    root, model = setup
    cfg = config(root, model, "src", epochs=2)
    run_cli("trainer", "run", "--config", str(cfg), "--new", timeout=1200)
    src, dest = Trial(root / "src"), Trial(root / "dest")
    before = {str(p.relative_to(src.root)): p.read_bytes() for p in src.root.rglob("*") if p.is_file()
              and "realtime_evaluations" not in p.parts}
    point = SdScriptsBackend().find_resume_point(load_config(cfg), src)
    assert point is not None and point.step == 6, point
    copy_run_until(src, dest, "lora", point.state_dir, point.step, point.epoch)

    run_cli("trainer", "run", "--config", str(cfg), "--output-dir", str(dest.root), "--continue", "--steps", "2",
            timeout=1200)
    st = read_model(dest.status_path, TrainerStatus)
    assert st.state == "finished" and st.step == 8, st
    assert inspect(dest.checkpoint_path("lora")).metadata_int("ss_steps") == 8
    assert dest.checkpoint_path("lora-000002").read_bytes() == before["lora.safetensors"], "the final kept by name"
    history = read_model(dest.params_path, Params).history
    assert [h.mode for h in history] == ["new", "continue"] and history[1].resumed_at_step == 6
    after = {str(p.relative_to(src.root)): p.read_bytes() for p in src.root.rglob("*") if p.is_file()
             and "realtime_evaluations" not in p.parts}
    assert after == before, "the source folder was changed"
