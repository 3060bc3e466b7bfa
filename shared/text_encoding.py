"""Prompt embeddings, the same for training and for sampling: SD 1.x with kohya's ``clip_skip``, and SDXL.

kohya's ``clip_skip = N`` takes the text encoder's N-th hidden state from the end and applies the
final layer norm (``clip_skip = 2``: the penultimate layer, as NovelAI-style models expect). Written
once here because diffusers' own ``clip_skip`` reaches for ``text_encoder.text_model``, which
transformers 5 no longer has. SDXL has no ``clip_skip``: it always takes the penultimate layer of both
encoders, without the final layer norm (``encode_prompts_sdxl``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from shared.kohya_names import text_transformer


def encode_prompts(tokenizer: Any, text_encoder: Any, prompts: list[str], clip_skip: int | None, device: Any) -> Any:
    """(batch, tokens, width) embeddings for ``prompts`` (padded to the tokenizer's max length)."""
    tokens = tokenizer(prompts, padding="max_length", truncation=True, max_length=tokenizer.model_max_length,
                       return_tensors="pt").input_ids.to(device)
    if clip_skip and clip_skip > 1:
        out = text_encoder(tokens, output_hidden_states=True)
        return text_transformer(text_encoder).final_layer_norm(out.hidden_states[-clip_skip])
    return text_encoder(tokens)[0]


def encode_prompts_sdxl(tokenizers: Sequence[Any], text_encoders: Sequence[Any], prompts: list[str],
                        device: Any) -> tuple[Any, Any]:
    """SDXL's prompt embeddings, as sd-scripts trains and diffusers' ``StableDiffusionXLPipeline`` samples.

    Each encoder's penultimate hidden state (no final layer norm), concatenated along the width; the
    pooled embedding is the second encoder's projected end-of-text token (``text_embeds``). Only the
    model outputs are used, never the module tree, so transformers 4 and 5 give the same result. Not
    under ``no_grad``: a trainer training the text encoders gets gradients.

    Args:
        tokenizers: ``(pipe.tokenizer, pipe.tokenizer_2)``.
        text_encoders: ``(pipe.text_encoder, pipe.text_encoder_2)``: a ``CLIPTextModel`` and a
            ``CLIPTextModelWithProjection``.
        prompts: one per sample; each is truncated to the tokenizer's length (77 tokens).
        device: where the token ids go (the encoders' device).

    Returns:
        ``(prompt_embeds, pooled_prompt_embeds)``: ``(batch, 77, width_1 + width_2)`` and
        ``(batch, projection_dim_2)``, in the encoders' dtype.
    """
    import torch

    hidden, pooled = [], None
    for tokenizer, text_encoder in zip(tokenizers, text_encoders, strict=True):
        tokens = tokenizer(prompts, padding="max_length", truncation=True, max_length=tokenizer.model_max_length,
                           return_tensors="pt").input_ids.to(device)
        out = text_encoder(tokens, output_hidden_states=True)
        hidden.append(out.hidden_states[-2])
        pooled = out[0]  # the last encoder's: CLIPTextModelWithProjection's text_embeds
    if pooled is None or pooled.dim() != 2:
        raise ValueError("SDXL's second text encoder must be a CLIPTextModelWithProjection (pooled text_embeds)")
    return torch.cat(hidden, dim=-1), pooled
