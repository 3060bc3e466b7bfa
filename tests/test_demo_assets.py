"""The demo assets build offline and deterministically, and the tiny pipeline makes an image."""

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.name.startswith(".")}


@pytest.mark.slow
def test_build_offline_is_deterministic(tmp_path, demo_assets):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           # Any attempt to reach a hub fails fast instead of hanging.
           "HF_ENDPOINT": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9"}
    out = subprocess.run([sys.executable, "-m", "shared.demo_assets", "--cache-dir", str(tmp_path / "a")],
                         env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    fresh, cached = _digest(tmp_path / "a"), _digest(demo_assets.root)
    weights = [k for k in fresh if k.endswith(".safetensors")]
    assert len(weights) >= 4
    assert {k: fresh[k] for k in weights} == {k: cached[k] for k in weights}
    images = [k for k in fresh if k.endswith(".png")]
    assert images and {k: fresh[k] for k in images} == {k: cached[k] for k in images}


def test_dataset_layout(demo_assets):
    concepts = sorted(p.name for p in demo_assets.train_dir.iterdir())
    assert concepts == ["2_circle", "2_square"]
    for folder in [demo_assets.train_dir / c for c in concepts] + [demo_assets.validation_dir]:
        pngs = sorted(folder.glob("*.png"))
        assert pngs and all(p.with_suffix(".txt").read_text().strip() for p in pngs)


def test_tokenizer_ids_match_open_clip(demo_assets):
    import open_clip
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(demo_assets.pipeline_dir / "tokenizer")
    ref = open_clip.tokenizer.SimpleTokenizer()
    for text in ["a red circle on a blue background, sks style", "Ünïcode & punctuation!? 42"]:
        assert tok(text)["input_ids"] == [ref.sot_token_id, *ref.encode(text), ref.eot_token_id]
    assert tok.model_max_length == 77


@pytest.mark.parametrize("pipeline, subfolders", [("pipeline_dir", ["tokenizer"]),
                                                  ("sdxl_pipeline_dir", ["tokenizer", "tokenizer_2"])])
def test_tokenizers_load_from_the_bpe_files_alone(tmp_path, demo_assets, pipeline, subfolders):
    """transformers 4's CLIPTokenizer (diffusers < 0.32, sd-scripts, kohya_ss) reads vocab.json + merges.txt
    only; transformers 5 saves tokenizer.json alone. Both must give the same ids."""
    import shutil

    from transformers import CLIPTokenizer

    for sub in subfolders:
        saved = getattr(demo_assets, pipeline) / sub
        bpe_only = tmp_path / f"{pipeline}-{sub}"
        bpe_only.mkdir()
        for name in ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"):
            shutil.copy2(saved / name, bpe_only / name)
        a, b = CLIPTokenizer.from_pretrained(saved), CLIPTokenizer.from_pretrained(bpe_only)
        text = ["a red circle on a blue background, sks style!"]
        assert a(text, padding="max_length", max_length=77).input_ids == b(text, padding="max_length",
                                                                          max_length=77).input_ids
        assert a.pad_token_id == b.pad_token_id


def test_tiny_pipeline_produces_an_image(demo_assets):
    import torch
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(demo_assets.pipeline_dir, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    out = pipe("a red circle", num_inference_steps=3, height=64, width=64,
               generator=torch.Generator().manual_seed(0), output_type="np")
    image = out.images[0]
    assert image.shape == (64, 64, 3) and np.isfinite(image).all() and image.std() > 0.01


def test_resolve_demo_names(demo_assets):
    from shared.demo_assets import resolve_demo
    from shared.errors import EpochscopeError

    assert resolve_demo("demo:tiny") == str(demo_assets.pipeline_dir)
    assert resolve_demo("/abs/path") == "/abs/path"
    with pytest.raises(EpochscopeError, match="unknown demo asset"):
        resolve_demo("demo:nope")


def _keys(path: Path) -> list[str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return list(f.keys())


def _text_encoder_files(demo_assets) -> list[Path]:
    return sorted(p for d in (demo_assets.pipeline_dir, demo_assets.sdxl_pipeline_dir)
                  for p in d.glob("text_encoder*/*.safetensors"))


def test_text_encoders_are_saved_under_the_hub_names_that_every_transformers_reads(demo_assets):
    """transformers 5 saves CLIPTextModel without ``text_model.``; transformers 4 (sd-scripts' venv, kohya_ss,
    older diffusers installs) would load such a file as all-missing, i.e. random. Hub folders (SD 1.5's
    text_encoder/model.safetensors) name every key ``text_model.…``; ours must too, and ours must read them."""
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    files = _text_encoder_files(demo_assets)
    assert len(files) == 3, files
    for path in files:
        keys = _keys(path)
        assert keys and all(k.startswith(("text_model.", "text_projection.")) for k in keys), (path, keys[:3])
        assert "text_model.encoder.layers.0.self_attn.q_proj.weight" in keys
        cls = CLIPTextModelWithProjection if path.parent.name == "text_encoder_2" else CLIPTextModel
        _, info = cls.from_pretrained(str(path.parent), output_loading_info=True)
        assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info


def test_demo_assets_built_before_the_fix_get_the_hub_names(tmp_path, demo_assets):
    """A cache built by an earlier version (flat transformers 5 names) is rewritten once, weights unchanged."""
    import shutil

    from safetensors.torch import load_file, save_file

    from shared.demo_assets import ensure_demo_assets

    old = tmp_path / "demo"
    shutil.copytree(demo_assets.root, old, ignore=shutil.ignore_patterns(".*"))
    te = old / "tiny-sd" / "text_encoder" / "model.safetensors"
    want = {k: v.clone() for k, v in load_file(str(te)).items()}  # not views of the file rewritten next
    save_file({k.removeprefix("text_model."): v for k, v in want.items()}, str(te), metadata={"format": "pt"})
    assert not any(k.startswith("text_model.") for k in _keys(te))

    ensure_demo_assets(old)
    got = load_file(str(te))
    assert sorted(got) == sorted(want) and all(got[k].equal(want[k]) for k in want)
    assert not list(te.parent.glob(".*tmp")), "temporary file left behind"
    before = te.stat().st_mtime_ns
    ensure_demo_assets(old)
    assert te.stat().st_mtime_ns == before, "a second call must not rewrite the file"
