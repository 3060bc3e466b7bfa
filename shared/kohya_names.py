"""kohya / sd-scripts LoRA module names for SD 1.x and SDXL: the one table our writer and reader use.

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
For SDXL, sd-scripts' UNet is the original (ldm) one, so its names follow that layout
(``input_blocks.4.1.transformer_blocks.0.attn1.to_q``, resnet ``in_layers.2``/``emb_layers.1``/
``out_layers.3``/``skip_connection``, sampler ``…0.op``/``…2.conv``), and the two text encoders are
``lora_te1_`` and ``lora_te2_``; the table maps each to its diffusers module.
LyCORIS (LoHa, LoKr, DoRA, ...) uses the same names for the same modules; on SD 1.x its default preset
also adapts the UNet's conv_in, conv_out and time_embedding.linear_1/_2 (on sd-scripts' SDXL UNet those
preset names match nothing, but a file made elsewhere may hold ``input_blocks_0_0``, ``out_2``,
``time_embed_0``/``_2`` or ``label_emb_0_0``/``_2``, which the table also maps). OneTrainer's default preset
adapts every Linear and Conv2d, which adds SDXL's second encoder's ``text_projection``. Files of other tools
name the same modules in the other UNet layout or other prefixes (``shared.lora_key_formats``): the table's
aliases take those names to its own.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

UNET_PREFIX = "lora_unet"
TEXT_PROJECTION = "text_projection"  # CLIPTextModelWithProjection's projection, top level in every layout
TEXT_ENCODER_PREFIX = "lora_te"
SDXL_TEXT_ENCODER_PREFIXES = ("lora_te1", "lora_te2")

Component = Literal["unet", "text_encoder", "text_encoder_2"]
Family = Literal["attention", "resnet", "sampler", "text", "unet_io"]

_ATTENTION_CHILDREN = ("proj_in", "proj_out")
_BLOCK_CHILDREN = tuple(f"{attn}.{p}" for attn in ("attn1", "attn2") for p in ("to_q", "to_k", "to_v", "to_out.0")) + (
    "ff.net.0.proj", "ff.net.2")
_RESNET_CHILDREN = ("conv1", "conv2", "time_emb_proj", "conv_shortcut")
_RESNET_LDM = ("in_layers.2", "out_layers.3", "emb_layers.1", "skip_connection")  # the same modules, ldm names
_TEXT_CHILDREN = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "mlp.fc1", "mlp.fc2")

# Other layouts of the same module, tried in order when the canonical path is not in a live model.
_ALIASES: dict[Component, tuple[tuple[str, str], ...]] = {
    "unet": (),
    "text_encoder": (("text_model.", ""),),  # transformers >= 5: no text_model level
    "text_encoder_2": (("text_model.", ""),),
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


def _attention(path: str, ldm: str, depth: int) -> list[tuple[str, str, Family]]:
    out = [(f"{path}.{c}", f"{ldm}.{c}", "attention") for c in _ATTENTION_CHILDREN]
    for t in range(depth):
        out += [(f"{path}.transformer_blocks.{t}.{c}", f"{ldm}.transformer_blocks.{t}.{c}", "attention")
                for c in _BLOCK_CHILDREN]
    return out


def _resnet(path: str, ldm: str) -> list[tuple[str, str, Family]]:
    return [(f"{path}.{c}", f"{ldm}.{c_ldm}", "resnet") for c, c_ldm in zip(_RESNET_CHILDREN, _RESNET_LDM)]


def unet_paths(down_block_types: Iterable[str], up_block_types: Iterable[str], layers_per_block: int,
               transformer_layers_per_block: int | Iterable[int] = 1,
               size_conditioning: bool = False) -> list[tuple[str, str, Family]]:
    """(diffusers path, original ldm path, family) of every module sd-scripts or LyCORIS may adapt in a
    UNet of this layout: the SD 1.x/2.x and SDXL UNets share it, with different block lists.

    The ldm layout numbers ``input_blocks`` / ``output_blocks`` by position: down block i, layer j is
    ``input_blocks.{1 + i*(L+1) + j}`` (``.0`` the resnet, ``.1`` the attention), its downsampler
    ``input_blocks.{(i+1)*(L+1)}.0.op``; up block i, layer j is ``output_blocks.{i*(L+1) + j}``, its
    upsampler the next child after the resnet and attention. A superset: ``conv_shortcut`` is listed for
    every resnet, whether or not this UNet has one there."""
    down, up = list(down_block_types), list(up_block_types)
    per = int(layers_per_block)
    depth = _per_block(transformer_layers_per_block, len(down))
    out: list[tuple[str, str, Family]] = []
    for i, kind in enumerate(down):
        for j in range(per):
            ldm = f"input_blocks.{1 + i * (per + 1) + j}"
            if "CrossAttn" in kind:
                out += _attention(f"down_blocks.{i}.attentions.{j}", f"{ldm}.1", depth[i])
            out += _resnet(f"down_blocks.{i}.resnets.{j}", f"{ldm}.0")
        if i < len(down) - 1:
            sampler = f"input_blocks.{(i + 1) * (per + 1)}.0.op"
            out.append((f"down_blocks.{i}.downsamplers.0.conv", sampler, "sampler"))
    io = [("conv_in", "input_blocks.0.0"), ("conv_out", "out.2"), ("time_embedding.linear_1", "time_embed.0"),
          ("time_embedding.linear_2", "time_embed.2")]
    if size_conditioning:
        io += [("add_embedding.linear_1", "label_emb.0.0"), ("add_embedding.linear_2", "label_emb.0.2")]
    out += [(path, ldm, "unet_io") for path, ldm in io]
    out += _attention("mid_block.attentions.0", "middle_block.1", depth[-1])
    out += _resnet("mid_block.resnets.0", "middle_block.0") + _resnet("mid_block.resnets.1", "middle_block.2")
    up_depth = list(reversed(depth))
    for i, kind in enumerate(up):
        attention = "CrossAttn" in kind
        for j in range(per + 1):
            ldm = f"output_blocks.{i * (per + 1) + j}"
            if attention:
                out += _attention(f"up_blocks.{i}.attentions.{j}", f"{ldm}.1", up_depth[i])
            out += _resnet(f"up_blocks.{i}.resnets.{j}", f"{ldm}.0")
        if i < len(up) - 1:
            last = f"output_blocks.{i * (per + 1) + per}.{2 if attention else 1}.conv"
            out.append((f"up_blocks.{i}.upsamplers.0.conv", last, "sampler"))
    return out


def text_encoder_paths(num_hidden_layers: int) -> list[tuple[str, Family]]:
    """Canonical (transformers 4) paths of a CLIP text encoder's adaptable modules (SD 1.x's, and each
    of SDXL's two: sd-scripts loads SDXL's second encoder as a ``CLIPTextModelWithProjection``, whose
    encoder sits under the same ``text_model.`` level)."""
    return [(f"text_model.encoder.layers.{i}.{c}", "text") for i in range(num_hidden_layers) for c in _TEXT_CHILDREN]



def _unet_config_args(unet_config: Mapping[str, Any]) -> tuple:
    return (unet_config["down_block_types"], unet_config["up_block_types"], int(unet_config["layers_per_block"]),
            unet_config.get("transformer_layers_per_block", 1) or 1)


def is_sdxl_unet(unet_config: Mapping[str, Any]) -> bool:
    """SDXL's UNet is the one conditioned on sizes and a pooled text embedding (``text_time``)."""
    return unet_config.get("addition_embed_type") == "text_time"


