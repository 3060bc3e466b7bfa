"""Key layouts of LoRA files written by other tools, mapped onto sd-scripts' kohya module names.

A key is ``<module>.<part>``. sd-scripts, kohya_ss and LyCORIS write ``lora_unet_<path>`` / ``lora_te_<path>``
(``lora_te1_``/``lora_te2_`` for SDXL) with the path's dots as underscores, and ``lora_down``/``lora_up``/``alpha``
parts. Other layouts, each proven on files made by the tool itself (``tests/data/onetrainer``):

- OneTrainer LEGACY (its default) and KOHYA: kohya prefixes and parts; SDXL LEGACY keeps the UNet's diffusers
  paths (``lora_unet_down_blocks_1_attentions_0_…``) where sd-scripts uses the original ldm ones;
- ComfyUI and OneTrainer COMFY: ``diffusion_model.<ldm path>``, ``text_encoders.clip_l.transformer.<path>``
  (``clip_g`` for SDXL's second encoder), parts ``lora_A.weight``/``lora_B.weight``/``alpha``;
- diffusers / peft and OneTrainer DIFFUSERS: ``unet.<path>``, ``text_encoder.<path>``, ``text_encoder_2.<path>``,
  parts ``lora_A.weight``/``lora_B.weight`` with the alpha folded in (scale 1) or given by the file's
  ``lora_adapter_metadata``;
- OneTrainer INTERNAL and OMI: the same prefixes (OMI: ``clip_l.``/``clip_g.``) with kohya's parts;
- OneTrainer ORIGINAL (UNet only): the original UNet's names with no prefix (``input_blocks.4.1.…``), A/B parts.

Here a module name becomes a kohya-style name (prefix + path with underscores); which layout the path is
in (diffusers or the original ldm one) is left to ``KohyaTable.canonical``, which knows both. The first text
encoder becomes ``lora_te1_`` whatever the family; the SD 1.x table takes ``lora_te1_`` for its only one.
"""

from __future__ import annotations

#: Dotted prefixes of other layouts -> kohya prefix (longest first: ``text_encoder_2.`` before ``text_encoder.``).
_PREFIXES: tuple[tuple[str, str], ...] = (
    ("text_encoders.clip_l.transformer.", "lora_te1_"),
    ("text_encoders.clip_g.transformer.", "lora_te2_"),
    ("diffusion_model.", "lora_unet_"),
    ("text_encoder_2.", "lora_te2_"),
    ("text_encoder.", "lora_te1_"),
    ("unet.", "lora_unet_"),
    ("clip_l.", "lora_te1_"),
    ("clip_g.", "lora_te2_"),
    # OneTrainer ORIGINAL (UNet only): the original UNet's own top-level names, no prefix at all.
    *((f"{top}.", f"lora_unet_{top}_") for top in ("input_blocks", "middle_block", "output_blocks", "time_embed",
                                                    "label_emb", "out")),
)

#: The A/B names (diffusers, peft, ComfyUI) of kohya's parts.
AB_PARTS = {"lora_A.weight": "lora_down.weight", "lora_B.weight": "lora_up.weight"}


def kohya_module_name(module: str) -> str:
    """``diffusion_model.input_blocks.4.1.proj_in`` -> ``lora_unet_input_blocks_4_1_proj_in``; a kohya name is
    returned as it is."""
    for prefix, kohya in _PREFIXES:
        if module.startswith(prefix):
            return kohya + module[len(prefix):].replace(".", "_")
    return module


def split_key(key: str, parts: set[str] | frozenset[str]) -> tuple[str, str] | None:
    """(module, part) for a key ending in ``.<part>`` (the longest part that fits), or None."""
    best: str | None = None
    for part in parts:
        if key.endswith("." + part) and (best is None or len(part) > len(best)):
            best = part
    if best is None:
        return None
    return key[: -len(best) - 1], best
