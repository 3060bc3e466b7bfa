"""The published component configs of SD 1.5 and SDXL 1.0 base, as plain dicts, and the offline config
folders built from them.

diffusers' ``from_single_file`` turns an original (ldm) checkpoint into diffusers components, but it takes
the components' configs (and the tokenizers) from a diffusers-layout folder, which it downloads from the
hub unless ``config=`` names a local one. :func:`config_folder` writes such a folder for a family, once,
under ``shared.demo_assets.cache_root()``: ``model_index.json``, each component's ``config.json`` and the
tokenizers (built from open_clip's BPE vocabulary, see ``shared.clip_tokenizer``).

The dicts are those of runwayml/stable-diffusion-v1-5 and stabilityai/stable-diffusion-xl-base-1.0 (less
bookkeeping keys such as ``_diffusers_version``). Fine-tunes of either (Pony, Illustrious, NoobAI, most
SD 1.5 merges) share the architecture, so one folder per family serves every single-file checkpoint of it.
Every function returns a fresh dict.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from shared.config import Family
from shared.jsonio import build_folder

CONFIG_FOLDERS_VERSION = 1


def sd15_unet_config() -> dict[str, Any]:
    return {
        "_class_name": "UNet2DConditionModel", "act_fn": "silu", "attention_head_dim": 8,
        "block_out_channels": [320, 640, 1280, 1280], "center_input_sample": False, "cross_attention_dim": 768,
        "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
        "downsample_padding": 1, "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 4, "layers_per_block": 2,
        "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32, "out_channels": 4, "sample_size": 64,
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    }


def sd15_vae_config() -> dict[str, Any]:
    return {
        "_class_name": "AutoencoderKL", "act_fn": "silu", "block_out_channels": [128, 256, 512, 512],
        "down_block_types": ["DownEncoderBlock2D"] * 4, "in_channels": 3, "latent_channels": 4,
        "layers_per_block": 2, "norm_num_groups": 32, "out_channels": 3, "sample_size": 512,
        "scaling_factor": 0.18215, "up_block_types": ["UpDecoderBlock2D"] * 4,
    }


def clip_l_text_config() -> dict[str, Any]:
    """CLIP ViT-L/14's text tower: SD 1.x's text encoder and SDXL's first (``CLIPTextModel``)."""
    return {
        "architectures": ["CLIPTextModel"], "attention_dropout": 0.0, "bos_token_id": 0, "dropout": 0.0,
        "eos_token_id": 2, "hidden_act": "quick_gelu", "hidden_size": 768, "initializer_factor": 1.0,
        "initializer_range": 0.02, "intermediate_size": 3072, "layer_norm_eps": 1e-05,
        "max_position_embeddings": 77, "model_type": "clip_text_model", "num_attention_heads": 12,
        "num_hidden_layers": 12, "pad_token_id": 1, "projection_dim": 768, "vocab_size": 49408,
    }


def sd15_scheduler_config() -> dict[str, Any]:
    return {
        "_class_name": "PNDMScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085,
        "clip_sample": False, "num_train_timesteps": 1000, "set_alpha_to_one": False, "skip_prk_steps": True,
        "steps_offset": 1, "trained_betas": None,
    }


def sdxl_unet_config() -> dict[str, Any]:
    """The SDXL base UNet (2.57 B parameters): size-conditioned (``text_time``), ldm-named by sd-scripts."""
    return {
        "_class_name": "UNet2DConditionModel", "act_fn": "silu", "addition_embed_type": "text_time",
        "addition_embed_type_num_heads": 64, "addition_time_embed_dim": 256, "attention_head_dim": [5, 10, 20],
        "block_out_channels": [320, 640, 1280], "center_input_sample": False, "class_embed_type": None,
        "class_embeddings_concat": False, "conv_in_kernel": 3, "conv_out_kernel": 3, "cross_attention_dim": 2048,
        "cross_attention_norm": None,
        "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
        "downsample_padding": 1, "dual_cross_attention": False, "encoder_hid_dim": None,
        "encoder_hid_dim_type": None, "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 4,
        "layers_per_block": 2, "mid_block_only_cross_attention": None, "mid_block_scale_factor": 1,
        "mid_block_type": "UNetMidBlock2DCrossAttn", "norm_eps": 1e-05, "norm_num_groups": 32,
        "num_attention_heads": None, "num_class_embeds": None, "only_cross_attention": False, "out_channels": 4,
        "projection_class_embeddings_input_dim": 2816, "resnet_out_scale_factor": 1.0,
        "resnet_skip_time_act": False, "resnet_time_scale_shift": "default", "sample_size": 128,
        "time_cond_proj_dim": None, "time_embedding_act_fn": None, "time_embedding_dim": None,
        "time_embedding_type": "positional", "timestep_post_act": None, "transformer_layers_per_block": [1, 2, 10],
        "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"], "upcast_attention": None,
        "use_linear_projection": True,
    }


