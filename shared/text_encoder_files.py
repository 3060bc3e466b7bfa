"""The on-disk key names of the CLIP text encoders in a diffusers folder we write.

Every diffusers folder on the hub (SD 1.5, SDXL) stores ``CLIPTextModel`` weights as ``text_model.encoder…``:
transformers 4's names, which transformers 5 also reads. transformers 5's ``save_pretrained`` writes them
without the ``text_model.`` level, and transformers 4 (sd-scripts' and kohya_ss' venvs, older diffusers
installs) then loads every text-encoder weight as missing, that is random, with only a warning. So a folder
we write is rewritten to the hub's names, whatever transformers wrote it."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

TEXT_MODEL_PREFIX = "text_model."
# Keys that stay outside ``text_model.`` (CLIPTextModelWithProjection's projection, SDXL's second encoder).
TOP_LEVEL_PREFIXES = ("text_projection.",)
TEXT_ENCODER_DIRS = ("text_encoder", "text_encoder_2")


def hub_key(key: str) -> str:
    """The hub (transformers 4) name of a CLIP text-encoder state-dict key; idempotent."""
    if key.startswith(TEXT_MODEL_PREFIX) or key.startswith(TOP_LEVEL_PREFIXES):
        return key
    return TEXT_MODEL_PREFIX + key


def _renamed(keys) -> bool:
    """Some key is not under its hub name."""
    return any(hub_key(k) != k for k in keys)


def needs_hub_names(model_dir: Path | str) -> bool:
    """True when a text-encoder file in ``model_dir`` has a key without its hub name (reads headers only)."""
    from safetensors import safe_open

    for path in _weight_files(Path(model_dir)):
        with safe_open(str(path), framework="pt") as f:
            if _renamed(f.keys()):
                return True
    return False


def write_hub_names(model_dir: Path | str) -> bool:
    """Rewrite ``text_encoder*/*.safetensors`` (and a sharded index) of ``model_dir`` with the hub's key names,
    each file atomically, metadata kept. Returns True when a file was rewritten; a second call does nothing."""
    changed = False
    for sub in TEXT_ENCODER_DIRS:
        te_dir = Path(model_dir) / sub
        for path in _weight_files(Path(model_dir), (sub,)):
            changed |= _rename_keys_in(path)
        index = te_dir / "model.safetensors.index.json"
        if index.exists():
            from shared.jsonio import atomic_write_text

            data = json.loads(index.read_text(encoding="utf-8"))
            weight_map = data.get("weight_map", {})
            if _renamed(weight_map):
                data["weight_map"] = {hub_key(k): v for k, v in weight_map.items()}
                atomic_write_text(index, json.dumps(data, indent=2) + "\n")
                changed = True
    return changed


def _weight_files(model_dir: Path, subs: tuple[str, ...] = TEXT_ENCODER_DIRS) -> list[Path]:
    return [p for sub in subs for p in sorted((model_dir / sub).glob("*.safetensors"))]


def _rename_keys_in(path: Path) -> bool:
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as f:
        keys = list(f.keys())
        if not _renamed(keys):
            return False
        metadata = f.metadata() or {"format": "pt"}
        tensors = {hub_key(k): f.get_tensor(k) for k in keys}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        save_file(tensors, str(tmp), metadata=metadata)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        shutil.copymode(path, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return True


# Weights whose random initialisation (normal) never equals the file's: if one differs after loading, transformers
# did not read the file's names and left the text encoder random (it only warns).
PROBE_KEYS = ("text_model.embeddings.position_embedding.weight", "text_model.encoder.layers.0.self_attn.q_proj.weight")


def weights_left_random(model, te_dir: Path | str) -> list[str]:
    """The probe weights of a loaded text encoder that do not hold the values in ``te_dir``'s safetensors files
    (compared under the hub's names, so either naming works). Empty when they match, or when the folder holds
    no safetensors files or the model is no CLIP text encoder."""
    from safetensors import safe_open

    params = {hub_key(name): p for name, p in model.named_parameters()}
    files = _files_loaded_without_variant(Path(te_dir))
    if not files or not all(k in params for k in PROBE_KEYS):
        return []
    found = {}
    for path in files:  # each file opened once
        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():
                if hub_key(name) in PROBE_KEYS:
                    found.setdefault(hub_key(name), f.get_tensor(name))
    loaded = {probe: params[probe].detach().cpu() for probe in PROBE_KEYS}
    return [p for p in PROBE_KEYS if p not in found or not found[p].to(loaded[p].dtype).equal(loaded[p])]


def _files_loaded_without_variant(te_dir: Path) -> list[Path]:
    """The files ``from_pretrained`` reads when no variant is asked for: hub folders also hold
    ``model.fp16.safetensors``, whose values differ from ``model.safetensors``'."""
    index = te_dir / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map", {})
        except (OSError, ValueError, AttributeError):
            return []
        return [te_dir / name for name in sorted(set(weight_map.values())) if (te_dir / name).is_file()]
    single = te_dir / "model.safetensors"
    return [single] if single.is_file() else []
