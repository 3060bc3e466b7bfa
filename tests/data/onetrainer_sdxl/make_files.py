"""Make the OneTrainer SDXL LoRA files in this folder with OneTrainer's own code (see README.md).

Run from the repository root with a OneTrainer checkout and the few packages its LoRA and saver modules
import (OneTrainer pins transformers 5.5.4, whose CLIPTextModel still has the ``text_model.`` level):

    pip install --target /tmp/otdeps parse==1.20.2 gguf transformers==5.5.4
    PYTHONPATH=/tmp/otdeps:$ONETRAINER_DIR HF_HUB_OFFLINE=1 .venv/bin/python tests/data/onetrainer_sdxl/make_files.py

A LoRA (``LoRAModuleWrapper``, OneTrainer's default ``full`` layer preset, rank 2, alpha 1) is put on the
UNet and both text encoders of the tiny SDXL-layout demo model (``demo:tiny-sdxl``: SDXL's block list, so its
names are SDXL's), its weights set to seeded random values (a trained LoRA's up weights are non-zero; fresh
ones are zero), and saved by ``StableDiffusionXLLoRASaver`` in each LoRA output format OneTrainer offers for
SDXL, plus its INTERNAL format (the canonical in-memory names: diffusers module paths), which the tests use as
the reference for which layer each weight belongs to.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
sys.path.insert(0, str(REPO))
FORMATS = ("LEGACY_LORA", "KOHYA_LORA", "COMFY_LORA", "DIFFUSERS_LORA", "INTERNAL")


def main() -> None:
    import torch
    from diffusers import StableDiffusionXLPipeline

    from modules.model.StableDiffusionXLModel import StableDiffusionXLModel
    from modules.modelSaver.stableDiffusionXL.StableDiffusionXLLoRASaver import StableDiffusionXLLoRASaver
    from modules.module.LoRAModule import LoRAModuleWrapper
    from modules.util.config.TrainConfig import TrainConfig
    from modules.util.enum.ModelFormat import ModelFormat
    from modules.util.enum.ModelType import ModelType
    from modules.util.modelSpec.ModelSpec import ModelSpec
    from shared.demo_assets import ensure_demo_assets

    import transformers

    ot_dir = Path(sys.modules["modules"].__path__[0]).parent
    pipe = StableDiffusionXLPipeline.from_pretrained(ensure_demo_assets().sdxl_pipeline_dir)
    config = TrainConfig.default_values()
    config.lora_rank, config.lora_alpha = 2, 1.0

    model = StableDiffusionXLModel(ModelType.STABLE_DIFFUSION_XL_10_BASE)
    model.unet, model.text_encoder_1, model.text_encoder_2 = pipe.unet, pipe.text_encoder, pipe.text_encoder_2
    model.train_config = None
    spec = json.loads((ot_dir / "resources" / "sd_model_spec" / "sd_xl_base_1.0-lora.json").read_text())
    spec["modelspec.thumbnail"] = ""  # a 20 KB JPEG; nothing here reads it
    model.model_spec = ModelSpec.from_dict(spec)
    model.text_encoder_1_lora = LoRAModuleWrapper(pipe.text_encoder, "text_encoder", config)
    model.text_encoder_2_lora = LoRAModuleWrapper(pipe.text_encoder_2, "text_encoder_2", config)
    model.unet_lora = LoRAModuleWrapper(pipe.unet, "unet", config, config.layer_filter.split(","))
    generator = torch.Generator().manual_seed(0)
    for wrapper in (model.text_encoder_1_lora, model.text_encoder_2_lora, model.unet_lora):
        for name, tensor in wrapper.state_dict().items():
            if not name.endswith(".alpha"):
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.05)

    saver = StableDiffusionXLLoRASaver()
    made = []
    for fmt in FORMATS:
        dest = HERE / fmt.lower()
        if fmt == "INTERNAL":
            saver.save(model, ModelFormat.INTERNAL, str(dest), torch.float16)
            path = dest / "lora" / "lora.safetensors"
            path.rename(dest / "internal.safetensors")
            (dest / "lora").rmdir()
            path = dest / "internal.safetensors"
        else:
            path = dest / f"{fmt.lower()}.safetensors"
            path.parent.mkdir(parents=True, exist_ok=True)
            saver.save(model, ModelFormat[fmt], str(path), torch.float16)
        made.append(path)
    commit = subprocess.run(["git", "-C", str(ot_dir), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    write_manifest(made, commit or os.environ.get("ONETRAINER_COMMIT", "unknown"), transformers.__version__)


def write_manifest(paths: list[Path], commit: str, transformers_version: str) -> None:
    from safetensors import safe_open

    files = []
    for path in paths:
        with safe_open(str(path), framework="pt") as f:
            keys = sorted(f.keys())
            meta = f.metadata() or {}
        files.append({"path": str(path.relative_to(HERE)), "format": path.parent.name.upper(), "keys": len(keys),
                      "first_keys": keys[:3], "bytes": path.stat().st_size,
                      "modelspec.architecture": meta.get("modelspec.architecture")})
    (HERE / "manifest.json").write_text(json.dumps({"onetrainer_commit": commit, "transformers": transformers_version,
                                                    "files": files}, indent=2) + "\n")


if __name__ == "__main__":
    main()