def sdxl_text_encoder_2_config() -> dict[str, Any]:
    """OpenCLIP ViT-bigG/14's text tower (``CLIPTextModelWithProjection``, 695 M parameters)."""
    return {**clip_l_text_config(), "architectures": ["CLIPTextModelWithProjection"], "hidden_act": "gelu",
            "hidden_size": 1280, "intermediate_size": 5120, "num_attention_heads": 20, "num_hidden_layers": 32,
            "projection_dim": 1280}


def sdxl_vae_config() -> dict[str, Any]:
    """SD 1.x's VAE shapes with SDXL's scaling factor; it overflows in fp16 (``force_upcast``)."""
    return {**sd15_vae_config(), "force_upcast": True, "sample_size": 1024, "scaling_factor": 0.13025}


def sdxl_scheduler_config() -> dict[str, Any]:
    return {
        "_class_name": "EulerDiscreteScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear",
        "beta_start": 0.00085, "interpolation_type": "linear", "num_train_timesteps": 1000,
        "prediction_type": "epsilon", "steps_offset": 1, "timestep_spacing": "leading", "trained_betas": None,
        "use_karras_sigmas": False,
    }


_DIFFUSERS = "diffusers"
_TRANSFORMERS = "transformers"


def model_index(family: Family) -> dict[str, Any]:
    """``model_index.json`` of the family's pipeline (no safety checker, no image encoder)."""
    common = {
        "feature_extractor": [None, None], "image_encoder": [None, None],
        "text_encoder": [_TRANSFORMERS, "CLIPTextModel"], "tokenizer": [_TRANSFORMERS, "CLIPTokenizer"],
        "unet": [_DIFFUSERS, "UNet2DConditionModel"], "vae": [_DIFFUSERS, "AutoencoderKL"],
    }
    if family == "sdxl":
        return {"_class_name": "StableDiffusionXLPipeline", "force_zeros_for_empty_prompt": True, **common,
                "scheduler": [_DIFFUSERS, "EulerDiscreteScheduler"],
                "text_encoder_2": [_TRANSFORMERS, "CLIPTextModelWithProjection"],
                "tokenizer_2": [_TRANSFORMERS, "CLIPTokenizer"]}
    return {"_class_name": "StableDiffusionPipeline", "requires_safety_checker": False, **common,
            "safety_checker": [None, None], "scheduler": [_DIFFUSERS, "PNDMScheduler"]}


def component_configs(family: Family) -> dict[str, dict[str, Any]]:
    """Folder name -> the file it holds (``config.json``, or ``scheduler_config.json`` for the scheduler)."""
    if family == "sdxl":
        return {"unet": sdxl_unet_config(), "vae": sdxl_vae_config(), "text_encoder": clip_l_text_config(),
                "text_encoder_2": sdxl_text_encoder_2_config(), "scheduler": sdxl_scheduler_config()}
    return {"unet": sd15_unet_config(), "vae": sd15_vae_config(), "text_encoder": clip_l_text_config(),
            "scheduler": sd15_scheduler_config()}


def write_config_folder(dest: Path | str, family: Family,
                        configs: dict[str, dict[str, Any]] | None = None) -> Path:
    """Write a weightless diffusers-layout folder for ``family`` at ``dest`` (replacing what is there).

    Args:
        dest: the folder.
        family: ``"sd1"`` or ``"sdxl"``: picks ``model_index.json`` and the tokenizers.
        configs: folder name -> config dict; default :func:`component_configs` (the published models).
            Tests pass a tiny model's configs to load a tiny single-file checkpoint.
    """
    from shared.clip_tokenizer import TOKENIZER_2_PAD, write_tokenizer_files

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "model_index.json").write_text(json.dumps(model_index(family), indent=2), encoding="utf-8")
    for name, cfg in (configs or component_configs(family)).items():
        (dest / name).mkdir(exist_ok=True)
        file = "scheduler_config.json" if name == "scheduler" else "config.json"
        (dest / name / file).write_text(json.dumps(cfg, indent=2), encoding="utf-8")
    write_tokenizer_files(dest / "tokenizer")
    if family == "sdxl":
        write_tokenizer_files(dest / "tokenizer_2", pad_token=TOKENIZER_2_PAD)
    return dest


def config_folder(family: Family, cache_dir: Path | str | None = None) -> Path:
    """The cached config folder of the published ``family`` model (built once; safe across processes:
    it is written beside its final name and renamed into place)."""
    from shared.demo_assets import cache_root

    root = Path(cache_dir) if cache_dir else cache_root()
    dest = root / f"base-configs-v{CONFIG_FOLDERS_VERSION}" / ("sdxl-base-1.0" if family == "sdxl" else "sd-1.5")
    return build_folder(dest, lambda tmp: write_config_folder(tmp, family))
