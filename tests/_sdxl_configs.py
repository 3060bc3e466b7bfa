"""The SDXL 1.0 base architecture for tests and the random-model builder (``tests/_sd_scripts_helpers.py``,
``build_sdxl_random``): ``shared.base_configs``' published dicts, as constructor keyword arguments (without
diffusers' ``_class_name`` bookkeeping key). sd-scripts hard-codes these shapes, so a random-weight stand-in
must match them exactly. Every function returns a fresh dict."""

from __future__ import annotations

from typing import Any

from shared import base_configs


def _kwargs(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if not k.startswith("_")}


def sdxl_unet_config() -> dict[str, Any]:
    """``UNet2DConditionModel(**sdxl_unet_config())`` is the SDXL base UNet (2.57 B parameters)."""
    return _kwargs(base_configs.sdxl_unet_config())


def sdxl_text_encoder_config() -> dict[str, Any]:
    """``CLIPTextConfig(**...)`` of TE1: CLIP ViT-L/14's text tower (``CLIPTextModel``, 123 M parameters)."""
    return base_configs.clip_l_text_config()


def sdxl_text_encoder_2_config() -> dict[str, Any]:
    """``CLIPTextConfig(**...)`` of TE2: OpenCLIP ViT-bigG/14's text tower (``CLIPTextModelWithProjection``)."""
    return base_configs.sdxl_text_encoder_2_config()


def sdxl_vae_config() -> dict[str, Any]:
    return _kwargs(base_configs.sdxl_vae_config())


def sdxl_scheduler_config() -> dict[str, Any]:
    """``EulerDiscreteScheduler(**sdxl_scheduler_config())``, as SDXL base ships it."""
    return _kwargs(base_configs.sdxl_scheduler_config())


TE1_LAYERS = sdxl_text_encoder_config()["num_hidden_layers"]  # 12
TE2_LAYERS = sdxl_text_encoder_2_config()["num_hidden_layers"]  # 32


def sdxl_meta_models() -> dict[str, Any]:
    """The SDXL UNet and both text encoders built on the meta device (shapes, no memory):
    ``{"unet": ..., "text_encoder": ..., "text_encoder_2": ...}``."""
    import torch
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    with torch.device("meta"):
        return {
            "unet": UNet2DConditionModel(**sdxl_unet_config()),
            "text_encoder": CLIPTextModel(CLIPTextConfig(**sdxl_text_encoder_config())),
            "text_encoder_2": CLIPTextModelWithProjection(CLIPTextConfig(**sdxl_text_encoder_2_config())),
        }
