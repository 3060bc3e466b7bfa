"""The weight change each kind of kohya-format network file asks for, as plain tensor math.

A file holds ``<module>.<part>`` keys. Supported, per module (the formulas WebUI, ComfyUI and LyCORIS
use; ``s`` is the user's LoRA scale, ``r`` the rank):

- LoRA / LoCon / DyLoRA (``lora_down.weight``, ``lora_up.weight``, ``alpha``, optional
  ``lora_mid.weight``): dW = s * alpha / r * up @ down (3x3 down / 1x1 up for convs);
- LoHa (``hada_w1_a/_b``, ``hada_w2_a/_b``, optional ``hada_t1/_t2``):
  dW = s * alpha / r * (w1a @ w1b) * (w2a @ w2b);
- LoKr (``lokr_w1`` or ``lokr_w1_a/_b``, ``lokr_w2`` or ``lokr_w2_a/_b``, optional ``lokr_t2``):
  dW = s * (alpha / r if a side is factorised else 1) * kron(w1, w2);
- DoRA (any of the above plus ``dora_scale``): W' = (W + dW) * dora_scale / ||W + dW|| per output
  row (or input column), then blended by ``s`` as ComfyUI does.

The same parts under other tools' names (``lora_A``/``lora_B``) and module layouts are read through
``shared.lora_key_formats``. Anything else (IA3, full ``diff``, GLoRA, OFT/BOFT, peft's DoRA) is refused by
name: a key is either applied or named in the error, never dropped.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from shared.errors import CheckpointError
from shared.lora_key_formats import AB_PARTS, kohya_module_name, split_key

LORA_PARTS = {"lora_down.weight", "lora_up.weight", "lora_mid.weight"}
LOHA_PARTS = {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2"}
LOKR_PARTS = {"lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2"}
COMMON_PARTS = {"alpha", "dora_scale"}
KNOWN_PARTS = LORA_PARTS | LOHA_PARTS | LOKR_PARTS | COMMON_PARTS

# Parts of network kinds we recognise but do not merge: named in the refusal.
_OTHER_KINDS = {
    "on_input": "IA3", "diff": "full fine-tune (diff)", "diff_b": "full fine-tune (diff)",
    "a1.weight": "GLoRA", "a2.weight": "GLoRA", "b1.weight": "GLoRA", "b2.weight": "GLoRA",
    "oft_blocks": "OFT", "oft_diag": "OFT", "oft_R": "BOFT", "lora_magnitude_vector": "peft DoRA",
    "lora_magnitude_vector.weight": "peft DoRA",
}
_PARTS_IN_FILES = frozenset(KNOWN_PARTS | set(AB_PARTS))
ADAPTER_METADATA_KEY = "lora_adapter_metadata"  # diffusers' header with each component's peft LoraConfig


@dataclass
class ModuleAdapter:
    """One module's tensors from the file, and the kind they make."""

    name: str
    kind: str  # "lora" | "loha" | "lokr"
    parts: dict[str, torch.Tensor]

    @property
    def has_dora(self) -> bool:
        return "dora_scale" in self.parts

    def alpha(self, rank: int) -> float:
        a = self.parts.get("alpha")
        return float(a) if a is not None and float(a) != 0 else float(rank)

    def delta(self, shape: torch.Size, device: torch.device | str | None = None) -> torch.Tensor:
        """dW at scale 1 (float32), shaped like the module's weight; CheckpointError if it does not fit.

        ``device``: where to compute it (default: where the file's tensors are). The merge passes the
        layer's, so only the small factors travel to a GPU, not a dense layer-sized delta made on the CPU."""
        p = {k: v.to(device=device, dtype=torch.float32) for k, v in self.parts.items() if k != "alpha"}
        if self.kind == "lora":
            delta = _lora_delta(p, shape, self.alpha)
        elif self.kind == "loha":
            delta = _loha_delta(p, shape, self.alpha)
        else:
            delta = _lokr_delta(p, shape, self.alpha)
        if not _fits(self.kind, delta.shape, shape):
            raise CheckpointError(f"{self.name}: its {_KIND_NAMES[self.kind]} makes a {_dims(delta.shape)} weight "
                                  f"change ({self.shapes()}), but the layer's weight is {_dims(shape)} "
                                  f"({_layer_words(shape)}); nothing was applied: was it trained for another model?")
        return delta.reshape(shape)

    def merged(self, weight: torch.Tensor, scale: float) -> torch.Tensor:
        """The new weight (float32) for ``weight`` at user scale ``scale``."""
        w = weight.float()
        delta = self.delta(w.shape, w.device)
        if not self.has_dora:
            return w + scale * delta
        full = _weight_decompose(w + delta, self.parts["dora_scale"].to(w.device, torch.float32))
        return w + scale * (full - w)

    def shapes(self) -> str:
        """'lora_down (2, 16), lora_up (64, 2)': the file's tensor shapes, for messages."""
        return ", ".join(f"{k.removesuffix('.weight')} {tuple(v.shape)}"
                         for k, v in sorted(self.parts.items()) if k != "alpha")

    def _plain_lora_fits(self, shape: torch.Size) -> bool:
        """Whether this is a plain LoRA (no Tucker core, no DoRA) whose up @ down has the layer's shape."""
        if self.kind != "lora" or self.has_dora or "lora_mid.weight" in self.parts:
            return False
        up, down = self.parts["lora_up.weight"], self.parts["lora_down.weight"]
        if up.dim() not in (2, 4) or down.dim() not in (2, 4) or up.shape[1] != down.shape[0]:
            return False
        if up.dim() == 4 and tuple(up.shape[2:]) != (1, 1):
            return False
        kernel = tuple(down.shape[2:]) if down.dim() == 4 and tuple(down.shape[2:]) != (1, 1) else ()
        return _fits("lora", torch.Size((up.shape[0], down.shape[1], *kernel)), shape)

    def check_fits(self, shape: torch.Size) -> None:
        """Raise CheckpointError, naming the module and both shapes, unless this module's weights fit a layer
        whose weight has ``shape``. Runs the merge itself on shape-only (meta) tensors, so it checks exactly
        what ``merged`` will do, costs no memory and changes nothing. A plain LoRA that fits (nearly every
        module of nearly every file) is settled from its shapes alone: the meta merge costs ~0.2 ms a module,
        ~150 ms a swap for an SDXL file, on the path that scores the next checkpoint."""
        if self._plain_lora_fits(shape):
            return
        meta = ModuleAdapter(self.name, self.kind,
                             {k: v if k == "alpha" else v.to("meta") for k, v in self.parts.items()})
        try:
            meta.merged(torch.empty(tuple(shape), device="meta"), 1.0)
        except (RuntimeError, KeyError, IndexError, ValueError, NotImplementedError) as e:
            raise CheckpointError(f"{self.name}: its {_KIND_NAMES[self.kind]} weights ({self.shapes()}) do not fit "
                                  f"the layer's {_dims(shape)} weight ({_layer_words(shape)}): "
                                  f"{type(e).__name__}: {e}; nothing was applied: was it trained for another "
                                  "model?") from None


