"""SD-1.5- and SDXL-architecture diffusers folders with random weights, built offline (sd-scripts hard-codes the
SD 1.5 and SDXL shapes, so the tiny demo model cannot stand in for them).

The folder is read by two transformers majors: ours (5.x) writes it, and sd-scripts' own venv (4.x) reads it.
transformers 5 saves ``CLIPTextModel`` without the ``text_model.`` key prefix that transformers 4 expects, so
transformers 4 would load the text encoder with every weight missing (that is, random). After saving, the
text encoder's safetensors file is rewritten with the hub's (transformers 4) names: ``shared.text_encoder_files``."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from shared.jsonio import build_folder
from shared.text_encoder_files import hub_key, write_hub_names
from _disk import skip_unless_free_disk

def tokenizer_cache_and_images(root: Path, train_dir: Path, images: int) -> None:
    """What an sd-scripts test run needs beside the model: sd-scripts' tokenizer cache in ``root/tok`` (SD 1.x
    and SDXL tokenizers) and a kohya dataset ``root/data/1_sks`` of the first ``images`` demo circles."""
    from conftest import run_cli

    run_cli("trainer", "tokenizer-cache", str(root / "tok"))
    data = root / "data" / "1_sks"
    data.mkdir(parents=True)
    for src in sorted((train_dir / "2_circle").glob("*.png"))[:images]:
        shutil.copy(src, data / src.name)
        (data / src.with_suffix(".txt").name).write_text("a red circle, sks")


SD15_RANDOM_GB = 2.0  # fp16 on disk
SDXL_RANDOM_GB = 6.5


def build_sd15_random(dest: Path) -> Path:
    """Build (once) the random SD-1.5 folder at ``dest``. It is built in a temporary sibling folder and renamed
    into place, so a reader never sees a half-written model; an existing folder from before the key fix is
    fixed in place."""
    dest = Path(dest)
    if (dest / "model_index.json").exists():
        write_hub_names(dest)
        return dest
    skip_unless_free_disk(dest.parent, SD15_RANDOM_GB, "the random full-size SD 1.5 model")
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from shared.clip_tokenizer import write_slow_tokenizer_files, write_tokenizer_files
    from shared.base_configs import sd15_scheduler_config

    dest.parent.mkdir(parents=True, exist_ok=True)
    tok_dir = write_tokenizer_files(dest.parent / (dest.name + ".tokenizer"))
    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, sample_size=512, layers_per_block=2,
                        block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4)
    text = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_attention_heads=12,
                                        num_hidden_layers=12, max_position_embeddings=77, hidden_act="quick_gelu",
                                        projection_dim=768, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407))
    pipe = StableDiffusionPipeline(unet=unet, vae=vae, text_encoder=text, tokenizer=CLIPTokenizer.from_pretrained(tok_dir),
                                   scheduler=DDIMScheduler.from_config(sd15_scheduler_config()), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    def build(tmp: Path) -> None:
        pipe.to(torch.float16).save_pretrained(tmp, safe_serialization=True)
        write_slow_tokenizer_files(tmp)
        write_hub_names(tmp)

    return build_folder(dest, build)


SDXL_INIT_STD = 0.02  # every weight except norms' (ones) and biases (zeros): N(0, 0.02), as CLIP initialises


def _sdxl_init(component: str, key: str, shape: tuple[int, ...]):
    """The fp16 value of one random SDXL tensor: deterministic per (component, key), whatever the order."""
    import zlib

    import torch

    if key.endswith("bias"):
        return torch.zeros(shape, dtype=torch.float16)
    if len(shape) == 1 and "norm" in key:
        return torch.ones(shape, dtype=torch.float16)
    gen = torch.Generator().manual_seed(zlib.crc32(f"{component}/{key}".encode()))
    return torch.randn(shape, generator=gen).mul_(SDXL_INIT_STD).to(torch.float16)


def _write_random_safetensors(path: Path, component: str, shapes: dict[str, tuple[int, ...]]) -> None:
    """Write ``shapes`` as a safetensors file of random fp16 tensors, one tensor in memory at a time (the header
    is computed first, then each tensor is made, written and dropped)."""
    import json
    import struct

    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for key in sorted(shapes):
        n = 2
        for d in shapes[key]:
            n *= d
        header[key] = {"dtype": "F16", "shape": list(shapes[key]), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for key in sorted(shapes):
            f.write(_sdxl_init(component, key, shapes[key]).numpy().tobytes())
        f.flush()
        os.fsync(f.fileno())


def build_sdxl_random(dest: Path) -> Path:
    """Build (once) a diffusers folder with the exact SDXL 1.0 base architecture and random weights at ``dest``:
    ``unet/``, ``vae/`` (diffusers), ``text_encoder/`` (``CLIPTextModel``, ViT-L), ``text_encoder_2/``
    (``CLIPTextModelWithProjection``, bigG), ``tokenizer/``, ``tokenizer_2/`` (pad token ``"!"``), ``scheduler/``
    (Euler), all weights fp16, text-encoder keys with their transformers 4 names (``text_model.…``,
    ``text_projection.weight``). The configs are ``tests/_sdxl_configs.py``'s.

    Memory-frugal: each model is built on the meta device only for its state-dict names and shapes; the weights
    are made one tensor at a time (:func:`_sdxl_init`) and streamed to the file, so the peak is one tensor
    (about 250 MB), not the 7 GB model. Atomic: built in a temporary sibling folder and renamed into place.
    Returns ``dest``; an existing folder is used as it is (its text-encoder keys checked)."""
    dest = Path(dest)
    if (dest / "model_index.json").exists():
        write_hub_names(dest)
        return dest
    skip_unless_free_disk(dest.parent, SDXL_RANDOM_GB, "the random full-size SDXL model")
    import json

    import diffusers
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from _sdxl_configs import (sdxl_scheduler_config, sdxl_text_encoder_2_config, sdxl_text_encoder_config,
                               sdxl_unet_config, sdxl_vae_config)
    from shared.base_configs import model_index
    from shared.clip_tokenizer import TOKENIZER_2_PAD, write_tokenizer_files

    def build(tmp: Path) -> None:
        for sub, cls, cfg in (("unet", UNet2DConditionModel, sdxl_unet_config()),
                              ("vae", AutoencoderKL, sdxl_vae_config())):
            with torch.device("meta"):
                model = cls(**cfg)
            (tmp / sub).mkdir(parents=True)
            model.save_config(tmp / sub)
            shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
            del model
            _write_random_safetensors(tmp / sub / "diffusion_pytorch_model.safetensors", sub, shapes)
        for sub, cls, cfg in (("text_encoder", CLIPTextModel, sdxl_text_encoder_config()),
                              ("text_encoder_2", CLIPTextModelWithProjection, sdxl_text_encoder_2_config())):
            config = CLIPTextConfig(**cfg)
            with torch.device("meta"):
                model = cls(config)
            (tmp / sub).mkdir(parents=True)
            config.save_pretrained(tmp / sub)
            shapes = {hub_key(k): tuple(v.shape) for k, v in model.state_dict().items()}
            del model
            _write_random_safetensors(tmp / sub / "model.safetensors", sub, shapes)
        EulerDiscreteScheduler(**sdxl_scheduler_config()).save_config(tmp / "scheduler")
        write_tokenizer_files(tmp / "tokenizer")
        write_tokenizer_files(tmp / "tokenizer_2", pad_token=TOKENIZER_2_PAD)
        index = {**model_index("sdxl"), "_diffusers_version": diffusers.__version__, "add_watermarker": None}
        (tmp / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")  # last: marks the folder done

    return build_folder(dest, build)


if __name__ == "__main__":
    import sys

    sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]
    # python tests/_sd_scripts_helpers.py [sd15|sdxl] DEST
    build = {"sd15": build_sd15_random, "sdxl": build_sdxl_random}[sys.argv[1] if len(sys.argv) > 2 else "sd15"]
    print(build(Path(sys.argv[-1])))
