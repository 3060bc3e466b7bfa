"""What the UNet is conditioned on besides the noisy latents: the captions' text embeddings and, for
SDXL, the pooled embedding of the second text encoder and the size/crop ids, built the way sd-scripts'
``sdxl_train_network.py`` builds them."""

from __future__ import annotations

from typing import Any

import torch

from shared.config import Family
from trainer.builtin.dataset import TrainingImage
from trainer.builtin.models import Components


class TextConditioning:
    """Caption embeddings for batches of dataset items, optionally computed once up front.

    SD 1.x: the text encoder's last (or ``clip_skip``-th) hidden state. SDXL: both encoders' penultimate
    hidden states concatenated, and encoder 2's pooled (projected) embedding.
    """

    def __init__(self, comp: Components, family: Family, captions: list[str], clip_skip: int | None, device: Any,
                 cache: bool = False) -> None:
        self.comp, self.family, self.captions = comp, family, captions
        self.clip_skip, self.device = clip_skip, device
        self._cache: dict[str, tuple[torch.Tensor, torch.Tensor | None]] | None = None
        if cache:
            with torch.no_grad():
                unique = sorted(set(captions))
                hidden, pooled = self._encode(unique)
                self._cache = {c: (hidden[i], None if pooled is None else pooled[i]) for i, c in enumerate(unique)}

    @property
    def cached(self) -> bool:
        return self._cache is not None

    def __call__(self, idx: list[int]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(hidden states, pooled embedding or None) for the items ``idx``; differentiable unless cached."""
        texts = [self.captions[i] for i in idx]
        if self._cache is None:
            return self._encode(texts)
        hidden = torch.stack([self._cache[t][0] for t in texts])
        pooled = None if self.family != "sdxl" else torch.stack([self._cache[t][1] for t in texts])
        return hidden, pooled

    def _encode(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        from shared import text_encoding

        c = self.comp
        if self.family == "sdxl":
            return text_encoding.encode_prompts_sdxl((c.tokenizer, c.tokenizer_2), (c.text_encoder, c.text_encoder_2),
                                                     texts, self.device)
        return text_encoding.encode_prompts(c.tokenizer, c.text_encoder, texts, self.clip_skip, self.device), None


def size_time_ids(images: list[TrainingImage], resolution: int) -> torch.Tensor:
    """SDXL's ``time_ids`` per image: original (h, w), crop (top, left), target (h, w), as sd-scripts and
    diffusers order them; (n, 6) float32."""
    return torch.tensor([[*im.original_hw, *im.crop_top_left, resolution, resolution] for im in images],
                        dtype=torch.float32)
