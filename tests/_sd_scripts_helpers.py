"""An SD-1.5-architecture diffusers folder with random weights, built offline (sd-scripts hard-codes the
SD 1.5 shapes, so the tiny demo model cannot stand in for it).

The folder is read by two transformers majors: ours (5.x) writes it, and sd-scripts' own venv (4.x) reads it.
transformers 5 saves ``CLIPTextModel`` without the ``text_model.`` key prefix that transformers 4 expects, so
transformers 4 would load the text encoder with every weight missing (that is, random). After saving, the
text encoder's safetensors file is rewritten with the transformers 4 names, which transformers 5 also reads."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

TE_PREFIX = "text_model."
# Top-level keys that transformers 4 keeps outside ``text_model.`` (CLIPTextModelWithProjection's projection).
TE_TOP_LEVEL = ("text_projection.",)


def transformers4_key(key: str) -> str:
    """The transformers 4 name of a CLIP text-encoder state-dict key (idempotent)."""
    if key.startswith(TE_PREFIX) or key.startswith(TE_TOP_LEVEL):
        return key
    return TE_PREFIX + key


def fix_text_encoder_keys(model_dir: Path) -> bool:
    """Rewrite ``text_encoder/*.safetensors`` so every key has its transformers 4 name; atomic per file
    (a temporary file in the same folder, then ``os.replace``). Returns True when a file was rewritten."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    changed = False
    for path in sorted((Path(model_dir) / "text_encoder").glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            keys = list(f.keys())
            if all(transformers4_key(k) == k for k in keys):
                continue
            metadata = f.metadata() or {"format": "pt"}
            tensors = {transformers4_key(k): f.get_tensor(k) for k in keys}
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            save_file(tensors, str(tmp), metadata=metadata)
            shutil.copymode(path, tmp)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        changed = True
    index = Path(model_dir) / "text_encoder" / "model.safetensors.index.json"
    if index.exists():  # sharded save: rename the keys in the weight map too
        import json

        data = json.loads(index.read_text())
        data["weight_map"] = {transformers4_key(k): v for k, v in data.get("weight_map", {}).items()}
        tmp = index.with_name(f".{index.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=2))
        os.replace(tmp, index)
    return changed


def build_sd15_random(dest: Path) -> Path:
    """Build (once) the random SD-1.5 folder at ``dest``. It is built in a temporary sibling folder and renamed
    into place, so a reader never sees a half-written model; an existing folder from before the key fix is
    fixed in place."""
    dest = Path(dest)
    if (dest / "model_index.json").exists():
        fix_text_encoder_keys(dest)
        return dest
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from shared.clip_tokenizer import write_tokenizer_files
    from shared.demo_assets import sd15_scheduler_config

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
                                   scheduler=DDIMScheduler(**sd15_scheduler_config()), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        pipe.to(torch.float16).save_pretrained(tmp, safe_serialization=True)
        fix_text_encoder_keys(tmp)
        try:
            os.rename(tmp, dest)
        except OSError:  # another process finished first (dest exists and is not empty): use theirs
            if not (dest / "model_index.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


if __name__ == "__main__":
    import sys

    print(build_sd15_random(Path(sys.argv[1])))
