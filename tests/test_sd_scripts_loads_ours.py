"""A LoRA file from OUR built-in trainer (UNet + text encoder) loads, strictly, into a real kohya-ss
sd-scripts' ``networks.lora`` on the SD-1.5-architecture random model, run with sd-scripts' own venv.
Runs when SD_SCRIPTS_DIR and SD_SCRIPTS_PYTHON are set (docs/sd-scripts.md)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from conftest import REPO_ROOT, run_cli
from shared.trial import Trial
from _disk import FULL_SIZE_MODEL

SD_DIR, SD_PY = os.environ.get("SD_SCRIPTS_DIR"), os.environ.get("SD_SCRIPTS_PYTHON")
pytestmark = [FULL_SIZE_MODEL, pytest.mark.sdscripts, pytest.mark.slow, pytest.mark.skipif(
    not (SD_DIR and SD_PY), reason="set SD_SCRIPTS_DIR and SD_SCRIPTS_PYTHON to load our LoRA files with a real "
                                   "sd-scripts (docs/sd-scripts.md says how)")]

# Runs in sd-scripts' venv with sd-scripts on sys.path: load the SD-1.5 folder the way train_network.py does,
# build a network from our file, apply it, load it strictly and see the text encoder's output move.
LOAD_WITH_SD_SCRIPTS = r"""
import argparse, json, sys
import torch
sd_dir, model_dir, lora_file = sys.argv[1:4]
sys.path.insert(0, sd_dir)
from safetensors.torch import load_file
from library import train_util
import networks.lora as lora

args = argparse.Namespace(pretrained_model_name_or_path=model_dir, v2=False, vae=None)
text_encoder, vae, unet, _ = train_util._load_target_model(args, torch.float32)
text_encoder.to(torch.float32); unet.to(torch.float32)
weights = load_file(lora_file)
network, weights_sd = lora.create_network_from_weights(1.0, lora_file, vae, text_encoder, unet, for_inference=True)
ids = torch.tensor([[49406, 320, 1929, 49407] + [49407] * 73])
with torch.no_grad():
    before = text_encoder(ids)[0]
    # as gen_img.py does: apply (which detaches the wrapped modules from the network's state dict), then load;
    # strict=True fails on any key of ours that sd-scripts did not make a module for, and on any it expects
    network.apply_to(text_encoder, unet)
    network.load_state_dict(weights, strict=True)
    after = text_encoder(ids)[0]
file_modules = sorted({k.split(".")[0] for k in weights})
print(json.dumps({
    "te_modules": len(network.text_encoder_loras), "unet_modules": len(network.unet_loras),
    "file_te_modules": sum(m.startswith("lora_te") for m in file_modules),
    "file_unet_modules": sum(m.startswith("lora_unet") for m in file_modules),
    "network_keys": len(network.state_dict()), "file_keys": len(weights),
    "te_output_change": float((after - before).abs().max()),
}))
"""


@pytest.fixture(scope="module")
def our_lora(tmp_path_factory) -> tuple[Path, Path]:
    from PIL import Image, ImageDraw

    from _sd_scripts_helpers import build_sd15_random

    root = tmp_path_factory.mktemp("ours")
    model = build_sd15_random(REPO_ROOT / ".cache" / "sd15-random")
    data = root / "data" / "1_subject"
    data.mkdir(parents=True)
    img = Image.new("RGB", (64, 64), (40, 60, 200))
    ImageDraw.Draw(img).ellipse((16, 16, 48, 48), fill=(220, 30, 30))
    img.save(data / "img.png")
    (data / "img.txt").write_text("a red circle, sks")
    cfg = root / "ours.toml"
    cfg.write_text(f"""
[model]
base = "{model}"
[dataset]
train_dir = "{root}/data"
resolution = 64
[network]
dim = 2
alpha = 1.0
train_text_encoder = true
[training]
backend = "builtin"
device = "cpu"
max_train_steps = 1
save_state = false
learning_rate = 1e-2
seed = 0
[output]
dir = "{root}/trial"
name = "ours"
""")
    run_cli("trainer", "run", "--config", str(cfg), "--new", timeout=1800)
    t = Trial(root / "trial")
    final = t.checkpoint_path("ours")
    assert final.exists(), sorted(p.name for p in (root / "trial").iterdir())
    return model, final


def test_sd_scripts_loads_our_unet_and_text_encoder_lora_strictly(our_lora):
    model, lora_file = our_lora
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    out = subprocess.run([SD_PY, "-c", LOAD_WITH_SD_SCRIPTS, SD_DIR, str(model), str(lora_file)], cwd=SD_DIR, env=env,
                         capture_output=True, text=True, timeout=1200)
    assert out.returncode == 0, f"sd-scripts could not load {lora_file.name}:\n{out.stderr[-4000:]}"
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["file_te_modules"] > 0, "our file has no text-encoder modules"
    assert r["te_modules"] == r["file_te_modules"] == 72, r  # 12 layers × q/k/v/out_proj/fc1/fc2
    assert r["unet_modules"] == r["file_unet_modules"] > 0, r
    assert r["network_keys"] == r["file_keys"], r
    assert r["te_output_change"] > 0, "the text-encoder LoRA changed nothing once applied"