_KIND_NAMES = {"lora": "LoRA", "loha": "LoHa", "lokr": "LoKr"}


def _dims(shape) -> str:
    return "x".join(str(d) for d in shape)


def _layer_words(shape) -> str:
    if len(shape) == 4:
        return f"out {shape[0]}, in {shape[1]}, kernel {shape[2]}x{shape[3]}"
    if len(shape) == 2:
        return f"out {shape[0]}, in {shape[1]}"
    return f"{len(shape)}-d"


def _fits(kind: str, got: torch.Size, layer: torch.Size) -> bool:
    """Whether a weight change of shape ``got`` is one for a layer whose weight has shape ``layer``: the same
    out features, in features and kernel. A linear layer and a 1x1 conv are the same matrix (either shape fits
    either layer); LoHa and LoKr factors of a k x k conv may be stored flattened, (out, in * k * k), as
    LyCORIS writes them. Never a match of element counts alone."""
    got, layer = tuple(got), tuple(layer)
    if got == layer:
        return True
    if len(layer) not in (2, 4) or len(got) not in (2, 4) or got[0] != layer[0]:
        return False
    pointwise = lambda s: all(k == 1 for k in s[2:])  # noqa: E731 - linear, or a 1x1 conv
    if pointwise(got) and pointwise(layer) and got[1] == layer[1]:
        return True
    return kind != "lora" and len(got) == 2 and got[1] == math.prod(layer[1:])


def _lora_delta(p: dict[str, torch.Tensor], shape: torch.Size, alpha) -> torch.Tensor:
    up, down = p["lora_up.weight"], p["lora_down.weight"]
    rank = down.shape[0]
    if "lora_mid.weight" in p:  # LoCon with a Tucker core: fold the core into down
        mid = p["lora_mid.weight"]
        final = [down.shape[1], down.shape[0], mid.shape[2], mid.shape[3]]
        down = torch.mm(down.transpose(0, 1).flatten(start_dim=1),
                        mid.transpose(0, 1).flatten(start_dim=1)).reshape(final).transpose(0, 1)
    if down.dim() == 4 and down.shape[-2:] != (1, 1):  # conv: k x k down, 1 x 1 up
        delta = torch.einsum("or,rikl->oikl", up.flatten(1), down)
    else:
        delta = up.flatten(1) @ down.flatten(1)
    return delta * (alpha(rank) / rank)


