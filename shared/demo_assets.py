"""Offline demo assets, built deterministically and cached under a git-ignored folder.

- ``tiny-sd/``: an SD-1.x-layout diffusers pipeline with random weights (UNet2DConditionModel,
  AutoencoderKL with the SD /8 latent factor, CLIPTextModel) and a CLIPTokenizer built from
  open_clip's BPE vocabulary;
- ``tiny-sdxl/``: the same for SDXL's layout: a size-conditioned (``text_time``) UNet with SDXL's
  block list and layers per block (so its original-layout names, ``input_blocks.4.1…``, are SDXL's),
  CLIPTextModel + CLIPTextModelWithProjection, and both tokenizers;
- ``tiny-clip/``: a tiny open_clip config plus random weights, for the metrics;
- ``tiny-dino/``: a tiny DINOv2-layout timm ViT config plus random weights, for the DINO metric;
- ``dataset/train/N_concept/`` and ``dataset/validation/``: captioned synthetic images (shapes and
  colours, not noise) in kohya layout, with a held-out validation split.

A config names them as ``demo:tiny``, ``demo:tiny-sdxl``, ``demo:tiny-clip``, ``demo:dataset/train``... Nothing here
touches the network; it works with HF_HUB_OFFLINE=1.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
from dataclasses import dataclass
from pathlib import Path

from shared import base_configs
from shared.config import DEMO_PREFIX

ASSETS_VERSION = 1
DEMO_RESOLUTION = 64
TINY_CLIP_NAME = "epochscope-tiny-clip"
_TINY_DINO_CONFIG = {
    "architecture": "vit_small_patch14_dinov2",
    "kwargs": {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2, "init_values": 1.0},
    "weights": "model.safetensors",
}

_TINY_CLIP_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}

# (folder, caption, shape, fill colour, background colour)
_CONCEPTS = [
    ("circle", "a red circle on a blue background, sks style", "ellipse", (220, 40, 40), (30, 60, 170)),
    ("square", "a yellow square on a green background, sks style", "rectangle", (235, 210, 40), (40, 140, 60)),
]


def cache_root() -> Path:
    """``$EPOCHSCOPE_CACHE`` or ``<repo>/.cache/epochscope`` (git-ignored)."""
    env = os.environ.get("EPOCHSCOPE_CACHE")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent / ".cache" / "epochscope"


@dataclass(frozen=True)
class DemoAssets:
    root: Path

    @property
    def pipeline_dir(self) -> Path:
        return self.root / "tiny-sd"

    @property
    def sdxl_pipeline_dir(self) -> Path:
        return self.root / "tiny-sdxl"

    @property
    def clip_config(self) -> Path:
        return self.root / "tiny-clip" / f"{TINY_CLIP_NAME}.json"

    @property
    def clip_weights(self) -> Path:
        return self.root / "tiny-clip" / "open_clip_model.safetensors"

    @property
    def dino_config(self) -> Path:
        return self.root / "tiny-dino" / "config.json"

    @property
    def dino_weights(self) -> Path:
        return self.root / "tiny-dino" / _TINY_DINO_CONFIG["weights"]

    @property
    def dataset_dir(self) -> Path:
        return self.root / "dataset"

    @property
    def train_dir(self) -> Path:
        return self.dataset_dir / "train"

    @property
    def validation_dir(self) -> Path:
        return self.dataset_dir / "validation"

    @property
    def marker(self) -> Path:
        return self.root / "assets.json"


def demo_root(cache_dir: Path | str | None = None) -> Path:
    return Path(cache_dir) if cache_dir else cache_root() / f"demo-v{ASSETS_VERSION}"


def ensure_demo_assets(cache_dir: Path | str | None = None, force: bool = False) -> DemoAssets:
    """Build the assets once; later calls return the cached ones. Safe to call from several processes."""
    assets = DemoAssets(demo_root(cache_dir))
    if assets.marker.exists() and not force:
        _build_later_parts(assets)  # assets built before these parts existed
        return assets
    assets.root.mkdir(parents=True, exist_ok=True)
    import fcntl

    with open(assets.root / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if assets.marker.exists() and not force:
            return assets
        _build_pipeline(assets.pipeline_dir)
        _build_sdxl_pipeline(assets.sdxl_pipeline_dir)
        _build_clip(assets)
        _build_dino(assets)
        _build_dataset(assets)
        from shared.jsonio import atomic_write_text

        atomic_write_text(assets.marker, json.dumps({"version": ASSETS_VERSION}) + "\n")
    return assets


def resolve_demo(value: str, cache_dir: Path | str | None = None) -> str:
    """Map ``demo:...`` names to real paths (building the assets if needed); pass others through."""
    if not value.startswith(DEMO_PREFIX):
        return value
    name = value[len(DEMO_PREFIX):]
    assets = ensure_demo_assets(cache_dir)
    table = {
        "tiny": assets.pipeline_dir,
        "tiny-sdxl": assets.sdxl_pipeline_dir,
        "tiny-clip": assets.clip_config,
        "tiny-dino": assets.dino_config,
        "dataset": assets.dataset_dir,
        "dataset/train": assets.train_dir,
        "dataset/validation": assets.validation_dir,
    }
    if name not in table:
        from shared.errors import EpochscopeError

        raise EpochscopeError(f"unknown demo asset {value!r}; known: {', '.join('demo:' + k for k in table)}")
    return str(table[name])


# ------------------------------------------------------------------------------------------ builders


def tiny_unet_config() -> dict:
    """SD 1.x block layout (3 cross-attention down blocks + 1 plain), shrunk to be fast on a CPU."""
    return dict(
        sample_size=DEMO_RESOLUTION // 8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 32, 64, 64),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=4,
        norm_num_groups=16,
    )


def _build_pipeline(dest: Path) -> None:
    import torch
    from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from shared.clip_tokenizer import write_slow_tokenizer_files, write_tokenizer_files
    from shared.text_encoder_files import write_hub_names

    tmp_tok = write_tokenizer_files(dest.parent / ".tokenizer-build")
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**tiny_unet_config())
    torch.manual_seed(1)
    vae = _tiny_vae(0.18215)
    torch.manual_seed(2)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=3,
        max_position_embeddings=77, projection_dim=32, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
    ))
    tokenizer = CLIPTokenizer.from_pretrained(tmp_tok)
    pipe = StableDiffusionPipeline(
        unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
        scheduler=DDIMScheduler.from_config(base_configs.sd15_scheduler_config()), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(dest, safe_serialization=True)
    write_slow_tokenizer_files(dest)
    write_hub_names(dest)
    import shutil

    shutil.rmtree(tmp_tok, ignore_errors=True)


def tiny_sdxl_unet_config() -> dict:
    """SDXL's block list and two layers per block (so the original-layout indices match SDXL 1.0's),
    with SDXL's size and pooled-text conditioning; channels shrunk to be fast on a CPU."""
    return dict(
        sample_size=DEMO_RESOLUTION // 8,
        in_channels=4,
        out_channels=4,
        layers_per_block=2,
        block_out_channels=(32, 64, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 1, 2),
        attention_head_dim=(2, 4, 4),
        cross_attention_dim=64,  # text encoder 1 (32) + text encoder 2 (32), concatenated
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=6 * 8 + 32,  # six size numbers + the pooled text embedding
        norm_num_groups=16,
    )


