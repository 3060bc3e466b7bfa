"""Build the SD 1.x / SDXL CLIP tokenizer files (vocab.json, merges.txt) offline from the BPE vocabulary that
open_clip_torch ships. The result has the same ids as open_clip's SimpleTokenizer, as
openai/clip-vit-large-patch14 and as laion/CLIP-ViT-bigG-14-laion2B-39B-b160k (SDXL's second tokenizer, which
differs only in its pad token), so it serves our demo pipeline and sd-scripts' tokenizer cache."""

from __future__ import annotations

import gzip
import json
from functools import lru_cache
from pathlib import Path

# What sd-scripts looks for in its --tokenizer_cache_dir: the hub name with "/" replaced by "_"
# (library/train_util.py load_tokenizer for SD 1.x; library/sdxl_train_util.py load_tokenizers for SDXL).
SD_SCRIPTS_TOKENIZER_SUBDIR = "openai_clip-vit-large-patch14"  # SD 1.x, and SDXL's tokenizer 1
SD_SCRIPTS_TOKENIZER_2_SUBDIR = "laion_CLIP-ViT-bigG-14-laion2B-39B-b160k"  # SDXL's tokenizer 2
TOKENIZER_2_PAD = "!"  # id 0: the bigG tokenizer pads with "!" (sd-scripts also forces pad_token_id = 0)
BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
N_MERGES = 49152 - 256 - 2


def _bpe_path() -> Path:
    import open_clip.tokenizer

    return Path(open_clip.tokenizer.default_bpe())


def _bytes_to_unicode() -> dict[int, str]:
    # The GPT-2/CLIP byte-to-printable mapping (same table open_clip and transformers use).
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


@lru_cache(maxsize=1)
def vocab_and_merges() -> tuple[dict[str, int], list[str]]:
    lines = gzip.open(_bpe_path()).read().decode("utf-8").split("\n")
    merges = lines[1 : N_MERGES + 1]
    byte_chars = list(_bytes_to_unicode().values())
    tokens = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m.split()) for m in merges] + [BOS, EOS]
    return {t: i for i, t in enumerate(tokens)}, merges


def write_tokenizer_files(dest: Path | str, pad_token: str = EOS) -> Path:
    """Write a transformers CLIPTokenizer folder to ``dest`` (idempotent).

    Args:
        dest: the folder (created if missing).
        pad_token: ``EOS`` for CLIP ViT-L/14 (SD 1.x, SDXL's ``tokenizer``); ``TOKENIZER_2_PAD`` for SDXL's
            ``tokenizer_2``.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    vocab, merges = vocab_and_merges()
    (dest / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (dest / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": 77,
        "do_lower_case": True,
        "bos_token": BOS,
        "eos_token": EOS,
        "unk_token": EOS,
        "pad_token": pad_token,
        "clean_up_tokenization_spaces": True,
    }
    (dest / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    special = {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": pad_token}
    (dest / "special_tokens_map.json").write_text(json.dumps(special, indent=2), encoding="utf-8")
    return dest


def write_slow_tokenizer_files(pipeline_dir: Path | str) -> None:
    """Give a saved pipeline's ``tokenizer/`` (and ``tokenizer_2/``) vocab.json and merges.txt beside the
    tokenizer.json that transformers 5 writes alone: transformers 4's CLIPTokenizer (what diffusers < 0.32,
    sd-scripts and kohya_ss load) reads only the BPE files, and fails on a folder without them."""
    for sub, pad in (("tokenizer", EOS), ("tokenizer_2", TOKENIZER_2_PAD)):
        folder = Path(pipeline_dir) / sub
        if folder.is_dir() and not (folder / "vocab.json").exists():
            write_tokenizer_files(folder, pad)


def write_sd_scripts_tokenizer_cache(cache_dir: Path | str) -> Path:
    """Fill ``<cache_dir>/openai_clip-vit-large-patch14/`` (SD 1.x, SDXL's tokenizer 1) and
    ``<cache_dir>/laion_CLIP-ViT-bigG-14-laion2B-39B-b160k/`` (SDXL's tokenizer 2, pad token ``"!"``), so that
    sd-scripts' ``--tokenizer_cache_dir cache_dir`` works with no hub access for SD 1.x and SDXL runs alike.

    Returns:
        The SD 1.x folder, ``<cache_dir>/openai_clip-vit-large-patch14``; the SDXL one is beside it.
    """
    write_tokenizer_files(Path(cache_dir) / SD_SCRIPTS_TOKENIZER_2_SUBDIR, pad_token=TOKENIZER_2_PAD)
    return write_tokenizer_files(Path(cache_dir) / SD_SCRIPTS_TOKENIZER_SUBDIR)