def _rebuild_tucker(t: torch.Tensor, wa: torch.Tensor, wb: torch.Tensor) -> torch.Tensor:
    return torch.einsum("i j k l, j r, i p -> p r k l", t, wb, wa)


def _loha_delta(p: dict[str, torch.Tensor], shape: torch.Size, alpha) -> torch.Tensor:
    w1a, w1b, w2a, w2b = p["hada_w1_a"], p["hada_w1_b"], p["hada_w2_a"], p["hada_w2_b"]
    rank = w1b.shape[0]
    if "hada_t1" in p and "hada_t2" in p:
        m1, m2 = _rebuild_tucker(p["hada_t1"], w1a, w1b), _rebuild_tucker(p["hada_t2"], w2a, w2b)
    else:
        m1, m2 = w1a @ w1b, w2a @ w2b
    if m1.shape != m2.shape:  # never broadcast one factor over the other
        raise ValueError(f"its two Hadamard factors are {_dims(m1.shape)} and {_dims(m2.shape)}")
    return (m1 * m2) * (alpha(rank) / rank)


def _lokr_delta(p: dict[str, torch.Tensor], shape: torch.Size, alpha) -> torch.Tensor:
    rank = None
    w1 = p.get("lokr_w1")
    if w1 is None:
        rank = p["lokr_w1_b"].shape[0]
        w1 = p["lokr_w1_a"] @ p["lokr_w1_b"]
    w2 = p.get("lokr_w2")
    if w2 is None:
        rank = p["lokr_w2_b"].shape[0]
        if "lokr_t2" in p:
            w2 = _rebuild_tucker(p["lokr_t2"], p["lokr_w2_a"], p["lokr_w2_b"])
        elif len(shape) == 4:
            w2 = (p["lokr_w2_a"] @ p["lokr_w2_b"].flatten(1)).reshape(
                p["lokr_w2_a"].shape[0], -1, *shape[2:])
        else:
            w2 = p["lokr_w2_a"] @ p["lokr_w2_b"]
    if w2.dim() == 4 and w1.dim() == 2:
        w1 = w1.unsqueeze(2).unsqueeze(2)
    factor = alpha(rank) / rank if rank is not None else 1.0
    return torch.kron(w1.contiguous(), w2.contiguous()) * factor  # kron views its inputs: a Tucker w2 is not


def _weight_decompose(weight: torch.Tensor, dora_scale: torch.Tensor) -> torch.Tensor:
    """DoRA: rescale each output row (or input column) of ``weight`` to the learnt magnitude."""
    eps = torch.finfo(weight.dtype).eps
    if dora_scale.shape[0] == weight.shape[0] and (dora_scale.dim() < 2 or dora_scale.shape[1] == 1):
        norm = weight.reshape(weight.shape[0], -1).norm(dim=1).reshape(weight.shape[0], *[1] * (weight.dim() - 1))
    else:
        norm = (weight.transpose(0, 1).reshape(weight.shape[1], -1).norm(dim=1, keepdim=True)
                .reshape(weight.shape[1], *[1] * (weight.dim() - 1)).transpose(0, 1))
    return weight * (dora_scale.reshape(norm.shape) / (norm + eps))


def _other_kind(key: str) -> str | None:
    for suffix, kind in _OTHER_KINDS.items():
        if key.endswith("." + suffix):
            return kind
    return None


def network_kind(parts: set[str]) -> str | None:
    if parts & LOHA_PARTS:
        return "loha"
    if parts & LOKR_PARTS:
        return "lokr"
    if {"lora_down.weight", "lora_up.weight"} <= parts:
        return "lora"
    return None


