"""Against a real kohya-ss sd-scripts checkout and its own venv, on CPU, with an SD-1.5-architecture model
with random weights built offline. Runs when SD_SCRIPTS_DIR and SD_SCRIPTS_PYTHON are set."""

from __future__ import annotations

import os
import shutil
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

SD_DIR, SD_PY = os.environ.get("SD_SCRIPTS_DIR"), os.environ.get("SD_SCRIPTS_PYTHON")
pytestmark = [pytest.mark.sdscripts, pytest.mark.slow, pytest.mark.skipif(
    not (SD_DIR and SD_PY), reason="set SD_SCRIPTS_DIR and SD_SCRIPTS_PYTHON to test against a real sd-scripts "
                                   "(docs/sd-scripts.md says how)")]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, demo_assets):
    from _sd_scripts_helpers import build_sd15_random

    root = tmp_path_factory.mktemp("sdscripts")
    model = build_sd15_random(REPO_ROOT / ".cache" / "sd15-random")
    run_cli("trainer", "tokenizer-cache", str(root / "tok"))
    data = root / "data" / "1_sks"
    data.mkdir(parents=True)
    for src in sorted((demo_assets.train_dir / "2_circle").glob("*.png"))[:3]:
        shutil.copy(src, data / src.name)
        (data / src.with_suffix(".txt").name).write_text("a red circle, sks")
    return root, model


def config(root: Path, model: Path, out: str, epochs: int) -> Path:
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
learning_rate = 1e-4
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
    assert params.command and params.command[1].endswith("train_network.py") and params.sd_scripts_commit
    before = {p.name: p.read_bytes() for p in t.checkpoint_paths() if p.name != "lora.safetensors"}

    run_cli("trainer", "run", "--config", str(cfg), "--continue", "--steps", "2", timeout=1200)
    st = read_model(t.status_path, TrainerStatus)
    assert st.state == "finished" and st.step == 11, st
    assert inspect(t.checkpoint_path("lora")).metadata_int("ss_steps") == 11
    assert {p.name: p.read_bytes() for p in t.checkpoint_paths() if p.name in before} == before, "history kept"


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
