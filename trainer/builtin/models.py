"""Load the SD 1.x components the built-in trainer needs, offline, from a diffusers folder or a
single-file checkpoint."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.demo_assets import resolve_demo
from shared.errors import EpochscopeError


@dataclass
class Components:
    tokenizer: Any
    text_encoder: Any
    vae: Any
    unet: Any
    noise_scheduler: Any


def load_components(base: str) -> Components:
    from diffusers import DDPMScheduler

    path = Path(resolve_demo(base))
    if path.is_dir():
        if not (path / "model_index.json").exists() and not (path / "unet").is_dir():
            raise EpochscopeError(f"model.base {path} is a folder but not a diffusers pipeline "
                                  "(no model_index.json / unet/)")
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        try:
            return Components(
                tokenizer=CLIPTokenizer.from_pretrained(path / "tokenizer"),
                text_encoder=CLIPTextModel.from_pretrained(path / "text_encoder"),
                vae=AutoencoderKL.from_pretrained(path / "vae"),
                unet=UNet2DConditionModel.from_pretrained(path / "unet"),
                noise_scheduler=DDPMScheduler.from_pretrained(path / "scheduler"),
            )
        except (OSError, ValueError) as e:
            raise EpochscopeError(f"model.base {path}: cannot load the diffusers pipeline: {e}") from None
    if path.is_file():
        if path.suffix not in {".safetensors"}:
            raise EpochscopeError(f"model.base {path}: only .safetensors single-file checkpoints are read "
                                  "(pickle formats like .ckpt are not loaded for safety); convert it first")
        from diffusers import StableDiffusionPipeline

        try:
            pipe = StableDiffusionPipeline.from_single_file(str(path), local_files_only=True,
                                                            safety_checker=None, requires_safety_checker=False)
        except Exception as e:  # noqa: BLE001 - diffusers raises many kinds here
            raise EpochscopeError(
                f"model.base {path}: cannot load this single-file checkpoint offline ({type(e).__name__}: {e}). "
                "Convert it to a diffusers folder once (diffusers' convert_original_stable_diffusion_to_diffusers) "
                "and point model.base at the folder") from None
        return Components(pipe.tokenizer, pipe.text_encoder, pipe.vae, pipe.unet,
                          DDPMScheduler.from_config(pipe.scheduler.config))
    raise EpochscopeError(f"model.base {base!r} not found: give a diffusers folder, a single-file "
                          ".safetensors checkpoint, or 'demo:tiny'")
