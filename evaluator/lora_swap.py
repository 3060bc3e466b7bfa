"""Swap network files on one loaded base model by merging them into its weights and restoring them after.

Merged weights run at plain-layer speed (no adapter layers left in the forward pass), and restoring
copies back the saved originals of the touched layers only, so the base is bit-exact again. Keys are
matched to modules through the kohya naming table in ``shared.kohya_names`` (never through today's
module tree), and every key of a file is either applied or named in the error: a LoRA for another
architecture, or with shapes that do not fit, is refused as a whole before any weight changes.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import torch

from evaluator.lora_networks import ModuleAdapter, describe, parse_network
from shared.errors import CheckpointError
from shared.kohya_names import KohyaTable

_OTHER_ARCH_HINTS = (
    ("lora_te1_", "SDXL (two text encoders)"),
    ("lora_te2_", "SDXL (two text encoders)"),
    ("lora_unet_input_blocks_", "SDXL (original-layout UNet names)"),
    ("lora_unet_double_blocks_", "FLUX"),
    ("lora_unet_joint_blocks_", "SD3"),
    ("lora_transformer_", "a transformer model (SD3/FLUX)"),
)


def load_lora_file(path: Path) -> dict[str, torch.Tensor]:
    """Read tensors with safetensors only: never unpickle a file from a watched folder."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot read LoRA tensors: {e}") from None


def _architecture_hint(names: list[str]) -> str:
    for prefix, arch in _OTHER_ARCH_HINTS:
        if any(n.startswith(prefix) for n in names):
            return f"; its names look like {arch}"
    return "; was it trained for another architecture (SDXL, SD2)?"


class LoraSwapper:
    """Applies one network file at a time to a pipeline's UNet and text encoder."""

    def __init__(self, unet: torch.nn.Module, text_encoder: torch.nn.Module | None) -> None:
        self.table = KohyaTable.for_models(unet, text_encoder)
        self.modules = self.table.resolve({"unet": unet, "text_encoder": text_encoder})
        self.last_description = ""

    def plan(self, state: dict[str, torch.Tensor]) -> list[tuple[str, torch.nn.Module, ModuleAdapter]]:
        """Every module of the file with the layer it changes; raises before anything is changed."""
        adapters = parse_network(state)
        unmatched = sorted(n for n in adapters if n not in self.modules)
        if unmatched:
            raise CheckpointError(f"{len(unmatched)} of {len(adapters)} network modules match no layer of the base "
                                  f"model (first: {unmatched[0]}){_architecture_hint(unmatched)}")
        self.last_description = describe(adapters)
        return [(name, self.modules[name], adapter) for name, adapter in sorted(adapters.items())]

    @contextmanager
    def applied(self, path: Path, scale: float = 1.0):
        """Merge the network in ``path``; on exit (even after an error) restore the exact base weights."""
        plan = self.plan(load_lora_file(path))
        saved: list[tuple[torch.nn.Module, torch.Tensor]] = []
        try:
            with torch.no_grad():
                # One layer at a time (memory); a layer that does not fit raises, and the finally
                # below puts back every layer already changed, so nothing half-merged is ever used.
                for name, module, adapter in plan:
                    new_weight = _merged(name, adapter, module, scale)
                    saved.append((module, module.weight.detach().clone()))
                    module.weight.copy_(new_weight.to(module.weight.dtype))
            yield len(plan)
        finally:
            with torch.no_grad():
                for module, original in saved:
                    module.weight.copy_(original)


def _merged(name: str, adapter: ModuleAdapter, module: torch.nn.Module, scale: float) -> torch.Tensor:
    try:
        with torch.no_grad():
            return adapter.merged(module.weight.detach(), scale)
    except (RuntimeError, KeyError, IndexError, ValueError) as e:
        raise CheckpointError(f"{name}: its {adapter.kind} weights do not fit this base model's layer "
                              f"{tuple(module.weight.shape)} ({type(e).__name__}: {e}); was it trained "
                              "for another model?") from None