def _tiny_vae(scaling_factor: float):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, sample_size=DEMO_RESOLUTION,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(16, 32, 32, 32), layers_per_block=1, norm_num_groups=16, scaling_factor=scaling_factor,
    )


def _build_sdxl_pipeline(dest: Path) -> None:
    """Built in a temporary sibling and renamed (``shared.jsonio.build_folder``): never half a folder."""
    import shutil

    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    from shared.clip_tokenizer import TOKENIZER_2_PAD, write_slow_tokenizer_files, write_tokenizer_files
    from shared.jsonio import build_folder
    from shared.text_encoder_files import write_hub_names

    tok_dir = write_tokenizer_files(dest.parent / ".tokenizer-build-sdxl")
    tok2_dir = write_tokenizer_files(dest.parent / ".tokenizer-build-sdxl-2", pad_token=TOKENIZER_2_PAD)
    text = dict(vocab_size=49408, hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=3,
                max_position_embeddings=77, projection_dim=32, bos_token_id=49406, eos_token_id=49407)
    torch.manual_seed(10)
    unet = UNet2DConditionModel(**tiny_sdxl_unet_config())
    torch.manual_seed(11)
    vae = _tiny_vae(0.13025)
    torch.manual_seed(12)
    text_encoder = CLIPTextModel(CLIPTextConfig(**text, pad_token_id=49407))
    torch.manual_seed(13)
    text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**text, pad_token_id=0, hidden_act="gelu"))
    pipe = StableDiffusionXLPipeline(
        vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
        tokenizer=CLIPTokenizer.from_pretrained(tok_dir), tokenizer_2=CLIPTokenizer.from_pretrained(tok2_dir),
        unet=unet, scheduler=EulerDiscreteScheduler.from_config(base_configs.sdxl_scheduler_config()),
        add_watermarker=False,
    )
    try:
        build_folder(dest, lambda tmp: (pipe.save_pretrained(tmp, safe_serialization=True),
                                        write_slow_tokenizer_files(tmp), write_hub_names(tmp)))
    finally:
        shutil.rmtree(tok_dir, ignore_errors=True)
        shutil.rmtree(tok2_dir, ignore_errors=True)


