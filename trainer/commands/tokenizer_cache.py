"""Build sd-scripts' CLIP tokenizer cache offline from open_clip's BPE vocabulary.

sd-scripts reads <DIR>/openai_clip-vit-large-patch14/ when run with --tokenizer_cache_dir DIR, and
otherwise downloads it from the hub. Point training.tokenizer_cache_dir at DIR.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from shared.clip_tokenizer import write_sd_scripts_tokenizer_cache


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", type=Path, help="the cache folder to fill (created if missing)")


def run(args: argparse.Namespace) -> int:
    dest = write_sd_scripts_tokenizer_cache(args.dir)
    print(f"wrote CLIP tokenizer for sd-scripts to {dest}")
    print(f"use: --tokenizer_cache_dir {args.dir}  (or training.tokenizer_cache_dir in the config)")
    return 0
