"""Real sd-scripts / LyCORIS SDXL LoRA files (tests/data/kohya_sdxl, made by its make_files.py): they parse as
safetensors, the manifest describes them, and every key names a module of the SDXL architecture with the
shape the file implies, through ``shared.kohya_names.KohyaTable.sdxl``.

The SDXL models are built on the meta device (no weights, no memory) from ``tests/_sdxl_configs.py``."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path

import pytest
from safetensors import safe_open

from _sdxl_configs import TE1_LAYERS, TE2_LAYERS, sdxl_meta_models, sdxl_unet_config

DATA = Path(__file__).parent / "data" / "kohya_sdxl"
MANIFEST = json.loads((DATA / "manifest.json").read_text())
FILES = [entry["path"] for entry in MANIFEST["files"]]
MAX_BYTES = 1_500_000

# The keys each kind of module carries (suffix after the module name); LyCORIS may add a tucker core
# (hada_t1/_t2, lokr_t2) or keep LoKr's second factor whole (lokr_w2).
SUFFIXES = {
    "lora": {"alpha", "lora_down.weight", "lora_up.weight"},
    "loha": {"alpha", "hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"},
    "lokr": {"alpha", "lokr_w1", "lokr_w2_a", "lokr_w2_b"},
}
OPTIONAL = {"hada_t1", "hada_t2", "lokr_t2", "lokr_w2", "lokr_w1_a", "lokr_w1_b", "dora_scale"}


def _read(rel: str) -> tuple[dict[str, tuple[int, ...]], dict[str, str], set[str]]:
    """(key -> shape, metadata, dtypes) of one file, read with safetensors only (never pickle)."""
    with safe_open(str(DATA / rel), framework="pt") as f:
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        dtypes = {str(f.get_slice(k).get_dtype()) for k in f.keys()}
        return shapes, dict(f.metadata() or {}), dtypes


def _modules(shapes: dict[str, tuple[int, ...]]) -> dict[str, dict[str, tuple[int, ...]]]:
    out: dict[str, dict[str, tuple[int, ...]]] = defaultdict(dict)
    for key, shape in shapes.items():
        module, _, suffix = key.partition(".")
        out[module][suffix] = shape
    return out


def test_folder_and_manifest_agree() -> None:
    on_disk = sorted(p.relative_to(DATA).as_posix() for p in DATA.glob("*/*.safetensors"))
    assert sorted(FILES) == on_disk
    assert {"lora_unet_te/lora_unet_te.safetensors", "lora_unet_te/lora_unet_te-000001.safetensors",
            "lora_unet_only/lora_unet_only.safetensors", "locon/locon.safetensors"} <= set(FILES)
    for net in MANIFEST["networks"]:
        assert "sdxl_train_network.py" in net["command"] and "--mixed_precision no" in net["command"]


@pytest.mark.parametrize("entry", MANIFEST["files"], ids=FILES)
def test_file_parses_and_matches_manifest(entry: dict) -> None:
    path = DATA / entry["path"]
    assert path.stat().st_size == entry["bytes"] < MAX_BYTES
    shapes, meta, dtypes = _read(entry["path"])
    assert len(shapes) == entry["keys"]
    assert int(meta["ss_epoch"]) == entry["ss_epoch"] and int(meta["ss_steps"]) == entry["ss_steps"]
    assert meta["ss_network_module"] == entry["network_module"]
    assert meta["ss_base_model_version"].startswith("sdxl")
    assert "F16" in dtypes and dtypes <= {"F16", "F32"}  # --save_precision fp16 (LyCORIS may keep a scalar fp32)
    sides = {k.split("_")[1] for k in shapes}
    assert ("unet" in sides) == entry["trains_unet"]
    assert bool(sides & {"te1", "te2"}) == entry["trains_text_encoder"]
    if entry["trains_text_encoder"]:
        assert {"te1", "te2"} <= sides, "an SDXL text-encoder LoRA adapts both encoders"
    # trimming keeps whole modules: every module has its kind's full set of keys
    expected = SUFFIXES[entry["kind"] if entry["kind"] in SUFFIXES else "lora"]
    for module, keys in _modules(shapes).items():
        assert set(keys) - OPTIONAL >= expected - {"lokr_w2_a", "lokr_w2_b"}, module
        assert set(keys) <= expected | OPTIONAL, module


@pytest.fixture(scope="module")
def sdxl() -> tuple:
    kohya_names = pytest.importorskip("shared.kohya_names")
    if not hasattr(kohya_names.KohyaTable, "sdxl"):
        pytest.skip("shared.kohya_names.KohyaTable.sdxl is not there yet")
    models = sdxl_meta_models()
    table = kohya_names.KohyaTable.sdxl(sdxl_unet_config(), TE1_LAYERS, TE2_LAYERS)
    return table, table.resolve(models), models


def _in_out(module) -> tuple[int, int, tuple[int, ...]]:
    """(in features/channels, out features/channels, kernel) of a Linear or Conv2d."""
    if hasattr(module, "in_features"):
        return module.in_features, module.out_features, ()
    return module.in_channels, module.out_channels, tuple(module.kernel_size)


def _shape_problem(module, keys: dict[str, tuple[int, ...]]) -> str | None:
    """Why ``keys`` cannot adapt ``module`` (None when they fit)."""
    n_in, n_out, kernel = _in_out(module)
    k = math.prod(kernel)
    if "lora_down.weight" in keys:
        down, up = keys["lora_down.weight"], keys["lora_up.weight"]
        if down[1] != n_in or tuple(down[2:]) not in ((), kernel) or (kernel and len(down) != 4):
            return f"lora_down {down} vs in {n_in} kernel {kernel}"
        if up[0] != n_out or up[1] != down[0]:
            return f"lora_up {up} vs out {n_out}, rank {down[0]}"
        return None
    if "hada_w1_a" in keys:
        if keys["hada_w1_a"][0] != n_out or keys["hada_w2_a"][0] != n_out:
            return f"hada_w*_a {keys['hada_w1_a']} vs out {n_out}"
        if "hada_t1" in keys:  # tucker: the core carries the kernel, the b factors the input channels
            ok = keys["hada_w1_b"][0] == n_in and tuple(keys["hada_t1"][2:]) == kernel
        else:
            ok = math.prod(keys["hada_w1_b"][1:]) == n_in * k and math.prod(keys["hada_w2_b"][1:]) == n_in * k
        return None if ok else f"hada_w*_b {keys['hada_w1_b']} vs in {n_in} kernel {kernel}"
    if "lokr_w1" in keys:
        w1 = keys["lokr_w1"]
        if "lokr_w2" in keys:
            w2_out, w2_in = keys["lokr_w2"][0], math.prod(keys["lokr_w2"][1:])
        elif "lokr_t2" in keys:
            w2_out, w2_in = keys["lokr_w2_a"][1], keys["lokr_w2_b"][1] * math.prod(keys["lokr_t2"][2:])
        else:
            w2_out, w2_in = keys["lokr_w2_a"][0], math.prod(keys["lokr_w2_b"][1:])
        if w1[0] * w2_out != n_out or w1[1] * w2_in != n_in * k:
            return f"lokr {w1} x ({w2_out}, {w2_in}) vs out {n_out}, in {n_in} kernel {kernel}"
        return None
    return f"unknown keys {sorted(keys)}"


@pytest.mark.parametrize("rel", FILES)
def test_every_key_names_an_sdxl_module_of_the_right_shape(rel: str, sdxl: tuple) -> None:
    table, resolved, _ = sdxl
    shapes, _, _ = _read(rel)
    unknown, unresolved, wrong = [], [], []
    for module, keys in sorted(_modules(shapes).items()):
        if module not in table:
            unknown.append(module)
        elif module not in resolved:
            unresolved.append(f"{module} -> {table.modules[module].component}:{table.modules[module].path}")
        elif (problem := _shape_problem(resolved[module], keys)) is not None:
            wrong.append(f"{module} ({table.modules[module].path}): {problem}")
    assert not unknown, f"{len(unknown)} module names not in KohyaTable.sdxl: {unknown}"
    assert not unresolved, f"{len(unresolved)} names not found in the diffusers SDXL models: {unresolved}"
    assert not wrong, f"{len(wrong)} shape mismatches: {wrong}"


def test_table_covers_the_real_sdxl_module_families(sdxl: tuple) -> None:
    """Every name pattern the README lists from the untrimmed files is in the table (names, not files: the
    files here are trimmed)."""
    table, _, _ = sdxl
    sample = ["lora_te1_text_model_encoder_layers_11_mlp_fc2", "lora_te2_text_model_encoder_layers_31_self_attn_q_proj",
              "lora_unet_input_blocks_8_1_transformer_blocks_9_ff_net_2", "lora_unet_input_blocks_1_0_in_layers_2",
              "lora_unet_input_blocks_4_0_skip_connection", "lora_unet_input_blocks_3_0_op",
              "lora_unet_middle_block_2_emb_layers_1", "lora_unet_output_blocks_2_2_conv",
              "lora_unet_output_blocks_5_2_conv", "lora_unet_output_blocks_8_0_out_layers_3",
              "lora_unet_output_blocks_0_1_proj_out"]
    assert [n for n in sample if n not in table] == []


def test_tokenizer_cache_serves_sd1_and_sdxl(tmp_path: Path) -> None:
    """``python -m trainer tokenizer-cache DIR`` fills the two folders sdxl_train_util.load_tokenizers reads:
    ViT-L's (also SD 1.x's) and bigG's, which pads with "!" (id 0)."""
    from transformers import CLIPTokenizer

    from shared.clip_tokenizer import (SD_SCRIPTS_TOKENIZER_2_SUBDIR, SD_SCRIPTS_TOKENIZER_SUBDIR,
                                       write_sd_scripts_tokenizer_cache)

    assert write_sd_scripts_tokenizer_cache(tmp_path) == tmp_path / SD_SCRIPTS_TOKENIZER_SUBDIR
    assert SD_SCRIPTS_TOKENIZER_2_SUBDIR == "laion_CLIP-ViT-bigG-14-laion2B-39B-b160k"
    tok1 = CLIPTokenizer.from_pretrained(tmp_path / SD_SCRIPTS_TOKENIZER_SUBDIR)
    tok2 = CLIPTokenizer.from_pretrained(tmp_path / SD_SCRIPTS_TOKENIZER_2_SUBDIR)
    assert (tok1.pad_token, tok2.pad_token, tok2.pad_token_id) == ("<|endoftext|>", "!", 0)
    ids = tok1("a red circle, sks").input_ids
    assert ids == tok2("a red circle, sks").input_ids and ids[0] == 49406 and ids[-1] == 49407


def test_random_sdxl_writer_streams_a_valid_deterministic_file(tmp_path: Path) -> None:
    """build_sdxl_random's writer: one tensor at a time, norms 1, biases 0, weights N(0, 0.02) seeded by name."""
    import torch
    from safetensors.torch import load_file

    from _sd_scripts_helpers import _write_random_safetensors

    shapes = {"b.norm1.weight": (8,), "b.norm1.bias": (8,), "a.to_q.weight": (64, 32), "c.conv.weight": (4, 2, 3, 3)}
    _write_random_safetensors(tmp_path / "x.safetensors", "unet", shapes)
    _write_random_safetensors(tmp_path / "y.safetensors", "unet", dict(reversed(list(shapes.items()))))
    x, y = load_file(tmp_path / "x.safetensors"), load_file(tmp_path / "y.safetensors")
    assert {k: tuple(v.shape) for k, v in x.items()} == shapes and all(v.dtype == torch.float16 for v in x.values())
    assert all(torch.equal(x[k], y[k]) for k in shapes)
    assert torch.equal(x["b.norm1.weight"], torch.ones(8, dtype=torch.float16)) and not x["b.norm1.bias"].any()
    assert 0.015 < x["a.to_q.weight"].float().std() < 0.025