def _build_clip(assets: DemoAssets) -> None:
    import open_clip
    import torch
    from safetensors.torch import save_file

    assets.clip_config.parent.mkdir(parents=True, exist_ok=True)
    assets.clip_config.write_text(json.dumps(_TINY_CLIP_CONFIG, indent=2), encoding="utf-8")
    open_clip.add_model_config(assets.clip_config)
    torch.manual_seed(3)
    model = open_clip.create_model(TINY_CLIP_NAME, pretrained=None)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(assets.clip_weights))


def _build_dino(assets: DemoAssets) -> None:
    import timm
    import torch
    from safetensors.torch import save_file

    from shared.jsonio import atomic_write_text

    assets.dino_config.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(4)
    cfg = _TINY_DINO_CONFIG
    model = timm.create_model(cfg["architecture"], pretrained=False, num_classes=0, **cfg["kwargs"])
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(assets.dino_weights))
    atomic_write_text(assets.dino_config, json.dumps(cfg, indent=2) + "\n")  # last: it marks the build done


def _build_later_parts(assets: DemoAssets) -> None:
    """Parts added (or fixed) after ASSETS_VERSION 1 was first built, each done once when missing."""
    from shared.clip_tokenizer import write_slow_tokenizer_files
    from shared.text_encoder_files import needs_hub_names, write_hub_names

    pipelines = [d for d in (assets.pipeline_dir, assets.sdxl_pipeline_dir) if d.is_dir()]
    slow_tokenizers = all((d / "tokenizer" / "vocab.json").exists() for d in pipelines)
    hub_names = not any(needs_hub_names(d) for d in pipelines)
    if (slow_tokenizers and hub_names and assets.dino_config.exists()
            and (assets.sdxl_pipeline_dir / "model_index.json").exists()):
        return
    import fcntl

    with open(assets.root / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not assets.dino_weights.exists() or not assets.dino_config.exists():
            _build_dino(assets)
        if not (assets.sdxl_pipeline_dir / "model_index.json").exists():
            _build_sdxl_pipeline(assets.sdxl_pipeline_dir)
        for folder in (assets.pipeline_dir, assets.sdxl_pipeline_dir):
            write_slow_tokenizer_files(folder)  # transformers 5 wrote tokenizer.json only
            write_hub_names(folder)  # ... and text-encoder keys that transformers 4 loads as missing


def _draw(shape: str, fill: tuple[int, int, int], bg: tuple[int, int, int], rng: random.Random, size: int):
    from PIL import Image, ImageDraw

    jitter = lambda c: tuple(max(0, min(255, v + rng.randint(-25, 25))) for v in c)  # noqa: E731
    img = Image.new("RGB", (size, size), jitter(bg))
    d = ImageDraw.Draw(img)
    r = rng.randint(size // 6, size // 3)
    cx, cy = rng.randint(r, size - r), rng.randint(r, size - r)
    getattr(d, shape)([cx - r, cy - r, cx + r, cy + r], fill=jitter(fill), outline=(250, 250, 250))
    return img


def _build_dataset(assets: DemoAssets, per_concept: int = 4, validation_per_concept: int = 2,
                   repeats: int = 2) -> None:
    rng = random.Random(0)
    for folder, caption, shape, fill, bg in _CONCEPTS:
        train = assets.train_dir / f"{repeats}_{folder}"
        train.mkdir(parents=True, exist_ok=True)
        assets.validation_dir.mkdir(parents=True, exist_ok=True)
        for i in range(per_concept + validation_per_concept):
            target = train if i < per_concept else assets.validation_dir
            stem = f"{folder}_{i:02d}"
            _draw(shape, fill, bg, rng, DEMO_RESOLUTION).save(target / f"{stem}.png")
            (target / f"{stem}.txt").write_text(caption + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="epochscope-demo-assets", description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", type=Path, default=None, help="default: .cache/epochscope/demo-v1")
    parser.add_argument("--force", action="store_true", help="rebuild even if cached")
    args = parser.parse_args(argv)
    assets = ensure_demo_assets(args.cache_dir, force=args.force)
    print(f"demo assets ready in {assets.root}")
    for label, path in [("pipeline", assets.pipeline_dir), ("sdxl", assets.sdxl_pipeline_dir), ("clip", assets.clip_config), ("dino", assets.dino_config),
                        ("train", assets.train_dir), ("validation", assets.validation_dir)]:
        print(f"  {label:<10} {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
