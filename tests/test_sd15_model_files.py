"""The random SD-1.5 folder from _sd_scripts_helpers is read weight for weight by both transformers majors: ours
(5.x, which wrote it) and sd-scripts' venv (4.x), whose CLIPTextModel wants every key under ``text_model.``.
The sd-venv checks run when SD_SCRIPTS_PYTHON is set (docs/sd-scripts.md)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from conftest import REPO_ROOT
from _disk import FULL_SIZE_MODEL

SD_PY = os.environ.get("SD_SCRIPTS_PYTHON")
needs_sd_python = pytest.mark.skipif(not SD_PY, reason="set SD_SCRIPTS_PYTHON (sd-scripts' venv Python, transformers "
                                                        "4.x) to check that it reads the random SD-1.5 model")

# Runs in sd-scripts' venv: load the text encoder as transformers 4 does and compare it with the file.
LOAD_WITH_TRANSFORMERS4 = r"""
import json, sys, torch
from pathlib import Path
from safetensors.torch import load_file
import transformers
d = Path(sys.argv[1])
cls = getattr(transformers, sys.argv[2] if len(sys.argv) > 2 else "CLIPTextModel")
model, info = cls.from_pretrained(str(d), output_loading_info=True)
saved = load_file(str(d / "model.safetensors"))
state = model.state_dict()
print(json.dumps({
    "version": transformers.__version__,
    "info": {k: sorted(str(x) for x in v) for k, v in info.items()},
    "file_keys": sorted(saved), "model_keys": sorted(state),
    "unequal": [k for k in saved if k in state and not torch.equal(state[k].to(saved[k].dtype), saved[k])],
}))
"""


def _tiny_clip_dir(dest: Path) -> Path:
    """A tiny CLIPTextModel saved by our transformers 5 (unprefixed keys)."""
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = CLIPTextConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_attention_heads=2, num_hidden_layers=2,
                         max_position_embeddings=8, projection_dim=16, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    CLIPTextModel(cfg).save_pretrained(dest / "text_encoder", safe_serialization=True)
    return dest


def _load_with_sd_venv(text_encoder_dir: Path, cls: str = "CLIPTextModel") -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    out = subprocess.run([SD_PY, "-c", LOAD_WITH_TRANSFORMERS4, str(text_encoder_dir), cls], capture_output=True,
                         text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _safetensors_keys(path: Path) -> list[str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return list(f.keys())


def test_hub_names_are_transformers4_names_and_transformers5_still_reads_them(tmp_path):
    from transformers import CLIPTextModel

    from shared.text_encoder_files import hub_key, write_hub_names

    assert hub_key("encoder.layers.0.mlp.fc1.weight") == "text_model.encoder.layers.0.mlp.fc1.weight"
    assert hub_key("text_model.final_layer_norm.bias") == "text_model.final_layer_norm.bias"
    assert hub_key("text_projection.weight") == "text_projection.weight"
    d = _tiny_clip_dir(tmp_path) / "text_encoder"
    before = CLIPTextModel.from_pretrained(str(d)).state_dict()
    written_flat = not all(k.startswith("text_model.") for k in _safetensors_keys(d / "model.safetensors"))
    assert write_hub_names(tmp_path) is written_flat, "renames only the flat names transformers 5 writes"
    assert write_hub_names(tmp_path) is False, "second call must be a no-op"
    keys = _safetensors_keys(d / "model.safetensors")
    assert keys and all(k.startswith("text_model.") for k in keys), keys
    assert not list(d.glob(".*tmp")), "temporary file left behind"
    model, info = CLIPTextModel.from_pretrained(str(d), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    after = model.state_dict()
    assert all(after[k].equal(before[k]) for k in before)


@needs_sd_python
def test_transformers4_needs_the_fix(tmp_path):
    """Without the rename, sd-scripts' transformers 4 would load every text-encoder weight as random."""
    from shared.text_encoder_files import write_hub_names

    d = _tiny_clip_dir(tmp_path) / "text_encoder"
    r = _load_with_sd_venv(d)
    assert r["version"].startswith("4."), r["version"]
    assert len(r["info"]["missing_keys"]) == len(r["model_keys"]), r["info"]
    write_hub_names(tmp_path)
    r = _load_with_sd_venv(d)
    assert not any(r["info"].values()), r["info"]
    assert r["file_keys"] == r["model_keys"] and not r["unequal"]


@needs_sd_python
@pytest.mark.parametrize("folder, cls", [("tiny-sd/text_encoder", "CLIPTextModel"),
                                         ("tiny-sdxl/text_encoder", "CLIPTextModel"),
                                         ("tiny-sdxl/text_encoder_2", "CLIPTextModelWithProjection")])
def test_sd_venv_reads_every_text_encoder_weight_of_the_demo_models(demo_assets, folder, cls):
    """The demo models are diffusers folders we write; sd-scripts (the demo with backend = "sd-scripts") reads
    them with transformers 4."""
    r = _load_with_sd_venv(demo_assets.root / folder, cls)
    assert r["version"].startswith("4."), r["version"]
    assert r["info"] == {"missing_keys": [], "unexpected_keys": [], "mismatched_keys": [], "error_msgs": []}, r["info"]
    assert r["file_keys"] == r["model_keys"] and not r["unequal"]


@pytest.fixture(scope="module")
def sd15():
    from _sd_scripts_helpers import build_sd15_random

    return build_sd15_random(REPO_ROOT / ".cache" / "sd15-random")


@needs_sd_python
@pytest.mark.slow
@FULL_SIZE_MODEL
def test_sd_venv_reads_every_text_encoder_weight_of_the_random_sd15(sd15):
    r = _load_with_sd_venv(sd15 / "text_encoder")
    assert r["version"].startswith("4."), r["version"]
    assert r["info"] == {"missing_keys": [], "unexpected_keys": [], "mismatched_keys": [], "error_msgs": []}, r["info"]
    assert r["file_keys"] == r["model_keys"] and len(r["file_keys"]) == 196  # 12 layers × 16 + 4
    assert "text_model.encoder.layers.11.mlp.fc2.weight" in r["file_keys"]
    assert not r["unequal"], f"weights differ from the file: {r['unequal'][:5]}"


@needs_sd_python
@pytest.mark.slow
@FULL_SIZE_MODEL
def test_our_transformers5_reads_every_text_encoder_weight_of_the_random_sd15(sd15):
    import torch
    from safetensors.torch import load_file
    from transformers import CLIPTextModel

    d = sd15 / "text_encoder"
    model, info = CLIPTextModel.from_pretrained(str(d), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    saved = load_file(str(d / "model.safetensors"))
    assert all(k.startswith("text_model.") for k in saved)
    state = model.state_dict()
    for name in ("encoder.layers.5.mlp.fc1.weight", "embeddings.token_embedding.weight", "final_layer_norm.weight"):
        key = name if name in saved else "text_model." + name
        ours = state[name] if name in state else state["text_model." + name]
        assert torch.equal(ours.to(saved[key].dtype), saved[key]), name
