"""Make the OneTrainer LoRA files in this folder with OneTrainer's own code (see README.md).

Run from the repository root with a OneTrainer checkout and the few packages its LoRA and saver modules
import (OneTrainer pins transformers 5.5.4, whose CLIPTextModel still has the ``text_model.`` level):

    pip install --target /tmp/otdeps parse==1.20.2 gguf transformers==5.5.4
    PYTHONPATH=/tmp/otdeps:$ONETRAINER_DIR HF_HUB_OFFLINE=1 .venv/bin/python tests/data/onetrainer/make_files.py sdxl
    PYTHONPATH=/tmp/otdeps:$ONETRAINER_DIR HF_HUB_OFFLINE=1 .venv/bin/python tests/data/onetrainer/make_files.py sd15

``sdxl``: a LoRA (``LoRAModuleWrapper``, OneTrainer's default ``full`` layer preset: every Linear and Conv2d,
rank 2, alpha 1) on the UNet and both text encoders of the tiny SDXL-layout demo model (``demo:tiny-sdxl``:
SDXL's block list, so its names are SDXL's). ``sd15``: the same on the SD-1.5-architecture model with random
weights (``.cache/sd15-random``, built by ``tests/_sd_scripts_helpers.py``; OneTrainer's SD 1.5 name map is
written for SD 1.5's exact layout, which the tiny SD 1.x demo does not have), through layer filters that keep the
files small and still cover every kind of layer (UNet: the first down block with its downsampler, a mid-block
attention and resnet conv, one attention and resnet of the last up block, an upsampler, conv_in and the time
embedding; text-encoder layers 0 and 11). Weights are set to seeded random values (a fresh LoRA's up weights
are zero) and saved by OneTrainer's LoRA saver in each LoRA format it offers for the family, plus its INTERNAL
format (the canonical in-memory names: diffusers module paths), the tests' reference for where each weight goes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
sys.path.insert(0, str(REPO))
FORMATS = {"sdxl": ("LEGACY_LORA", "KOHYA_LORA", "COMFY_LORA", "DIFFUSERS_LORA", "ORIGINAL_LORA", "INTERNAL"),
           "sd15": ("KOHYA_LORA", "COMFY_LORA", "DIFFUSERS_LORA", "ORIGINAL_LORA", "INTERNAL")}  # SD 1.5's LEGACY is its KOHYA
# ORIGINAL has no prefix for the UNet, so OneTrainer refuses it with a text encoder: it is saved UNet-only.
UNET_ONLY = ("ORIGINAL_LORA",)
SD15_UNET_FILTER = ["down_blocks.0.", "mid_block.attentions.0.proj_in", "mid_block.resnets.1.conv2",
                    "up_blocks.3.attentions.2.", "up_blocks.3.resnets.2.", "up_blocks.2.upsamplers", "conv_in",
                    "time_embedding"]
SD15_TEXT_FILTER = ["encoder.layers.0.", "encoder.layers.11."]
TEXT_LORAS = ("text_encoder_lora", "text_encoder_1_lora", "text_encoder_2_lora")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("family", choices=sorted(FORMATS))
    family = parser.parse_args().family

    import torch
    import transformers

    from modules.module.LoRAModule import LoRAModuleWrapper
    from modules.util.config.TrainConfig import TrainConfig
    from modules.util.enum.ModelFormat import ModelFormat
    from modules.util.enum.ModelType import ModelType
    from modules.util.modelSpec.ModelSpec import ModelSpec

    ot_dir = Path(sys.modules["modules"].__path__[0]).parent
    config = TrainConfig.default_values()
    config.lora_rank, config.lora_alpha = 2, 1.0
    if family == "sdxl":
        from diffusers import StableDiffusionXLPipeline

        from modules.model.StableDiffusionXLModel import StableDiffusionXLModel
        from modules.modelSaver.stableDiffusionXL.StableDiffusionXLLoRASaver import StableDiffusionXLLoRASaver
        from shared.demo_assets import ensure_demo_assets

        pipe = StableDiffusionXLPipeline.from_pretrained(ensure_demo_assets().sdxl_pipeline_dir)
        model = StableDiffusionXLModel(ModelType.STABLE_DIFFUSION_XL_10_BASE)
        model.unet, model.text_encoder_1, model.text_encoder_2 = pipe.unet, pipe.text_encoder, pipe.text_encoder_2
        model.text_encoder_1_lora = LoRAModuleWrapper(pipe.text_encoder, "text_encoder", config)
        model.text_encoder_2_lora = LoRAModuleWrapper(pipe.text_encoder_2, "text_encoder_2", config)
        model.unet_lora = LoRAModuleWrapper(pipe.unet, "unet", config, config.layer_filter.split(","))
        wrappers = (model.text_encoder_1_lora, model.text_encoder_2_lora, model.unet_lora)
        saver, spec_file = StableDiffusionXLLoRASaver(), "sd_xl_base_1.0-lora.json"
    else:
        from diffusers import StableDiffusionPipeline

        from modules.model.StableDiffusionModel import StableDiffusionModel
        from modules.modelSaver.stableDiffusion.StableDiffusionLoRASaver import StableDiffusionLoRASaver

        pipe = StableDiffusionPipeline.from_pretrained(REPO / ".cache" / "sd15-random", dtype=torch.float32)
        model = StableDiffusionModel(ModelType.STABLE_DIFFUSION_15)
        model.unet, model.text_encoder = pipe.unet, pipe.text_encoder
        model.text_encoder_lora = LoRAModuleWrapper(pipe.text_encoder, "text_encoder", config, SD15_TEXT_FILTER)
        model.unet_lora = LoRAModuleWrapper(pipe.unet, "unet", config, SD15_UNET_FILTER)
        wrappers = (model.text_encoder_lora, model.unet_lora)
        saver, spec_file = StableDiffusionLoRASaver(), "sd_1.5-lora.json"
    model.train_config = None
    spec = json.loads((ot_dir / "resources" / "sd_model_spec" / spec_file).read_text())
    spec["modelspec.thumbnail"] = ""  # a 20 KB JPEG; nothing here reads it
    model.model_spec = ModelSpec.from_dict(spec)
    generator = torch.Generator().manual_seed(0)
    for wrapper in wrappers:
        for name, tensor in wrapper.state_dict().items():
            if not name.endswith(".alpha"):
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.05)

    made = []
    for fmt in FORMATS[family]:
        dest = HERE / family / fmt.lower()
        if fmt == "INTERNAL":
            saver.save(model, ModelFormat.INTERNAL, str(dest), torch.float16)
            (dest / "lora" / "lora.safetensors").rename(dest / "internal.safetensors")
            (dest / "lora").rmdir()
            path = dest / "internal.safetensors"
        else:
            path = dest / f"{fmt.lower()}.safetensors"
            path.parent.mkdir(parents=True, exist_ok=True)
            text_loras = {a: getattr(model, a) for a in TEXT_LORAS if hasattr(model, a)}
            if fmt in UNET_ONLY:
                for attribute in text_loras:
                    setattr(model, attribute, None)
            saver.save(model, ModelFormat[fmt], str(path), torch.float16)
            for attribute, wrapper in text_loras.items():
                setattr(model, attribute, wrapper)
        made.append(path)
    commit = subprocess.run(["git", "-C", str(ot_dir), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    write_manifest(HERE / family, made, commit or os.environ.get("ONETRAINER_COMMIT", "unknown"),
                   transformers.__version__)


def write_manifest(folder: Path, paths: list[Path], commit: str, transformers_version: str) -> None:
    from safetensors import safe_open

    files = []
    for path in paths:
        with safe_open(str(path), framework="pt") as f:
            keys = sorted(f.keys())
            meta = f.metadata() or {}
        files.append({"path": str(path.relative_to(folder)), "format": path.parent.name.upper(), "keys": len(keys),
                      "first_keys": keys[:3], "bytes": path.stat().st_size,
                      "modelspec.architecture": meta.get("modelspec.architecture")})
    (folder / "manifest.json").write_text(json.dumps({"onetrainer_commit": commit, "transformers": transformers_version,
                                                      "files": files}, indent=2) + "\n")


if __name__ == "__main__":
    main()
