"""kohya / sd-scripts LoRA module names for SD 1.x: the one table both our writer and our reader use.

sd-scripts names a LoRA module ``<prefix>_<dotted module path with dots as underscores>``, where the
path is the one in *its* models: its SD UNet (diffusers layout, e.g. ``down_blocks.0.attentions.0.
transformer_blocks.0.attn1.to_q``) and transformers 4's ``CLIPTextModel`` (``text_model.encoder.
layers.0.mlp.fc1``). transformers 5 dropped the ``text_model.`` level, so a name derived from
today's module tree would be wrong. Names here are built from the architecture's *config* (block
types, layer counts) in the canonical layout, and only *resolved* against a live model, with the
layout aliases known for each component.

Which modules sd-scripts' ``networks.lora`` adapts:
- UNet, always: every Linear / 1x1 Conv2d inside a ``Transformer2DModel`` (proj_in, proj_out,
  attn1/attn2 to_q/to_k/to_v/to_out.0, ff.net.0.proj, ff.net.2);
- UNet, LoCon (``conv_dim``): every Conv2d / Linear inside ``ResnetBlock2D`` (conv1, conv2,
  time_emb_proj, conv_shortcut), ``Downsample2D`` and ``Upsample2D`` (conv);
- text encoder: q/k/v/out_proj of every ``CLIPAttention`` and fc1/fc2 of every ``CLIPMLP``.
LyCORIS (LoHa, LoKr, DoRA, ...) uses the same names for the same modules, and its default preset also
adapts the UNet's conv_in, conv_out and time_embedding.linear_1/_2.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

UNET_PREFIX = "lora_unet"
TEXT_ENCODER_PREFIX = "lora_te"

Component = Literal["unet", "text_encoder"]
Family = Literal["attention", "resnet", "sampler", "text", "unet_io"]

_ATTENTION_CHILDREN = ("proj_in", "proj_out")
_BLOCK_CHILDREN = tuple(f"{attn}.{p}" for attn in ("attn1", "attn2") for p in ("to_q", "to_k", "to_v", "to_out.0")) + (
    "ff.net.0.proj", "ff.net.2")
_RESNET_CHILDREN = ("conv1", "conv2", "time_emb_proj", "conv_shortcut")
_TEXT_CHILDREN = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "mlp.fc1", "mlp.fc2")

# Other layouts of the same module, tried in order when the canonical path is not in a live model.
_ALIASES: dict[Component, tuple[tuple[str, str], ...]] = {
    "unet": (),
    "text_encoder": (("text_model.", ""),),  # transformers >= 5: no text_model level
}


def kohya_name(prefix: str, canonical_path: str) -> str:
    return f"{prefix}_{canonical_path.replace('.', '_')}"


@dataclass(frozen=True)
class KohyaModule:
    """One adaptable module: its kohya name and where it lives in the canonical layout."""

    name: str
    component: Component
    path: str
    family: Family


def _per_block(value: int | Iterable[int], n: int) -> list[int]:
    if isinstance(value, int):
        return [value] * n
    values = list(value)
    return values if len(values) == n else [values[0]] * n


def _attention(path: str, depth: int) -> list[tuple[str, Family]]:
    out = [(f"{path}.{c}", "attention") for c in _ATTENTION_CHILDREN]
    for t in range(depth):
        out += [(f"{path}.transformer_blocks.{t}.{c}", "attention") for c in _BLOCK_CHILDREN]
    return out


def _resnet(path: str) -> list[tuple[str, Family]]:
    return [(f"{path}.{c}", "resnet") for c in _RESNET_CHILDREN]


def sd1_unet_paths(down_block_types: Iterable[str], up_block_types: Iterable[str], layers_per_block: int,
                   transformer_layers_per_block: int | Iterable[int] = 1) -> list[tuple[str, Family]]:
    """Canonical (diffusers-layout) paths of every module sd-scripts may adapt in an SD 1.x/2.x UNet.

    A superset: ``conv_shortcut`` is listed for every resnet, whether or not this UNet has one there."""
    down, up = list(down_block_types), list(up_block_types)
    depth = _per_block(transformer_layers_per_block, len(down))
    out: list[tuple[str, Family]] = []
    for i, kind in enumerate(down):
        for j in range(layers_per_block):
            if "CrossAttn" in kind:
                out += _attention(f"down_blocks.{i}.attentions.{j}", depth[i])
            out += _resnet(f"down_blocks.{i}.resnets.{j}")
        if i < len(down) - 1:
            out.append((f"down_blocks.{i}.downsamplers.0.conv", "sampler"))
    out += [(p, "unet_io") for p in ("conv_in", "conv_out", "time_embedding.linear_1", "time_embedding.linear_2")]
    out += _attention("mid_block.attentions.0", depth[-1])
    out += _resnet("mid_block.resnets.0") + _resnet("mid_block.resnets.1")
    up_depth = list(reversed(depth))
    for i, kind in enumerate(up):
        for j in range(layers_per_block + 1):
            if "CrossAttn" in kind:
                out += _attention(f"up_blocks.{i}.attentions.{j}", up_depth[i])
            out += _resnet(f"up_blocks.{i}.resnets.{j}")
        if i < len(up) - 1:
            out.append((f"up_blocks.{i}.upsamplers.0.conv", "sampler"))
    return out


def sd1_text_encoder_paths(num_hidden_layers: int) -> list[tuple[str, Family]]:
    """Canonical (transformers 4) paths of the text encoder's adaptable modules."""
    return [(f"text_model.encoder.layers.{i}.{c}", "text") for i in range(num_hidden_layers) for c in _TEXT_CHILDREN]


