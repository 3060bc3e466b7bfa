"""Prompt embeddings with kohya's ``clip_skip``, the same for training and for sampling.

kohya's ``clip_skip = N`` takes the text encoder's N-th hidden state from the end and applies the
final layer norm (``clip_skip = 2``: the penultimate layer, as NovelAI-style models expect). Written
once here because diffusers' own ``clip_skip`` reaches for ``text_encoder.text_model``, which
transformers 5 no longer has.
"""

from __future__ import annotations

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
