"""Write a diffusers SD 1.x or SDXL pipeline as one original-layout (ldm) ``.safetensors`` checkpoint, the
layout of the single files people download (``model.diffusion_model.``, ``first_stage_model.``,
``cond_stage_model.transformer.`` or SDXL's ``conditioner.embedders.0.transformer.`` / ``.1.model.``).

For tests of single-file loading: the inverse of diffusers' ``from_single_file`` conversion, written from the
layouts (UNet module places from ``shared.kohya_names.unet_paths``), for any block layout, tiny or full size.
A test loads the file back and compares every tensor with the pipeline it came from.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from shared.kohya_names import unet_paths

UNET = "model.diffusion_model."
VAE = "first_stage_model."
SD1_TE = "cond_stage_model.transformer."
SDXL_TE1 = "conditioner.embedders.0.transformer."
SDXL_TE2 = "conditioner.embedders.1.model."

_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1", "norm2": "out_layers.0",
           "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
_VAE_RESNET = {"conv_shortcut": "nin_shortcut"}
_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _unet_prefixes(config: Mapping[str, Any]) -> dict[str, tuple[str, dict[str, str]]]:
    """diffusers module prefix -> (ldm prefix, child renames) for every UNet module with parameters."""
    paths = unet_paths(config["down_block_types"], config["up_block_types"], config["layers_per_block"],
                       config.get("transformer_layers_per_block", 1) or 1,
                       size_conditioning=config.get("addition_embed_type") == "text_time")
    out: dict[str, tuple[str, dict[str, str]]] = {"conv_norm_out": ("out.0", {})}
    for diff, ldm, family in paths:
        if family == "resnet" and diff.endswith(".conv1"):
            out[diff[: -len(".conv1")]] = (ldm[: -len(".in_layers.2")], _RESNET)
        elif family == "attention" and diff.endswith(".proj_in"):
            out[diff[: -len(".proj_in")]] = (ldm[: -len(".proj_in")], {})
        elif family in ("sampler", "unet_io"):
            out[diff] = (ldm, {})
    return out


def _rename(key: str, prefixes: Mapping[str, tuple[str, dict[str, str]]]) -> str:
    parts = key.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        prefix = ".".join(parts[:cut])
        if prefix in prefixes:
            ldm, children = prefixes[prefix]
            rest = ".".join(parts[cut:])
            for old, new in children.items():
                if rest.startswith(old + "."):
                    rest = new + rest[len(old):]
                    break
            return f"{ldm}.{rest}"
    raise KeyError(f"no ldm place for UNet key {key}")


def unet_to_ldm(state: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    prefixes = _unet_prefixes(config)
    return {UNET + _rename(k, prefixes): v for k, v in state.items()}


def _vae_block(key: str, n_up: int) -> str:
    parts = key.split(".")
    side = parts[0]  # encoder | decoder
    if parts[1] in ("down_blocks", "up_blocks"):
        i = int(parts[2]) if parts[1] == "down_blocks" else n_up - 1 - int(parts[2])
        where = "down" if parts[1] == "down_blocks" else "up"
        if parts[3] == "resnets":
            child = ".".join(parts[5:])
            for old, new in _VAE_RESNET.items():
                child = new + child[len(old):] if child.startswith(old + ".") else child
            return f"{side}.{where}.{i}.block.{parts[4]}.{child}"
        sampler = "downsample" if where == "down" else "upsample"
        return f"{side}.{where}.{i}.{sampler}.{'.'.join(parts[5:])}"  # …samplers.0.conv.weight
    if parts[1] == "mid_block":
        if parts[2] == "resnets":
            return f"{side}.mid.block_{int(parts[3]) + 1}.{'.'.join(parts[4:])}"
        child = ".".join(parts[4:])
        for old, new in _VAE_ATTENTION.items():
            if child.startswith(old + "."):
                return f"{side}.mid.attn_1.{new}{child[len(old):]}"
    if parts[1] == "conv_norm_out":
        return f"{side}.norm_out.{'.'.join(parts[2:])}"
    return key  # conv_in, conv_out, quant_conv, post_quant_conv


def vae_to_ldm(state: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    n_up = len(config["up_block_types"])
    out = {}
    for k, v in state.items():
        ldm = _vae_block(k, n_up)
        if ".mid.attn_1." in ldm and ldm.endswith(".weight") and v.dim() == 2:
            v = v[:, :, None, None]  # the ldm VAE's attention projections are 1x1 convolutions
        out[VAE + ldm] = v
    return out


def clip_to_ldm(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """A ``CLIPTextModel`` under its transformers 4 names (transformers 5 drops ``text_model.``)."""
    return {prefix + (k if k.startswith("text_model.") else "text_model." + k): v for k, v in state.items()}


def open_clip_to_ldm(state: Mapping[str, torch.Tensor], prefix: str = SDXL_TE2) -> dict[str, torch.Tensor]:
    """SDXL's second encoder (``CLIPTextModelWithProjection``) in open_clip's layout: fused q/k/v
    (``in_proj_weight``), ``resblocks``, and ``text_projection`` as a (width, projection) matrix."""
    top = {"text_model.embeddings.token_embedding.weight": "token_embedding.weight",
           "text_model.embeddings.position_embedding.weight": "positional_embedding",
           "text_model.final_layer_norm.weight": "ln_final.weight", "text_model.final_layer_norm.bias": "ln_final.bias"}
    layer = {"self_attn.out_proj": "attn.out_proj", "layer_norm1": "ln_1", "layer_norm2": "ln_2",
             "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"}
    out: dict[str, torch.Tensor] = {prefix + "text_projection": state["text_projection.weight"].T.contiguous(),
                                    prefix + "logit_scale": torch.tensor(4.6052)}
    qkv: dict[str, dict[str, torch.Tensor]] = {}
    for k, v in state.items():
        if k in top:
            out[prefix + top[k]] = v
        elif k.startswith("text_model.encoder.layers."):
            i, rest = k[len("text_model.encoder.layers."):].split(".", 1)
            base = f"{prefix}transformer.resblocks.{i}."
            if rest.startswith("self_attn.") and rest.split(".")[1] in ("q_proj", "k_proj", "v_proj"):
                _, proj, kind = rest.split(".")
                qkv.setdefault(f"{base}attn.in_proj_{kind}", {})[proj] = v
                continue
            for old, new in layer.items():
                if rest.startswith(old + "."):
                    out[base + new + rest[len(old):]] = v
                    break
            else:
                raise KeyError(f"no open_clip place for {k}")
        elif k not in ("text_projection.weight", "text_model.embeddings.position_ids"):
            raise KeyError(f"no open_clip place for {k}")
    for key, parts in qkv.items():
        out[key] = torch.cat([parts["q_proj"], parts["k_proj"], parts["v_proj"]], dim=0)
    return out


def pipeline_to_ldm(pipe: Any) -> dict[str, torch.Tensor]:
    """Every weight of an SD 1.x or SDXL pipeline under its single-file name."""
    sdxl = getattr(pipe, "text_encoder_2", None) is not None
    out = unet_to_ldm(pipe.unet.state_dict(), pipe.unet.config)
    out.update(vae_to_ldm(pipe.vae.state_dict(), pipe.vae.config))
    out.update(clip_to_ldm(pipe.text_encoder.state_dict(), SDXL_TE1 if sdxl else SD1_TE))
    if sdxl:
        out.update(open_clip_to_ldm(pipe.text_encoder_2.state_dict()))
    return out


def save_single_file(pipe: Any, dest: Path) -> Path:
    from safetensors.torch import save_file

    save_file({k: v.detach().contiguous() for k, v in pipeline_to_ldm(pipe).items()}, str(dest))
    return dest


def component_configs_of(pipe: Any) -> dict[str, dict[str, Any]]:
    """A live pipeline's component configs, as ``shared.base_configs.write_config_folder`` takes them."""
    out = {name: {**dict(getattr(pipe, name).config), "_class_name": type(getattr(pipe, name)).__name__}
           for name in ("unet", "vae", "scheduler")}
    for name in ("text_encoder", "text_encoder_2"):
        if getattr(pipe, name, None) is not None:
            out[name] = getattr(pipe, name).config.to_dict()
    return out
