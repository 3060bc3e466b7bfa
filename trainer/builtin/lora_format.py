"""peft LoRA weights <-> the kohya/sd-scripts LoRA file format that WebUI, ComfyUI and diffusers read.

kohya keys: ``<kohya module name>.lora_down.weight`` (peft's lora_A), ``.lora_up.weight`` (lora_B) and
``.alpha`` (a scalar), with module names from ``shared.kohya_names``: SD 1.x ``lora_unet_down_blocks_...``
and ``lora_te_text_model_encoder_layers_...``; SDXL, as sd-scripts' ``sdxl_train_network.py`` writes them,
``lora_unet_input_blocks_...`` (the original UNet layout) and ``lora_te1_...`` / ``lora_te2_...``.
"""

from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path

import torch

from shared.config import Family
from shared.kohya_names import Component, KohyaTable

UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2"]
TEXT_ENCODER_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]

# What sd-scripts writes for each family (library/sai_model_spec.py, train_network.py).
BASE_MODEL_VERSION: dict[Family, str] = {"sd1": "sd_v1", "sdxl": "sdxl_base_v1-0"}
ARCHITECTURE: dict[Family, str] = {"sd1": "stable-diffusion-v1/lora", "sdxl": "stable-diffusion-xl-v1-base/lora"}


def to_kohya(peft_state: dict[str, torch.Tensor], root: torch.nn.Module, component: Component, table: KohyaTable,
             alpha: float) -> dict[str, torch.Tensor]:
    """Convert ``get_peft_model_state_dict(root)`` output (``<path>.lora_A.weight``...) to kohya keys.

    Names come from the kohya table (``shared.kohya_names``), not from ``root``'s module paths: under
    transformers 5 the text encoder has no ``text_model.`` level, but kohya's names keep it."""
    names = table.names_for(root, component)
    out: dict[str, torch.Tensor] = {}
    for key, tensor in peft_state.items():
        for peft_part, kohya_part in ((".lora_A.weight", "lora_down.weight"), (".lora_B.weight", "lora_up.weight")):
            if key.endswith(peft_part):
                name = names.get(id(root.get_submodule(key[: -len(peft_part)])))
                if name is None:
                    raise ValueError(f"trained module {key[: -len(peft_part)]!r} of the {component} has no "
                                     "kohya name")
                out[f"{name}.{kohya_part}"] = tensor.detach().to("cpu", torch.float32).contiguous()
                out[f"{name}.alpha"] = torch.tensor(float(alpha))
                break
        else:
            raise ValueError(f"unexpected LoRA key {key!r}")
    return out


def sd_scripts_metadata(*, output_name: str, epoch: int, step: int, num_epochs: int, dim: int, alpha: float,
                        learning_rate: float, started_at: datetime, resolution: int, train_text_encoder: bool,
                        seed: int, num_train_images: int, family: Family = "sd1") -> dict[str, str]:
    """The ``ss_*`` and ``modelspec.*`` metadata sd-scripts writes (the subset tools read), as strings."""
    return {
        "ss_output_name": output_name,
        "ss_epoch": str(epoch),
        "ss_steps": str(step),
        "ss_num_epochs": str(num_epochs),
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(dim),
        "ss_network_alpha": str(alpha),
        "ss_learning_rate": str(learning_rate),
        "ss_base_model_version": BASE_MODEL_VERSION[family],
        "ss_training_started_at": str(started_at.replace(tzinfo=timezone.utc).timestamp()),
        "ss_training_finished_at": str(datetime.now(timezone.utc).timestamp()),
        "ss_resolution": f"({resolution}, {resolution})",
        "ss_network_train_unet_only": str(not train_text_encoder),
        "ss_seed": str(seed),
        "ss_num_train_images": str(num_train_images),
        "sshs_model_hash": "",
        "modelspec.architecture": ARCHITECTURE[family],
        "modelspec.resolution": f"{resolution}x{resolution}",
        "modelspec.implementation": "https://github.com/Stability-AI/generative-models",
        "modelspec.title": output_name,
        "epochscope.trainer": "builtin",
    }


def save_atomic(tensors: dict[str, torch.Tensor], metadata: dict[str, str], path: Path) -> None:
    """Write to a hidden temp name in the same folder, fsync, then rename: watchers never see half a file."""
    from safetensors.torch import save_file

    tmp = path.with_name(f".{path.name}.tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