def parse_network(state: Mapping[str, torch.Tensor],
                  metadata: Mapping[str, str] | None = None) -> dict[str, ModuleAdapter]:
    """Group a file's keys by module, keyed by kohya-style module name (``shared.lora_key_formats``: the
    layouts of ComfyUI, diffusers/peft and OneTrainer too); raise naming every key that cannot be merged.
    Each adapter keeps the module's name as the file gives it, for messages."""
    by_module: dict[str, dict[str, torch.Tensor]] = {}
    file_names: dict[str, str] = {}
    file_parts: dict[str, list[str]] = {}
    unknown: list[str] = []
    other_kinds: dict[str, str] = {}
    for key, tensor in state.items():
        split = split_key(key, _PARTS_IN_FILES)
        if split is None:
            if (kind := _other_kind(key)) is not None:
                other_kinds.setdefault(kind, key)
            else:
                unknown.append(key)
            continue
        module, part = split
        name = kohya_module_name(module)
        if file_names.setdefault(name, module) != module:
            raise CheckpointError(f"{file_names[name]} and {module} name the same module; nothing was applied")
        parts, kohya_part = by_module.setdefault(name, {}), AB_PARTS.get(part, part)
        if kohya_part in parts:  # lora_A beside lora_down
            given = next(p for p in file_parts[name] if AB_PARTS.get(p, p) == kohya_part)
            raise CheckpointError(f"{key} repeats a weight the file already gives ({module}.{given}); "
                                  "nothing was applied")
        parts[kohya_part] = tensor
        file_parts.setdefault(name, []).append(part)
    bundled = sorted(k for k in unknown if k.startswith("bundle_emb."))
    if bundled:
        raise CheckpointError(f"it holds embeddings bundled with the LoRA ({len(bundled)} keys, e.g. {bundled[0]}): "
                              "textual-inversion vectors, which the evaluator does not apply; nothing was applied "
                              "(OneTrainer: save without bundle_additional_embeddings to score the LoRA alone)")
    if other_kinds:
        kinds = ", ".join(f"{k} (e.g. {v})" for k, v in sorted(other_kinds.items()))
        raise CheckpointError(f"this is a {kinds} network, which the evaluator cannot merge; "
                              "it scores LoRA, LoCon, DyLoRA, LoHa, LoKr and DoRA files")
    if unknown:
        raise CheckpointError(f"{len(unknown)} of {len(state)} keys are not parts of a kohya-format network "
                              f"(first: {unknown[0]}); nothing was applied")
    if not by_module:
        raise CheckpointError("no network weights in this file (no lora_down/hada_/lokr_ keys)")
    _check_dtypes(by_module)
    _alpha_from_adapter_metadata(by_module, file_names, metadata or {})
    adapters: dict[str, ModuleAdapter] = {}
    for module, parts in by_module.items():
        kind = network_kind(set(parts))
        if kind is None:
            raise CheckpointError(f"module {file_names[module]} has only {sorted(file_parts[module])}: incomplete "
                                  "network weights")
        adapters[module] = ModuleAdapter(file_names[module], kind, parts)
    return adapters


def _alpha_from_adapter_metadata(by_module: dict[str, dict[str, torch.Tensor]], file_names: Mapping[str, str],
                                 metadata: Mapping[str, str]) -> None:
    """diffusers files keep no alpha per module: the scale is 1 unless the ``lora_adapter_metadata`` header
    (diffusers >= 0.34) gives each component's peft ``lora_alpha`` and ``r``; that alpha is filled in. Per-layer
    patterns and peft's DoRA are refused by name."""
    import json

    raw = metadata.get(ADAPTER_METADATA_KEY)
    if not raw:
        return
    try:
        configs = json.loads(raw)
    except ValueError:
        raise CheckpointError(f"its {ADAPTER_METADATA_KEY} header is not JSON; nothing was applied") from None
    for component, config in (configs.items() if isinstance(configs, dict) else ()):
        if not isinstance(config, dict):
            continue
        for setting in ("rank_pattern", "alpha_pattern", "use_dora"):
            if config.get(setting):
                raise CheckpointError(f"its {ADAPTER_METADATA_KEY} sets {setting} for {component}, which the "
                                      "evaluator does not apply; nothing was applied")
        alpha = config.get("lora_alpha")
        if not isinstance(alpha, (int, float)):
            continue
        for name, parts in by_module.items():
            if "alpha" not in parts and file_names[name].startswith(component + "."):
                parts["alpha"] = torch.tensor(float(alpha))


def _check_dtypes(by_module: Mapping[str, Mapping[str, torch.Tensor]]) -> None:
    """Weights must be floating point (an int8 or bool "LoRA" is a broken export, not a tiny delta); ``alpha``
    must be one number, float or integer (sd-scripts and LyCORIS store a float; some converters an int)."""
    weights: list[str] = []
    alphas: list[str] = []
    for module, parts in by_module.items():
        for part, t in sorted(parts.items()):
            dtype = str(t.dtype).removeprefix("torch.")
            if part != "alpha":
                if not t.is_floating_point():
                    weights.append(f"{module}.{part} is {dtype}")
            elif t.dtype == torch.bool or t.is_complex():
                alphas.append(f"{module}.alpha is {dtype}")
            elif t.numel() != 1:
                alphas.append(f"{module}.alpha has {t.numel()} values {tuple(t.shape)}, not one")
    bad = weights + alphas  # a weight tensor named first
    if bad:
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise CheckpointError(f"{bad[0]}{more}: network weights must be floating point tensors (alpha one float or "
                              "integer number); nothing was applied")


def describe(adapters: Mapping[str, ModuleAdapter]) -> str:
    """'LoRA (264 modules)', 'LoHa + DoRA (192 modules)': for logs and metrics.json."""
    names = {"lora": "LoRA", "loha": "LoHa", "lokr": "LoKr"}
    kinds = sorted({names[a.kind] for a in adapters.values()})
    dora = " + DoRA" if any(a.has_dora for a in adapters.values()) else ""
    return f"{'/'.join(kinds)}{dora} ({len(adapters)} modules)"
