"""Build sd-scripts' CLIP tokenizer cache offline from open_clip's BPE vocabulary.

sd-scripts run with --tokenizer_cache_dir DIR reads <DIR>/openai_clip-vit-large-patch14/ (SD 1.x, and SDXL's
first tokenizer) and <DIR>/laion_CLIP-ViT-bigG-14-laion2B-39B-b160k/ (SDXL's second), and otherwise downloads
them from the hub. One DIR serves SD 1.x and SDXL runs. Point training.tokenizer_cache_dir at DIR.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from shared.clip_tokenizer import SD_SCRIPTS_TOKENIZER_2_SUBDIR, write_sd_scripts_tokenizer_cache


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", type=Path, help="the cache folder to fill (created if missing); it serves SD 1.x "
                        "and SDXL (both tokenizers) runs")


def run(args: argparse.Namespace) -> int:
    dest = write_sd_scripts_tokenizer_cache(args.dir)
    print(f"wrote CLIP tokenizers for sd-scripts to {dest} (SD 1.x, SDXL 1) and "
          f"{dest.parent / SD_SCRIPTS_TOKENIZER_2_SUBDIR} (SDXL 2)")
    print(f"use: --tokenizer_cache_dir {args.dir}  (or training.tokenizer_cache_dir in the config)")
    return 0