class KohyaTable:
    """kohya name -> KohyaModule for one architecture, and its resolution against live models."""

    def __init__(self, modules: Iterable[KohyaModule]) -> None:
        self.modules: dict[str, KohyaModule] = {m.name: m for m in modules}

    @classmethod
    def sd1(cls, unet_config: Mapping[str, Any], text_encoder_layers: int | None) -> "KohyaTable":
        """From a diffusers UNet config and the text encoder's layer count (None: no text encoder)."""
        unet = sd1_unet_paths(unet_config["down_block_types"], unet_config["up_block_types"],
                              int(unet_config["layers_per_block"]),
                              unet_config.get("transformer_layers_per_block", 1) or 1)
        mods = [KohyaModule(kohya_name(UNET_PREFIX, p), "unet", p, f) for p, f in unet]
        if text_encoder_layers:
            mods += [KohyaModule(kohya_name(TEXT_ENCODER_PREFIX, p), "text_encoder", p, f)
                     for p, f in sd1_text_encoder_paths(text_encoder_layers)]
        return cls(mods)

    @classmethod
    def for_models(cls, unet: Any, text_encoder: Any | None) -> "KohyaTable":
        layers = text_encoder.config.num_hidden_layers if text_encoder is not None else None
        return cls.sd1(dict(unet.config), layers)

    def __contains__(self, name: str) -> bool:
        return name in self.modules

    def __len__(self) -> int:
        return len(self.modules)

    def resolve(self, models: Mapping[Component, Any]) -> dict[str, Any]:
        """kohya name -> live module, for every table entry that exists in ``models``."""
        out: dict[str, Any] = {}
        for name, m in self.modules.items():
            root = models.get(m.component)
            if root is None:
                continue
            module = find_module(root, m.path, m.component)
            if module is not None:
                out[name] = module
        return out

    def names_for(self, root: Any, component: Component) -> dict[int, str]:
        """id(live module) -> kohya name: how a writer names the modules it trained."""
        return {id(module): name for name, module in self.resolve({component: root}).items()}


def find_module(root: Any, canonical_path: str, component: Component) -> Any | None:
    """The module at ``canonical_path`` in ``root``, trying the component's known layouts."""
    candidates = [canonical_path] + [new + canonical_path[len(old):] for old, new in _ALIASES[component]
                                     if canonical_path.startswith(old)]
    for path in candidates:
        try:
            return root.get_submodule(path)
        except AttributeError:
            continue
    return None


def text_transformer(text_encoder: Any) -> Any:
    """The part of a CLIPTextModel holding ``encoder`` and ``final_layer_norm`` in either layout
    (transformers 4: ``text_encoder.text_model``; transformers 5: the model itself)."""
    return getattr(text_encoder, "text_model", text_encoder)
