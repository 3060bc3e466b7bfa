"""An SD-1.5-architecture diffusers folder with random weights, built offline (sd-scripts hard-codes the
SD 1.5 shapes, so the tiny demo model cannot stand in for it)."""

from __future__ import annotations

from pathlib import Path


def build_sd15_random(dest: Path) -> Path:
    if (dest / "model_index.json").exists():
        return dest
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from shared.clip_tokenizer import write_tokenizer_files
    from shared.demo_assets import sd15_scheduler_config

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
    pipe.to(torch.float16).save_pretrained(dest, safe_serialization=True)
    return dest


if __name__ == "__main__":
    import sys

    print(build_sd15_random(Path(sys.argv[1])))
