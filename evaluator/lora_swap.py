"""Swap LoRAs on one loaded base model by merging them into its weights and restoring them after.

Merged weights run at plain-layer speed (no adapter layers left in the forward pass), and restoring
copies back the saved originals of the touched layers only, so the base is bit-exact again. Kohya
keys are matched to modules by name (``lora_unet_down_blocks_0_..._to_q`` is the module
``down_blocks.0....to_q`` with dots as underscores), so a LoRA for another architecture is refused
with a clear error instead of silently doing nothing.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import torch

from shared.errors import CheckpointError

def _module_table(model: torch.nn.Module, prefix: str) -> dict[str, torch.nn.Module]:
    return {f"{prefix}_{name.replace('.', '_')}": m for name, m in model.named_modules()
            if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))}


def load_lora_file(path: Path) -> dict[str, torch.Tensor]:
    """Read tensors with safetensors only: never unpickle a file from a watched folder."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot read LoRA tensors: {e}") from None


def lora_deltas(state: dict[str, torch.Tensor], tables: dict[str, dict[str, torch.nn.Module]],
                scale: float) -> list[tuple[torch.nn.Module, torch.Tensor]]:
    """(module, delta W) for every LoRA pair: delta = scale * alpha / rank * up @ down."""
    out: list[tuple[torch.nn.Module, torch.Tensor]] = []
    unknown: list[str] = []
    bases = sorted({k.rsplit(".lora_down.weight", 1)[0] for k in state if k.endswith(".lora_down.weight")})
    if not bases:
        raise CheckpointError("no LoRA weights (keys ending in .lora_down.weight) in this file")
    for base in bases:
        prefix = base.split("_", 2)[0] + "_" + base.split("_", 2)[1]
        module = tables.get(prefix, {}).get(base)
        if module is None:
            unknown.append(base)
            continue
        down = state[f"{base}.lora_down.weight"].float()
        up = state[f"{base}.lora_up.weight"].float()
        rank = down.shape[0]
        alpha = float(state[f"{base}.alpha"]) if f"{base}.alpha" in state else float(rank)
        w = module.weight
        if down.dim() == 2:
            delta = up @ down
        elif down.shape[-2:] == (1, 1) and up.shape[-2:] == (1, 1):
            delta = (up.flatten(1) @ down.flatten(1)).reshape(w.shape)
        else:  # conv LoRA: down is k x k, up is 1 x 1
            delta = torch.einsum("or,rikl->oikl", up.flatten(1), down)
        out.append((module, (delta.reshape(w.shape) * (scale * alpha / rank))))
    if unknown:
        raise CheckpointError(f"{len(unknown)} of {len(bases)} LoRA modules match no layer of the base model "
                              f"(first: {unknown[0]}); was it trained for another architecture (SDXL, SD2)?")
    return out


class LoraSwapper:
    """Applies one LoRA at a time to a pipeline's UNet and text encoder."""

    def __init__(self, unet: torch.nn.Module, text_encoder: torch.nn.Module) -> None:
        # sd-scripts and our trainer name modules identically: lora_te_text_model_encoder_layers_0_...
        self.tables = {"lora_unet": _module_table(unet, "lora_unet"), "lora_te": _module_table(text_encoder, "lora_te")}

    @contextmanager
    def applied(self, path: Path, scale: float = 1.0):
        """Merge the LoRA in ``path``; on exit (even after an error) restore the exact base weights."""
        deltas = lora_deltas(load_lora_file(path), self.tables, scale)
        saved: list[tuple[torch.nn.Module, torch.Tensor]] = []
        try:
            with torch.no_grad():
                for module, delta in deltas:
                    saved.append((module, module.weight.detach().clone()))
                    module.weight.add_(delta.to(module.weight.device, module.weight.dtype))
            yield len(deltas)
        finally:
            with torch.no_grad():
                for module, original in saved:
                    module.weight.copy_(original)
