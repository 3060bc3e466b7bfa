"""The components the built-in trainer needs (SD 1.x, or SDXL with its second tokenizer and text encoder),
loaded offline through ``shared.base_loading`` from a diffusers folder, a single-file checkpoint or a demo name."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from shared.config import Family


@dataclass
class Components:
    tokenizer: Any
    text_encoder: Any
    vae: Any
    unet: Any
    noise_scheduler: Any
    #: SDXL's second tokenizer and text encoder (OpenCLIP bigG, with projection); None for SD 1.x.
    tokenizer_2: Any = None
    text_encoder_2: Any = None

    @property
    def family(self) -> Family:
        return "sdxl" if self.text_encoder_2 is not None else "sd1"

    @property
    def text_encoders(self) -> list[Any]:
        """``[text_encoder]`` for SD 1.x, ``[text_encoder, text_encoder_2]`` for SDXL."""
        return [te for te in (self.text_encoder, self.text_encoder_2) if te is not None]


def load_components(base: str, family: Family | None = None) -> Components:
    """The parts of ``model.base`` training needs; ``family`` None: told from the weights.

    Raises:
        shared.base_loading.BaseModelError: naming ``model.base`` when it cannot be loaded.
    """
    from diffusers import DDPMScheduler

    from shared.base_loading import load_base_pipeline

    pipe = load_base_pipeline(base, family)
    return Components(tokenizer=pipe.tokenizer, text_encoder=pipe.text_encoder, vae=pipe.vae, unet=pipe.unet,
                      noise_scheduler=DDPMScheduler.from_config(pipe.scheduler.config),
                      tokenizer_2=getattr(pipe, "tokenizer_2", None),
                      text_encoder_2=getattr(pipe, "text_encoder_2", None))
