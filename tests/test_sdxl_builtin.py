"""The built-in trainer on SDXL, for real on the tiny SDXL demo model: sd-scripts' SDXL key names and
metadata, files diffusers and our evaluator apply in full, both text encoders' learning rates, size
conditioning, cached text-encoder outputs, and resume."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import REPO_ROOT, run_cli, write_demo_config
from shared.jsonio import read_model
from shared.records import TrainerStatus
from shared.safetensors_info import inspect
from shared.trial import Trial

SD_SCRIPTS_SDXL_FILE = REPO_ROOT / "tests" / "data" / "kohya_sdxl" / "lora_unet_te" / "lora_unet_te.safetensors"


def write_sdxl_config(path: Path, out: Path) -> Path:
    """The tests' demo config on demo:tiny-sdxl (4 optimizer steps per epoch at 64 px, 2 epochs), training
    the UNet and both text encoders, each encoder at its own learning rate."""
    write_demo_config(path, out, epochs=2)
    text = path.read_text().replace('base = "demo:tiny"', 'base = "demo:tiny-sdxl"')
    text = text.replace("[network]\n", "[network]\ntrain_text_encoder = true\n")
    text = text.replace("[training]\n", "[training]\ntext_encoder_lr = 1e-2\ntext_encoder_2_lr = 3e-3\n")
    path.write_text(text)
    return path


def module_names(keys) -> set[str]:
    return {k.split(".", 1)[0] for k in keys}


def name_pattern(name: str) -> str:
    """``lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q`` -> ``..._N_N_transformer_blocks_N_...``."""
    return re.sub(r"_\d+(?=_|$)", "_N", name)


# ---------------------------------------------------------------- fast: size conditioning


def test_time_ids_hold_original_size_crop_and_target(tmp_path):
    from PIL import Image

    from trainer.builtin.conditioning import size_time_ids
    from trainer.builtin.dataset import load_training_image

    Image.new("RGB", (100, 60), (10, 20, 30)).save(tmp_path / "wide.png")  # width 100, height 60
    Image.new("RGB", (40, 90), (10, 20, 30)).save(tmp_path / "tall.png")
    wide, tall = load_training_image(tmp_path / "wide.png", 32), load_training_image(tmp_path / "tall.png", 32)
    # wide: resized to 53x32, centre crop starts 10 px from the left; tall: 32x72, 20 px from the top.
    assert (wide.pixels.shape, wide.original_hw, wide.crop_top_left) == ((32, 32, 3), (60, 100), (0, 10))
    assert (tall.pixels.shape, tall.original_hw, tall.crop_top_left) == ((32, 32, 3), (90, 40), (20, 0))
    ids = size_time_ids([wide, tall], 32)
    assert ids.dtype == torch.float32
    assert ids.tolist() == [[60, 100, 0, 10, 32, 32], [90, 40, 20, 0, 32, 32]]


# ---------------------------------------------------------------- slow: real training runs


@pytest.fixture(scope="module")
def sdxl_trial(tmp_path_factory, demo_assets) -> Trial:
    """The real built-in trainer on demo:tiny-sdxl, UNet and both text encoders: lora-000001, lora."""
    root = tmp_path_factory.mktemp("sdxl")
    cfg = write_sdxl_config(root / "c.toml", root / "t")
    run_cli("trainer", "run", "--config", str(cfg), "--new")
    return Trial(root / "t")


@pytest.mark.slow
def test_sdxl_names_metadata_and_learning_rates(sdxl_trial):
    names = [c.path.name for c in sdxl_trial.checkpoints("lora")]
    assert names == ["lora-000001.safetensors", "lora.safetensors"]
    for ckpt, epoch in zip(sdxl_trial.checkpoints("lora"), (1, 2)):
        meta = ckpt.info.metadata
        assert meta["ss_base_model_version"] == "sdxl_base_v1-0"
        assert meta["modelspec.architecture"] == "stable-diffusion-xl-v1-base/lora"
        assert (meta["ss_resolution"], meta["modelspec.resolution"]) == ("(64, 64)", "64x64")
        assert (meta["ss_epoch"], meta["ss_steps"], meta["ss_network_train_unet_only"]) == (str(epoch), str(4 * epoch),
                                                                                            "False")
    status = read_model(sdxl_trial.status_path, TrainerStatus)
    assert (status.state, status.step, status.epoch) == ("finished", 8, 2)
    # One optimizer group each: UNet, text encoder 1 (text_encoder_lr), text encoder 2 (text_encoder_2_lr).
    opt = torch.load(sdxl_trial.root / "lora-state" / "optimizer.pt", weights_only=True)
    assert [g["lr"] for g in opt["param_groups"]] == [5e-3, 1e-2, 3e-3]
    weights = load_file(str(sdxl_trial.root / "lora-state" / "lora_weights.safetensors"))
    assert {k.split(".", 1)[0] for k in weights} == {"unet", "te", "te2"}


@pytest.mark.slow
def test_sdxl_keys_are_sd_scripts_names(sdxl_trial, demo_assets):
    """Every module name is sd-scripts' (the kohya table of the tiny SDXL model), and the kinds of names
    are exactly those of a real sdxl_train_network.py file (tests/data/kohya_sdxl)."""
    from shared.base_loading import load_base_pipeline
    from shared.kohya_names import KohyaTable

    ours = load_file(str(sdxl_trial.checkpoint_path("lora")))
    pipe = load_base_pipeline("demo:tiny-sdxl", "sdxl")
    table = KohyaTable.for_models(pipe.unet, pipe.text_encoder, pipe.text_encoder_2)
    assert module_names(ours) <= set(table.modules)
    assert {n.split("_")[1] for n in module_names(ours)} == {"unet", "te1", "te2"}
    assert "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q" in module_names(ours)
    assert "lora_te2_text_model_encoder_layers_0_self_attn_q_proj" in module_names(ours)
    real = load_file(str(SD_SCRIPTS_SDXL_FILE))
    # The real file is trimmed to some modules (its README); every kind of name it has, we write too.
    assert {name_pattern(n) for n in module_names(real)} <= {name_pattern(n) for n in module_names(ours)}
    assert {k.split(".", 1)[1] for k in real} == {k.split(".", 1)[1] for k in ours}
    for key in ("ss_base_model_version", "modelspec.architecture"):
        assert inspect(sdxl_trial.checkpoint_path("lora")).metadata[key] == inspect(SD_SCRIPTS_SDXL_FILE).metadata[key]


@pytest.mark.slow
def test_diffusers_and_our_evaluator_apply_every_key(sdxl_trial, demo_assets):
    """diffusers' StableDiffusionXLPipeline.load_lora_weights wraps one layer per module of the file in
    each of the UNet and both text encoders, and warns about nothing; the UNet's output and each
    encoder's part of the prompt embedding change. Our evaluator's swapper plans every module."""
    import logging
    import warnings

    from diffusers import StableDiffusionXLPipeline

    from evaluator.lora_swap import LoraSwapper

    path = sdxl_trial.checkpoint_path("lora")
    names = module_names(load_file(str(path)))
    pipe = StableDiffusionXLPipeline.from_pretrained(demo_assets.sdxl_pipeline_dir, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    assert len(LoraSwapper.for_pipeline(pipe).plan(load_file(str(path)))) == len(names)

    def outputs():
        with torch.no_grad():
            embeds, _, pooled, _ = pipe.encode_prompt("a red circle", do_classifier_free_guidance=False)
        image = pipe("a red circle", num_inference_steps=2, height=64, width=64, guidance_scale=1.0,
                     generator=torch.Generator().manual_seed(0), output_type="np").images[0]
        return embeds, pooled, image

    before = outputs()
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    logger = logging.getLogger("diffusers")
    logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name="ours")
    finally:
        logger.removeHandler(handler)
    assert not records, [r.getMessage() for r in records]
    assert not [w for w in caught if "key" in str(w.message).lower()], [str(w.message) for w in caught]

    def wrapped(model) -> int:
        return sum(1 for m in model.modules() if "ours" in getattr(m, "lora_A", {}))

    counts = {prefix: sum(n.startswith(prefix) for n in names) for prefix in ("lora_unet_", "lora_te1_", "lora_te2_")}
    assert (wrapped(pipe.unet), wrapped(pipe.text_encoder), wrapped(pipe.text_encoder_2)) == (
        counts["lora_unet_"], counts["lora_te1_"], counts["lora_te2_"])
    after = outputs()
    width_1 = pipe.text_encoder.config.hidden_size
    assert (after[0][..., :width_1] - before[0][..., :width_1]).abs().max() > 1e-4, "text encoder 1 unchanged"
    assert (after[0][..., width_1:] - before[0][..., width_1:]).abs().max() > 1e-4, "text encoder 2 unchanged"
    assert (after[1] - before[1]).abs().max() > 1e-4, "pooled embedding unchanged"
    assert np.abs(after[2] - before[2]).max() > 1e-4, "the image did not change"


@pytest.mark.slow
def test_sdxl_resume_matches_uninterrupted(tmp_path, sdxl_trial):
    cfg = write_sdxl_config(tmp_path / "c.toml", tmp_path / "t")
    run_cli("trainer", "run", "--config", str(cfg), "--new", "--epochs", "1")
    out = run_cli("trainer", "run", "--config", str(cfg), "--continue")  # to the configured 2 epochs
    assert "resuming at step 4" in out.stdout + out.stderr
    resumed = load_file(str(Trial(tmp_path / "t").checkpoint_path("lora")))
    straight = load_file(str(sdxl_trial.checkpoint_path("lora")))
    assert resumed.keys() == straight.keys() and any(k.startswith("lora_te2_") for k in resumed)
    for k in straight:
        assert torch.allclose(resumed[k], straight[k], atol=1e-5, rtol=1e-4), k


@pytest.mark.slow
def test_cached_text_encoder_outputs_equal_encoding_every_batch(demo_assets):
    """``cache_text_encoder_outputs``: captions encoded once up front (deduplicated, in one batch) give each
    batch the hidden states and pooled embeddings that encoding the batch gives."""
    from trainer.builtin.conditioning import TextConditioning
    from trainer.builtin.models import load_components

    comp = load_components("demo:tiny-sdxl")
    assert comp.family == "sdxl"
    captions = ["a red circle, sks", "a yellow square, sks", "a red circle, sks", "something else"]
    cached = TextConditioning(comp, "sdxl", captions, None, "cpu", cache=True)
    live = TextConditioning(comp, "sdxl", captions, None, "cpu")
    assert cached.cached and not live.cached
    batch = [2, 0, 3]
    with torch.no_grad():
        (h_live, p_live), (h_cached, p_cached) = live(batch), cached(batch)
    width = comp.text_encoder.config.hidden_size + comp.text_encoder_2.config.hidden_size
    assert h_live.shape == (3, 77, width) and p_live.shape == (3, comp.text_encoder_2.config.projection_dim)
    assert torch.allclose(h_cached, h_live, atol=1e-5) and torch.allclose(p_cached, p_live, atol=1e-5)
    assert not torch.allclose(p_live[0], p_live[2])  # different captions, different embeddings