class KohyaTable:
    """kohya name -> KohyaModule for one architecture, and its resolution against live models.

    ``aliases`` maps the other names a file may give a module to its kohya name: the UNet path in the other
    layout (OneTrainer's SDXL files keep diffusers paths, ComfyUI's SD 1.x files ldm ones), ``lora_te1_`` for
    SD 1.x's only text encoder, and text-encoder paths without ``text_model.`` (written under transformers 5)."""

    def __init__(self, modules: Iterable[KohyaModule], aliases: Mapping[str, str] | None = None) -> None:
        self.modules: dict[str, KohyaModule] = {m.name: m for m in modules}
        self.aliases: dict[str, str] = {a: n for a, n in (aliases or {}).items() if a not in self.modules}

    @classmethod
    def sd1(cls, unet_config: Mapping[str, Any], text_encoder_layers: int | None) -> "KohyaTable":
        """From a diffusers UNet config and the text encoder's layer count (None: no text encoder).
        sd-scripts names SD 1.x UNet modules by their diffusers paths."""
        paths = unet_paths(*_unet_config_args(unet_config))
        mods = [KohyaModule(kohya_name(UNET_PREFIX, path), "unet", path, f) for path, _, f in paths]
        aliases = {kohya_name(UNET_PREFIX, ldm): kohya_name(UNET_PREFIX, path) for path, ldm, _ in paths}
        if text_encoder_layers:
            te = [KohyaModule(kohya_name(TEXT_ENCODER_PREFIX, p), "text_encoder", p, f)
                  for p, f in text_encoder_paths(text_encoder_layers)]
            mods += te
            aliases |= _text_aliases(te, (TEXT_ENCODER_PREFIX, SDXL_TEXT_ENCODER_PREFIXES[0]))
        return cls(mods, aliases)

    @classmethod
    def sdxl(cls, unet_config: Mapping[str, Any], te1_layers: int | None, te2_layers: int | None) -> "KohyaTable":
        """SDXL: sd-scripts names UNet modules by their original (ldm) paths
        (``lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q``) and the text encoders
        ``lora_te1_…`` / ``lora_te2_…``; each entry still resolves to its diffusers module."""
        paths = unet_paths(*_unet_config_args(unet_config), size_conditioning=True)
        mods = [KohyaModule(kohya_name(UNET_PREFIX, ldm), "unet", path, f) for path, ldm, f in paths]
        aliases = {kohya_name(UNET_PREFIX, path): kohya_name(UNET_PREFIX, ldm) for path, ldm, _ in paths}
        for prefix, component, layers in zip(SDXL_TEXT_ENCODER_PREFIXES, ("text_encoder", "text_encoder_2"),
                                             (te1_layers, te2_layers)):
            if layers:
                te = [KohyaModule(kohya_name(prefix, p), component, p, f) for p, f in text_encoder_paths(layers)]
                if component == "text_encoder_2":  # its projection: OneTrainer's default preset adapts it
                    te.append(KohyaModule(kohya_name(prefix, TEXT_PROJECTION), component, TEXT_PROJECTION, "text"))
                mods += te
                aliases |= _text_aliases(te, (prefix,))
        return cls(mods, aliases)

    @classmethod
    def for_models(cls, unet: Any, text_encoder: Any | None, text_encoder_2: Any | None = None) -> "KohyaTable":
        """The table for live models: SDXL when the UNet is size-conditioned or a second encoder is given."""
        layers = lambda te: te.config.num_hidden_layers if te is not None else None  # noqa: E731
        config = dict(unet.config)
        if is_sdxl_unet(config) or text_encoder_2 is not None:
            return cls.sdxl(config, layers(text_encoder), layers(text_encoder_2))
        return cls.sd1(config, layers(text_encoder))

    def __contains__(self, name: str) -> bool:
        return name in self.modules

    def canonical(self, name: str) -> str | None:
        """The kohya name of a module named ``name`` in a file (a kohya name or an alias); None if none."""
        return name if name in self.modules else self.aliases.get(name)

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


def _text_aliases(modules: list[KohyaModule], prefixes: tuple[str, ...]) -> dict[str, str]:
    """Other names of text-encoder modules: under each of ``prefixes``, and without ``text_model.`` (files
    written under transformers 5, which has no such level)."""
    return {kohya_name(prefix, path): m.name for m in modules for prefix in prefixes
            for path in (m.path, m.path.removeprefix("text_model."))}


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
