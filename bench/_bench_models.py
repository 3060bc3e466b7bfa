"""The models the benchmarks run on, one definition for all of them: the offline demo models, and full-size
SD-1.5 / SDXL 1.0 architectures with random weights (built once under .cache/, as the tests build them)."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MODELS = {"demo": "demo model (SD 1.x layout)", "demo-sdxl": "tiny SDXL-layout demo model",
          "sd15": "SD-1.5 architecture, random weights", "sdxl": "SDXL 1.0 architecture, random weights"}
RESOLUTION = {"sd15": 512, "sdxl": 1024}  # the others: 64


def add_model_arguments(ap) -> None:
    """``--model`` (with ``--sd15``/``--sdxl`` as shorthands) and ``--resolution``."""
    ap.add_argument("--model", choices=list(MODELS), default="demo",
                    help="; ".join(f"{k}: {v}" for k, v in MODELS.items()))
    ap.add_argument("--sd15", dest="model", action="store_const", const="sd15", help="= --model sd15")
    ap.add_argument("--sdxl", dest="model", action="store_const", const="sdxl", help="= --model sdxl")
    ap.add_argument("--resolution", type=int, default=None, help="default: 512 for sd15, 1024 for sdxl, else 64")


def resolution_for(model: str, given: int | None) -> int:
    return given or RESOLUTION.get(model, 64)


def base_for(model: str) -> str:
    """``model.base`` for a bench model: a ``demo:`` name, or the random full-size folder (built on first use)."""
    if model == "demo":
        return "demo:tiny"
    if model == "demo-sdxl":
        return "demo:tiny-sdxl"
    from _sd_scripts_helpers import build_sd15_random, build_sdxl_random

    build = build_sd15_random if model == "sd15" else build_sdxl_random
    return str(build(REPO / ".cache" / f"{model}-random"))


def random_vit_b32(dest: Path = REPO / ".cache" / "clip-vit-b-32-random.safetensors") -> Path:
    """A ViT-B-32 CLIP with random weights as a local safetensors file (built once)."""
    if dest.exists():
        return dest
    import open_clip
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-32", pretrained=None)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp))
    os.replace(tmp, dest)
    return dest
