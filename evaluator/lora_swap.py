"""Swap network files on one loaded base model by merging them into its weights and restoring them after.

Merged weights run at plain-layer speed (no adapter layers left in the forward pass), and restoring
copies back the saved originals of the touched layers only, so the base is bit-exact again. Keys are
matched to modules through the kohya naming table in ``shared.kohya_names`` (never through today's
module tree), and every key of a file is either applied or named in the error: a LoRA for the other
family (an SDXL file on an SD 1.x base, or the reverse), for another architecture, or with shapes that
do not fit, is refused as a whole before any weight changes.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import torch

from evaluator.lora_networks import ModuleAdapter, describe, parse_network
from shared.config import Family
from shared.errors import CheckpointError
from shared.kohya_names import KohyaTable, is_sdxl_unet
from shared.model_family import FAMILY_NAMES, family_of_lora
from shared.nonfinite import NonFinite, nonfinite_values

# Names of architectures neither table covers (SD 1.x and SDXL files are told apart by family_of_lora).
_OTHER_ARCH_HINTS = (
    ("lora_unet_double_blocks_", "FLUX"),
    ("lora_unet_joint_blocks_", "SD3"),
    ("lora_transformer_", "a transformer model (SD3/FLUX)"),
)


def load_lora_file(path: Path) -> dict[str, torch.Tensor]:
    """Read tensors with safetensors only: never unpickle a file from a watched folder. A file that is gone
    raises FileNotFoundError unchanged (deleted while waiting or being scored: the daemon's concern, not a
    broken checkpoint); anything else unreadable is a CheckpointError naming the file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except FileNotFoundError:
        raise
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot read LoRA tensors: {e}") from None


def _metadata(path: Path) -> dict[str, str]:
    from shared.safetensors_info import inspect

    return inspect(path).metadata


def _architecture_hint(names: list[str]) -> str:
    for prefix, arch in _OTHER_ARCH_HINTS:
        if any(n.startswith(prefix) for n in names):
            return f"; its names look like {arch}"
    return "; was it trained for another architecture (SD 2.x, SD3, FLUX)?"


def _article(family: Family) -> str:
    return f"an {FAMILY_NAMES[family]}"  # "an SD 1.x", "an SDXL"


class LoraSwapper:
    """Applies one network file at a time to a pipeline's UNet and text encoder(s): SD 1.x, or SDXL when
    the UNet is size-conditioned or ``text_encoder_2`` is given."""

    def __init__(self, unet: torch.nn.Module, text_encoder: torch.nn.Module | None,
                 text_encoder_2: torch.nn.Module | None = None) -> None:
        self.table = KohyaTable.for_models(unet, text_encoder, text_encoder_2)
        self.family: Family = "sdxl" if is_sdxl_unet(dict(unet.config)) or text_encoder_2 is not None else "sd1"
        self.modules = self.table.resolve({"unet": unet, "text_encoder": text_encoder,
                                           "text_encoder_2": text_encoder_2})
        self.last_description = ""
        self.last_nonfinite = NonFinite(0, 0, ())  # of the file last applied: NaN/inf values mean nothing was merged

    @classmethod
    def for_pipeline(cls, pipe) -> "LoraSwapper":
        """The swapper of a loaded ``StableDiffusionPipeline`` or ``StableDiffusionXLPipeline``."""
        return cls(pipe.unet, pipe.text_encoder, getattr(pipe, "text_encoder_2", None))

    def plan(self, state: dict[str, torch.Tensor],
             metadata: dict[str, str] | None = None) -> list[tuple[str, torch.nn.Module, ModuleAdapter]]:
        """Every module of the file with the layer it changes; raises before anything is changed: for a
        file of the other family (told by ``family_of_lora`` from its names, else its metadata), naming
        both, and for names or shapes that fit no layer."""
        file_family = family_of_lora(state, metadata)
        if file_family is not None and file_family != self.family:
            told = "module names" if family_of_lora(state) else "metadata (ss_base_model_version / modelspec)"
            raise CheckpointError(f"{_article(file_family)} LoRA on {_article(self.family)} base: its {told} say "
                                  f"it was trained for {FAMILY_NAMES[file_family]}, and model.base is "
                                  f"{_article(self.family)} model; nothing was applied (score it with "
                                  f"{_article(file_family)} base)")
        adapters = parse_network(state, metadata)
        canonical = {name: self.table.canonical(name) for name in adapters}
        unmatched = sorted(adapters[n].name for n, c in canonical.items() if c not in self.modules)
        if unmatched:
            raise CheckpointError(f"{len(unmatched)} of {len(adapters)} network modules match no layer of the base "
                                  f"model (first: {unmatched[0]}){_architecture_hint(unmatched)}")
        plan = [(canonical[name], self.modules[canonical[name]], adapter) for name, adapter in sorted(adapters.items())]
        for name, module, adapter in plan:  # shapes only (meta tensors): every layer, before any is changed
            adapter.check_fits(module.weight.shape)
        self.last_description = describe(adapters)
        return plan

    @contextmanager
    def applied(self, path: Path, scale: float = 1.0):
        """Merge the network in ``path``; on exit (even after an error) restore the exact base weights.

        A file that fits but holds NaN or infinity (a diverged run) is not merged: every sample would be NaN.
        It yields 0 layers and says why in ``last_nonfinite``; the caller records its samples failed."""
        plan = self.plan(load_lora_file(path), _metadata(path))
        try:
            self.last_nonfinite = nonfinite_values(path)  # the file is in the page cache: ~0.1 s per GB
        except ValueError as e:  # safetensors read it a moment ago: it changed, or is not what it seems
            raise CheckpointError(str(e)) from None
        if self.last_nonfinite:
            yield 0
            return
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
                for module, original in reversed(saved):  # last first: right even if two names share a layer
                    module.weight.copy_(original)


def _merged(name: str, adapter: ModuleAdapter, module: torch.nn.Module, scale: float) -> torch.Tensor:
    try:
        with torch.no_grad():
            return adapter.merged(module.weight.detach(), scale)
    except (RuntimeError, KeyError, IndexError, ValueError) as e:
        raise CheckpointError(f"{name}: its {adapter.kind} weights do not fit this base model's layer "
                              f"{tuple(module.weight.shape)} ({type(e).__name__}: {e}); was it trained "
                              "for another model?") from None
