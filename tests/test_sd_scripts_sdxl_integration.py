"""SDXL against a real kohya-ss sd-scripts checkout and its own venv, on CPU: our trainer runs the real
``sdxl_train_network.py`` on an SDXL-1.0-architecture model with random weights (built offline by
``tests/_sd_scripts_helpers.build_sdxl_random``), continues it with ``--continue``, and the evaluator scores
every checkpoint on that model with every key applied. Runs when SD_SCRIPTS_DIR and SD_SCRIPTS_PYTHON are
set and the machine has the memory (sd-scripts holds the fp32 SDXL model: about 16 GB)."""

from __future__ import annotations

import json
import os

import pytest

from conftest import REPO_ROOT, run_cli
from shared.jsonio import read_model
from shared.records import CheckpointMetrics, Params, TrainerStatus
from shared.safetensors_info import inspect
from shared.trial import Trial
from _disk import FULL_SIZE_MODEL

SD_DIR, SD_PY = os.environ.get("SD_SCRIPTS_DIR"), os.environ.get("SD_SCRIPTS_PYTHON")
NEEDED_GB = 20


def _memory_gb() -> float:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30


pytestmark = [FULL_SIZE_MODEL, pytest.mark.sdscripts, pytest.mark.slow,
              pytest.mark.skipif(not (SD_DIR and SD_PY), reason="set SD_SCRIPTS_DIR and SD_SCRIPTS_PYTHON to test "
                                 "against a real sd-scripts (docs/sd-scripts.md says how)"),
              pytest.mark.skipif(_memory_gb() < NEEDED_GB, reason=f"SDXL with sd-scripts on the CPU needs about "
                                 f"{NEEDED_GB} GB of memory; this machine has {_memory_gb():.0f} GB")]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, demo_assets):
    from _sd_scripts_helpers import build_sdxl_random, tokenizer_cache_and_images

    root = tmp_path_factory.mktemp("sdxl")
    model = build_sdxl_random(REPO_ROOT / ".cache" / "sdxl-random")
    tokenizer_cache_and_images(root, demo_assets.train_dir, images=1)
    return root, model


def test_sdxl_trains_continues_and_every_checkpoint_is_scored(setup):
    root, model = setup
    cfg = root / "sdxl.toml"
    cfg.write_text(f"""
[model]
base = "{model}"
[dataset]
train_dir = "{root}/data"
resolution = 64
[network]
dim = 2
alpha = 1.0
[training]
backend = "sd-scripts"
max_train_epochs = 2
save_every_n_epochs = 1
learning_rate = 1e-2
cache_text_encoder_outputs = true
tokenizer_cache_dir = "{root}/tok"
[output]
dir = "{root}/trial"
name = "xl"
[evaluation]
prompts = ["a red circle, sks"]
num_samples = 1
steps = 2
guidance_scale = 5.0
clip_model = "demo:tiny-clip"
""")
    run_cli("trainer", "run", "--config", str(cfg), "--new", timeout=3000)
    t = Trial(root / "trial")
    st = read_model(t.status_path, TrainerStatus)
    assert (st.state, st.step, st.epoch) == ("finished", 2, 2), st
    params = read_model(t.params_path, Params)
    assert params.config.model.family == "sdxl" and params.command[1].endswith("sdxl_train_network.py")
    assert "--cache_text_encoder_outputs" in params.command and "--no_half_vae" in params.command
    info = inspect(t.checkpoint_path("xl"))
    assert info.metadata["ss_base_model_version"].startswith("sdxl") and info.metadata_int("ss_steps") == 2
    assert all(n.startswith("lora_unet_") for n in info.tensor_names)

    run_cli("trainer", "run", "--config", str(cfg), "--continue", "--epochs", "1", timeout=3000)  # 1 more
    st = read_model(t.status_path, TrainerStatus)
    assert (st.state, st.step, st.epoch) == ("finished", 3, 3), st
    assert [c.stem for c in t.checkpoints("xl")] == ["xl-000001", "xl-000002", "xl"]
    assert inspect(t.checkpoint_path("xl")).metadata_int("ss_steps") == 3

    run_cli("evaluator", "run", "--dir", str(t.root), "--device", "cpu", "--dtype", "bf16", timeout=3000)
    scored = {}
    for path in t.evaluations_dir.glob("*/metrics.json"):
        record = read_model(path, CheckpointMetrics)
        scored[record.checkpoint] = record
    assert {"xl-000001", "xl-000002", "xl"} <= set(scored), sorted(scored)
    for name in ("xl-000001", "xl-000002", "xl"):
        record = scored[name]
        keys = len(inspect(t.checkpoint_path(name)).tensor_names)
        assert record.generation["network"] == f"LoRA ({keys // 3} modules)", record.generation  # every key applied
        assert record.generation.get("size_conditioning"), "SDXL size conditioning is recorded"
        assert all(v is None or v == v for v in json.loads(record.model_dump_json())["metrics"].values())
