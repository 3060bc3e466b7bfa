"""Which model family a base model or a network file belongs to: SD 1.x (``sd1``) or SDXL (``sdxl``).

Told from what is on disk, never by loading weights: a diffusers folder's ``model_index.json`` and
folders, a single-file checkpoint's tensor names (read from the safetensors header), a LoRA file's
key names and, failing those, its ``ss_base_model_version`` / ``modelspec.architecture`` metadata.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

from shared.config import DEMO_PREFIX, Family

DEMO_FAMILIES: dict[str, Family] = {"tiny": "sd1", "tiny-sdxl": "sdxl"}
FAMILY_NAMES: dict[Family, str] = {"sd1": "SD 1.x", "sdxl": "SDXL"}

# Single-file checkpoints (ldm layout): SDXL has two embedders and the size-conditioning label_emb.
_SDXL_CHECKPOINT_KEYS = ("conditioner.embedders.1.", "model.diffusion_model.label_emb.")
_SD1_CHECKPOINT_KEYS = ("cond_stage_model.", "model.diffusion_model.input_blocks.")

# Network module names, dots as underscores (every layout of shared.lora_key_formats), that only one family
# has: SDXL's second text encoder, size conditioning, attention depth > 1 (SD 1.x has one transformer block per
# attention), cross-attention in the first up block (ldm output_blocks 0-2); SD 1.x's fourth down/up block,
# ldm blocks 9-11, cross-attention in the first down block (ldm input_blocks 1-2), its lone "lora_te_" encoder.
_SDXL_LORA_MARKERS = re.compile(r"^(lora_te1_|lora_te2_|text_encoders_clip_g_|text_encoder_2_|clip_g_)"
                                r"|(^|_)(label_emb|add_embedding)_|transformer_blocks_[1-9]|up_blocks_0_attentions_"
                                r"|output_blocks_[0-2]_1_(proj_|transformer_blocks_|norm)")
_SD1_LORA_MARKERS = re.compile(r"^lora_te_|down_blocks_3_|up_blocks_3_|down_blocks_0_attentions_"
                               r"|(input|output)_blocks_(9|10|11)_|input_blocks_[12]_1_(proj_|transformer_blocks_|norm)")
# Failing those, sd-scripts' convention: SDXL's UNet in the ldm layout, SD 1.x's in the diffusers one.
_SDXL_LORA_PREFIXES = ("lora_unet_input_blocks_", "lora_unet_output_blocks_", "lora_unet_middle_block_")
_SD1_LORA_PREFIXES = ("lora_unet_down_blocks_", "lora_unet_up_blocks_", "lora_unet_mid_block_")


def family_of_base(base: str) -> Family | None:
    """The family of ``model.base`` (a demo name, a diffusers folder or a single-file .safetensors);
    None when it cannot be told (missing, a hub id, an unknown layout)."""
    if base.startswith(DEMO_PREFIX):
        return DEMO_FAMILIES.get(base[len(DEMO_PREFIX):])
    path = Path(base)
    if path.is_dir():
        return _family_of_folder(path)
    if path.is_file() and path.suffix == ".safetensors":
        from shared.safetensors_info import inspect

        return family_of_checkpoint_keys(inspect(path).tensor_names)
    return None


def _family_of_folder(path: Path) -> Family | None:
    if (path / "text_encoder_2").is_dir() or (path / "tokenizer_2").is_dir():
        return "sdxl"
    try:
        index = json.loads((path / "model_index.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        index = None
    if isinstance(index, dict):
        return "sdxl" if "XL" in str(index.get("_class_name", "")) else "sd1"
    try:
        unet = json.loads((path / "unet" / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return "sdxl" if unet.get("addition_embed_type") == "text_time" else "sd1"


def family_of_checkpoint_keys(names: Iterable[str]) -> Family | None:
    names = list(names)
    if any(n.startswith(_SDXL_CHECKPOINT_KEYS) for n in names):
        return "sdxl"
    if any(n.startswith(_SD1_CHECKPOINT_KEYS) for n in names):
        return "sd1"
    return None


def family_of_lora(names: Iterable[str], metadata: Mapping[str, str] | None = None) -> Family | None:
    """The family a network file was trained for: from module names only one family has, else its metadata,
    else sd-scripts' naming convention (None when nothing tells)."""
    names = list(names)
    flat = [n.replace(".", "_") for n in names]
    sdxl = any(_SDXL_LORA_MARKERS.search(n) for n in flat)
    sd1 = any(_SD1_LORA_MARKERS.search(n) for n in flat)
    if sdxl != sd1:
        return "sdxl" if sdxl else "sd1"
    told = _family_of_lora_metadata(metadata or {})
    if told is not None:
        return told
    if any(n.startswith(_SDXL_LORA_PREFIXES) for n in names):
        return "sdxl"
    if any(n.startswith(_SD1_LORA_PREFIXES) for n in names):
        return "sd1"
    return None


def _family_of_lora_metadata(meta: Mapping[str, str]) -> Family | None:
    version = str(meta.get("ss_base_model_version", "")).lower()
    arch = str(meta.get("modelspec.architecture", "")).lower()
    if version.startswith("sdxl") or arch.startswith("stable-diffusion-xl"):
        return "sdxl"
    if version.startswith(("sd_v1", "sd_v2")) or arch.startswith(("stable-diffusion-v1", "stable-diffusion-v2")):
        return "sd1"
    return None
