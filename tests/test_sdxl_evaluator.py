"""The evaluator on SDXL: offline base loading (diffusers folder and single file), SDXL prompt encoding,
generation with fixed seeds, size conditioning, the kohya SDXL merge-and-restore swap, refusing a LoRA
of the other family, and `evaluator run` on a folder of SDXL LoRA files. On ``demo:tiny-sdxl``."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from evaluator.lora_swap import LoraSwapper
from evaluator.pipeline import GenerationSettings, SizeConditioning, generate, load_pipeline, set_scheduler
from shared.base_loading import BaseModelError, load_base_pipeline
from shared.errors import CheckpointError
from conftest import REPO_ROOT, run_cli
from _disk import FULL_SIZE_MODEL
from test_kohya_interop import Transformers4Layout

SD15_DATA = Path(__file__).parent / "data" / "kohya_sd15"
SDXL_DATA = Path(__file__).parent / "data" / "kohya_sdxl"
SDXL_MANIFEST = json.loads((SDXL_DATA / "manifest.json").read_text()) if (SDXL_DATA / "manifest.json").exists() \
    else {"files": []}
REAL_SDXL_FILES = [f for f in SDXL_MANIFEST["files"] if (SDXL_DATA / f["path"]).exists()]
PROMPTS = ["a red circle on a blue background, sks style", "a yellow square on a green background, sks style"]

# (kohya name, rank): sd-scripts' SDXL names for a linear and a 3x3 conv (LoCon) of the UNet in its
# original layout, the mid block, an up block's cross-attention, and both text encoders.
LORA_MODULES = (
    ("lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q", 4),
    ("lora_unet_input_blocks_1_0_in_layers_2", 2),
    ("lora_unet_middle_block_1_proj_in", 4),
    ("lora_unet_output_blocks_0_1_transformer_blocks_0_attn2_to_k", 4),
    ("lora_te1_text_model_encoder_layers_0_self_attn_q_proj", 4),
    ("lora_te2_text_model_encoder_layers_1_mlp_fc1", 4),
)
ALPHA = 2.0


@pytest.fixture(scope="module")
def sdxl_pipe(demo_assets):
    pipe = load_pipeline("demo:tiny-sdxl", "cpu", torch.float32)
    set_scheduler(pipe, "ddim")
    return pipe


@pytest.fixture(scope="module")
def sdxl_lora(tmp_path_factory, sdxl_pipe) -> Path:
    """A kohya-format SDXL LoRA with random weights under sd-scripts' names, shaped from the live model."""
    modules = LoraSwapper.for_pipeline(sdxl_pipe).modules
    gen = torch.Generator().manual_seed(7)
    state: dict[str, torch.Tensor] = {}
    for name, rank in LORA_MODULES:
        shape = modules[name].weight.shape
        if len(shape) == 4:  # LoCon: k x k down, 1 x 1 up
            down = torch.randn(rank, shape[1], *shape[2:], generator=gen)
            up = torch.randn(shape[0], rank, 1, 1, generator=gen)
        else:
            down, up = torch.randn(rank, shape[1], generator=gen), torch.randn(shape[0], rank, generator=gen)
        state[f"{name}.lora_down.weight"] = down * 0.3
        state[f"{name}.lora_up.weight"] = up * 0.3
        state[f"{name}.alpha"] = torch.tensor(ALPHA)
    path = tmp_path_factory.mktemp("sdxl_lora") / "sdxl_lora.safetensors"
    save_file(state, str(path), metadata={"ss_base_model_version": "sdxl_base_v1-0", "ss_network_dim": "4"})
    return path


def _settings(cond: SizeConditioning | None = SizeConditioning(), prompts=PROMPTS, seeds=(1, 2), batch_size=None):
    return GenerationSettings.uniform(list(prompts), list(seeds), "", 3, 5.0, 64, batch_size, sdxl=cond)


def _weights(pipe) -> dict[str, torch.Tensor]:
    return {f"{c}.{k}": v.clone() for c in ("unet", "text_encoder", "text_encoder_2")
            for k, v in getattr(pipe, c).state_dict().items()}


def _assert_weights_equal(pipe, before: dict[str, torch.Tensor]) -> None:
    after = _weights(pipe)
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert not changed, f"not restored bit-exactly: {changed[:3]}"


# ---------------------------------------------------------------- loading the base


def test_the_sdxl_demo_loads_as_an_sdxl_pipeline_and_a_contradicting_family_is_refused(sdxl_pipe):
    from diffusers import StableDiffusionXLPipeline

    assert isinstance(sdxl_pipe, StableDiffusionXLPipeline)
    assert not any(p.requires_grad for p in sdxl_pipe.text_encoder_2.parameters())
    with pytest.raises(BaseModelError, match=r"model.base 'demo:tiny-sdxl' \(.*tiny-sdxl\).*SDXL model"):
        load_base_pipeline("demo:tiny-sdxl", "sd1")


def test_pickles_missing_paths_and_non_pipelines_are_refused_naming_the_path(tmp_path):
    marker = tmp_path / "unpickled"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(pickle.dumps(Payload()))
    with pytest.raises(BaseModelError, match=f"model.base '{ckpt}'.*never unpickled"):
        load_base_pipeline(str(ckpt))
    assert not marker.exists(), "the pickle was unpickled"
    with pytest.raises(BaseModelError, match=f"model.base '{tmp_path / 'nope'}'.*not found"):
        load_base_pipeline(str(tmp_path / "nope"))
    (tmp_path / "folder").mkdir()
    with pytest.raises(BaseModelError, match="folder.*no model_index.json"):
        load_base_pipeline(str(tmp_path / "folder"))
    lora = next(SD15_DATA.glob("lora_unet_te/*.safetensors"))
    with pytest.raises(BaseModelError, match=f"{lora.name}.*no SD 1.x or SDXL checkpoint"):
        load_base_pipeline(str(lora))


def test_the_requested_dtype_is_loaded_with_every_supported_diffusers(recwarn):
    """diffusers 0.40 renamed from_pretrained's ``torch_dtype`` to ``dtype``; before it, ``dtype`` was ignored
    and the pipeline loaded in float32 (on a GPU: twice the memory, slower), and after it ``torch_dtype`` warns."""
    for base in ("demo:tiny", "demo:tiny-sdxl"):
        pipe = load_base_pipeline(base, dtype=torch.bfloat16)
        parts = [pipe.unet, pipe.vae, pipe.text_encoder] + ([pipe.text_encoder_2] if base.endswith("sdxl") else [])
        assert all(p.dtype == torch.bfloat16 for p in parts), [(type(p).__name__, p.dtype) for p in parts]
    assert not [w for w in recwarn if "dtype" in str(w.message)], [str(w.message) for w in recwarn]


def _with_text_encoder_keys(demo_assets, dest: Path, rename) -> Path:
    import shutil

    from safetensors.torch import load_file, save_file

    shutil.copytree(demo_assets.pipeline_dir, dest)
    te = dest / "text_encoder" / "model.safetensors"
    tensors = {rename(k): v.clone() for k, v in load_file(str(te)).items()}  # not views of the file rewritten next
    save_file(tensors, str(te), metadata={"format": "pt"})
    return dest


def test_a_folder_whose_text_encoder_names_this_transformers_does_not_read_is_refused(tmp_path, demo_assets):
    """transformers leaves such a text encoder random with only a warning; the samples would look like a bad
    LoRA. transformers 5 writes no ``text_model.`` level and reads both namings; transformers 4 reads only
    ``text_model.…`` (the floors run, ``make test-floors``, takes the other branch)."""
    import transformers

    odd = _with_text_encoder_keys(demo_assets, tmp_path / "odd", lambda k: "clip_l." + k)
    with pytest.raises(BaseModelError, match=r"did not load text_encoder/'s weights \(it left "
                                             r"text_model\.embeddings\.position_embedding\.weight"):
        load_base_pipeline(str(odd))
    # Hub folders hold a model.fp16.safetensors beside model.safetensors; only the latter is loaded and compared.
    hub = _with_text_encoder_keys(demo_assets, tmp_path / "hub", lambda k: k)
    from safetensors.torch import load_file, save_file

    full = load_file(str(hub / "text_encoder" / "model.safetensors"))
    save_file({k: (v * 0.5).half() for k, v in full.items()}, str(hub / "text_encoder" / "model.fp16.safetensors"),
              metadata={"format": "pt"})
    assert load_base_pipeline(str(hub)).text_encoder is not None
    flat = _with_text_encoder_keys(demo_assets, tmp_path / "flat", lambda k: k.removeprefix("text_model."))
    if int(transformers.__version__.split(".")[0]) >= 5:
        pipe = load_base_pipeline(str(flat))
        assert torch.equal(pipe.text_encoder.state_dict()["embeddings.position_embedding.weight"],
                           load_file_tensor(flat / "text_encoder" / "model.safetensors",
                                            "embeddings.position_embedding.weight"))
    else:
        with pytest.raises(BaseModelError, match="did not load text_encoder/'s weights"):
            load_base_pipeline(str(flat))


def load_file_tensor(path: Path, key: str) -> torch.Tensor:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return f.get_tensor(key)


def _wide_te2_sdxl(demo_assets):
    """The SDXL demo with a second text encoder wider than the first. diffusers' single-file loader tells
    SDXL's two CLIP encoders apart by width (768 vs 1280 in SDXL), so a tiny model whose encoders are
    equally wide gets encoder 1's weights in encoder 2."""
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    pipe = load_base_pipeline("demo:tiny-sdxl")
    torch.manual_seed(5)
    pipe.text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(
        vocab_size=49408, hidden_size=48, intermediate_size=64, num_attention_heads=4, num_hidden_layers=3,
        max_position_embeddings=77, projection_dim=32, bos_token_id=49406, eos_token_id=49407, pad_token_id=0,
        hidden_act="gelu")).eval()
    return pipe


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_a_single_file_checkpoint_loads_offline_with_every_tensor_in_place(tmp_path, demo_assets, family):
    """The pipeline written in the original single-file layout and loaded back by ``load_base_pipeline``
    (diffusers' from_single_file with a local config folder) holds exactly the same tensors."""
    from _ldm_checkpoint import component_configs_of, save_single_file
    from shared.base_configs import write_config_folder

    pipe = load_base_pipeline("demo:tiny") if family == "sd1" else _wide_te2_sdxl(demo_assets)
    single = save_single_file(pipe, tmp_path / "model.safetensors")
    config = write_config_folder(tmp_path / "config", family, component_configs_of(pipe))
    back = load_base_pipeline(str(single), config_dir=config)
    assert type(back) is type(pipe)
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        if getattr(pipe, name, None) is None:
            continue
        want, got = getattr(pipe, name).state_dict(), getattr(back, name).state_dict()
        assert set(got) == set(want), name
        wrong = [k for k in want if not torch.equal(want[k], got[k])]
        assert not wrong, f"{name}: {wrong[:3]}"
    with pytest.raises(BaseModelError, match="model.family is 'sd1'" if family == "sdxl" else "model.family is 'sdxl'"):
        load_base_pipeline(str(single), "sd1" if family == "sdxl" else "sdxl", config_dir=config)


@pytest.mark.slow
@FULL_SIZE_MODEL
def test_a_full_size_sd15_single_file_loads_offline_with_the_published_configs(tmp_path):
    """A full-size SD 1.5 checkpoint (random weights, fp16, 2 GB) in the single-file layout loads with no
    config_dir: the SD 1.5 config folder built from shared.base_configs, no hub (HF_HUB_OFFLINE); every
    tensor lands where the diffusers folder has it. (Full-size SDXL is not loaded here: 7 GB.)"""
    from _disk import skip_unless_free_disk
    from _ldm_checkpoint import SD1_TE, clip_to_ldm, unet_to_ldm, vae_to_ldm
    from _sd_scripts_helpers import SD15_RANDOM_GB, build_sd15_random

    base = build_sd15_random(REPO_ROOT / ".cache" / "sd15-random")
    skip_unless_free_disk(tmp_path, SD15_RANDOM_GB, "the single-file copy of the SD 1.5 model")
    read = lambda name: load_file(str(next((base / name).glob("*.safetensors"))))  # noqa: E731
    config = lambda name: json.loads((base / name / "config.json").read_text())  # noqa: E731
    single = tmp_path / "sd15.safetensors"
    save_file({**unet_to_ldm(read("unet"), config("unet")), **vae_to_ldm(read("vae"), config("vae")),
               **clip_to_ldm(read("text_encoder"), SD1_TE)}, str(single))
    pipe = load_base_pipeline(str(single), dtype=torch.float16)
    assert type(pipe).__name__ == "StableDiffusionPipeline"
    for name in ("unet", "vae", "text_encoder"):
        got = {k.removeprefix("text_model."): v for k, v in getattr(pipe, name).state_dict().items()}
        want = {k.removeprefix("text_model."): v for k, v in read(name).items()}
        assert set(got) == set(want), f"{name}: {sorted(set(got) ^ set(want))[:3]}"
        wrong = [k for k in want if not torch.equal(got[k], want[k].to(got[k].dtype))]
        assert not wrong, f"{name}: {wrong[:3]}"


@pytest.mark.slow
def test_a_full_size_sdxl_single_file_converts_to_the_published_architecture():
    """SDXL at full size on the meta device (no memory): its single-file names (the UNet's are exactly
    sd-scripts' SdxlUNet2DConditionModel's 1680), put through the conversions diffusers' from_single_file
    runs with our SDXL config folder's configs, give every tensor of the SDXL architecture, shaped right."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import (convert_ldm_clip_checkpoint, convert_ldm_unet_checkpoint,
                                                     convert_ldm_vae_checkpoint, convert_open_clip_checkpoint)
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from _ldm_checkpoint import SDXL_TE1, SDXL_TE2, clip_to_ldm, open_clip_to_ldm, unet_to_ldm, vae_to_ldm
    from shared.base_configs import config_folder

    folder = config_folder("sdxl")
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder / "unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(folder / "vae"))
        te1 = CLIPTextModel(CLIPTextConfig.from_pretrained(folder / "text_encoder"))
        te2 = CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(folder / "text_encoder_2"))
    single = {**unet_to_ldm(unet.state_dict(), unet.config), **vae_to_ldm(vae.state_dict(), vae.config),
              **clip_to_ldm(te1.state_dict(), SDXL_TE1), **open_clip_to_ldm(te2.state_dict())}
    assert sum(k.startswith("model.diffusion_model.") for k in single) == 1680
    te1_converted = convert_ldm_clip_checkpoint(single)  # transformers 4 names (text_model.); 5 has no such level
    converted = {"unet": convert_ldm_unet_checkpoint(single, dict(unet.config)),
                 "vae": convert_ldm_vae_checkpoint(single, dict(vae.config)),
                 "text_encoder": te1_converted,
                 "text_encoder_2": convert_open_clip_checkpoint(te2, single, prefix=SDXL_TE2)}
    for name, model in (("unet", unet), ("vae", vae), ("text_encoder", te1), ("text_encoder_2", te2)):
        want = {k.removeprefix("text_model."): tuple(v.shape) for k, v in model.state_dict().items()}
        got = {k.removeprefix("text_model."): tuple(v.shape) for k, v in converted[name].items()}
        assert got == want, f"{name}: {sorted(set(got) ^ set(want))[:3]}"


def test_the_published_config_folders_have_the_published_shapes():
    """Models built from our SD 1.5 and SDXL config folders (on the meta device) have the tensor names and
    shapes of the random full-size folders that sd-scripts trained on (read from their safetensors headers,
    never loaded), and the tokenizers pad as SDXL's do."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    from shared.base_configs import config_folder

    for family, reference in (("sd1", "sd15-random"), ("sdxl", "sdxl-random")):
        folder = config_folder(family)
        index = json.loads((folder / "model_index.json").read_text())
        assert index["_class_name"] == ("StableDiffusionXLPipeline" if family == "sdxl" else "StableDiffusionPipeline")
        ref = REPO_ROOT / ".cache" / reference
        classes = {"unet": UNet2DConditionModel, "vae": AutoencoderKL, "text_encoder": CLIPTextModel,
                   "text_encoder_2": CLIPTextModelWithProjection}
        for name, cls in classes.items():
            if not (folder / name).is_dir():
                assert name == "text_encoder_2" and family == "sd1"
                continue
            with torch.device("meta"):
                if name.startswith("text"):
                    model = cls(CLIPTextConfig.from_pretrained(folder / name))
                else:
                    model = cls.from_config(cls.load_config(folder / name))
            files = sorted((ref / name).glob("*.safetensors"))
            if not files:
                continue  # the full-size folder is not built here (tests/_sd_scripts_helpers.py builds it)
            want = _header_shapes(files[0])
            # transformers 5 names CLIPTextModel's tensors without the text_model. level; compare without it.
            got = {k.removeprefix("text_model."): tuple(v.shape) for k, v in model.state_dict().items()}
            want = {k.removeprefix("text_model."): v for k, v in want.items() if not k.endswith("position_ids")}
            assert got == want, f"{family} {name}: {sorted(set(got) ^ set(want))[:3]}"
    tok2 = CLIPTokenizer.from_pretrained(config_folder("sdxl") / "tokenizer_2")
    tok1 = CLIPTokenizer.from_pretrained(config_folder("sdxl") / "tokenizer")
    ids1, ids2 = (t("a cat", padding="max_length", max_length=77).input_ids for t in (tok1, tok2))
    assert ids1[:4] == ids2[:4] == [49406, 320, 2368, 49407] and ids1[4] == 49407 and ids2[4] == 0


def _header_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    import struct

    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    return {k: tuple(v["shape"]) for k, v in header.items()}


# ---------------------------------------------------------------- prompts and generation


def test_sdxl_prompt_embeddings_are_diffusers_under_both_transformers_layouts(sdxl_pipe):
    from shared.text_encoding import encode_prompts_sdxl

    p = sdxl_pipe
    with torch.no_grad():
        want = p.encode_prompt(PROMPTS, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=False)
        embeds, pooled = encode_prompts_sdxl((p.tokenizer, p.tokenizer_2), (p.text_encoder, p.text_encoder_2),
                                             PROMPTS, "cpu")
        nested = encode_prompts_sdxl((p.tokenizer, p.tokenizer_2),
                                     (Transformers4Layout(p.text_encoder), p.text_encoder_2), PROMPTS, "cpu")
    width = p.text_encoder.config.hidden_size + p.text_encoder_2.config.hidden_size
    assert embeds.shape == (2, 77, width) and pooled.shape == (2, p.text_encoder_2.config.projection_dim)
    assert torch.equal(embeds, want[0]) and torch.equal(pooled, want[2])
    assert torch.equal(nested[0], embeds) and torch.equal(nested[1], pooled)
    assert not torch.equal(embeds[0], embeds[1])


def test_generation_is_deterministic_and_a_batch_equals_its_singles(sdxl_pipe):
    batch, _ = generate(sdxl_pipe, _settings())
    again, _ = generate(sdxl_pipe, _settings())
    singles = [generate(sdxl_pipe, _settings(prompts=[p], seeds=[s]))[0][0] for p, s in zip(PROMPTS, (1, 2))]
    assert [im.shape for im in batch] == [(64, 64, 3)] * 2
    assert all(np.array_equal(a, b) for a, b in zip(batch, again))
    assert max(float(np.abs(a - b).max()) for a, b in zip(batch, singles)) < 1e-4
    assert float(np.abs(batch[0] - batch[1]).max()) > 1e-3, "two prompts and seeds gave one image"
    # The same as a plain diffusers SDXL generation (its own prompt encoding, zeros for no negative prompt).
    with torch.no_grad():
        plain = sdxl_pipe(prompt=PROMPTS[0], num_inference_steps=3, guidance_scale=5.0, height=64, width=64,
                          generator=torch.Generator("cpu").manual_seed(1), output_type="np").images[0]
    assert float(np.abs(plain - singles[0]).max()) < 1e-5


def test_size_conditioning_changes_the_image_and_is_recorded(sdxl_pipe):
    plain = _settings()
    for cond in (SizeConditioning(original_size=(256, 128)), SizeConditioning(crop_top_left=(16, 8))):
        images, _ = generate(sdxl_pipe, _settings(cond))
        base, _ = generate(sdxl_pipe, plain)
        assert float(np.abs(images[0] - base[0]).max()) > 1e-3, f"{cond} made no difference"
    described = _settings(SizeConditioning((256, 128), (16, 8))).describe()
    assert described["size_conditioning"] == {"original_size": {"width": 256, "height": 128},
                                              "target_size": {"width": 64, "height": 64},
                                              "crop_top_left": {"left": 16, "top": 8}}
    assert plain.describe()["size_conditioning"]["original_size"] == {"width": 64, "height": 64}
    assert "size_conditioning" not in _settings(None).describe(), "SD 1.x samples record no size conditioning"


def test_settings_carry_the_family_resolution_and_size_conditioning(tmp_path, demo_assets):
    from evaluator.settings import settings_for
    from shared.config import load_config

    toml = tmp_path / "c.toml"
    toml.write_text('[model]\nbase = "demo:tiny-sdxl"\n[evaluation]\nprompts = ["a", "b"]\nnum_samples = 2\n'
                    'original_size = [2048, 1536]\ncrop_top_left = [32, 0]\n')
    settings = settings_for(load_config(toml))
    assert settings.family == "sdxl"
    s = settings.generation.samples[0]
    assert (s.width, s.height) == (1024, 1024), "SDXL's default resolution is dataset.resolution (1024)"
    assert (s.original_size, s.target_size, s.crops_coords_top_left) == ((1536, 2048), (1024, 1024), (0, 32))
    from shared.config import config_from_dict

    unstated = config_from_dict({"model": {"base": "demo:tiny-sdxl"}, "dataset": {"resolution": 64},
                                 "evaluation": {"prompts": ["a"], "num_samples": 1}})
    assert unstated.model.family is None and settings_for(unstated).family == "sdxl", "told from the weights"
    assert settings_for(unstated).generation.samples[0].target_size == (64, 64)
    toml.write_text('[model]\nbase = "demo:tiny"\n[evaluation]\nprompts = ["a"]\nnum_samples = 1\n')
    sd1 = settings_for(load_config(toml)).generation.samples[0]
    assert (sd1.width, sd1.original_size, sd1.crops_coords_top_left) == (512, None, None)


# ---------------------------------------------------------------- the LoRA swap


def test_a_kohya_sdxl_lora_is_merged_in_full_and_restored_bit_exactly(sdxl_pipe, sdxl_lora):
    swapper = LoraSwapper.for_pipeline(sdxl_pipe)
    assert swapper.family == "sdxl"
    state = load_file(str(sdxl_lora))
    before = _weights(sdxl_pipe)
    baseline, _ = generate(sdxl_pipe, _settings())
    scale = 0.7
    originals = {name: swapper.modules[name].weight.detach().clone() for name, _ in LORA_MODULES}
    with swapper.applied(sdxl_lora, scale) as applied:
        assert applied == len(LORA_MODULES), "every module of the file is applied"
        for name, _ in LORA_MODULES:
            up, down = state[f"{name}.lora_up.weight"], state[f"{name}.lora_down.weight"]
            rank = down.shape[0]
            delta = torch.einsum("or,rikl->oikl", up.flatten(1), down) if down.dim() == 4 else up @ down
            expected = originals[name] + scale * ALPHA / rank * delta
            assert torch.allclose(swapper.modules[name].weight, expected, atol=1e-6), name
        merged, _ = generate(sdxl_pipe, _settings())
    assert float(np.abs(merged[0] - baseline[0]).max()) > 1e-3, "the merged LoRA did not change the image"
    _assert_weights_equal(sdxl_pipe, before)
    restored, _ = generate(sdxl_pipe, _settings())
    assert all(np.array_equal(a, b) for a, b in zip(restored, baseline))
    assert swapper.last_description == f"LoRA ({len(LORA_MODULES)} modules)"


def test_an_sd15_lora_on_the_sdxl_base_is_refused_naming_both_families(sdxl_pipe):
    sd15 = next(SD15_DATA.glob("lora_unet_te/*.safetensors"))
    before = _weights(sdxl_pipe)
    with pytest.raises(CheckpointError, match="an SD 1.x LoRA on an SDXL base: its module names"):
        with LoraSwapper.for_pipeline(sdxl_pipe).applied(sd15):
            pass
    _assert_weights_equal(sdxl_pipe, before)


def test_an_sdxl_lora_on_the_sd1_base_is_refused_by_names_or_metadata(tmp_path, sdxl_lora, demo_assets):
    pipe = load_pipeline("demo:tiny", "cpu", torch.float32)
    swapper = LoraSwapper.for_pipeline(pipe)
    assert swapper.family == "sd1"
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    with pytest.raises(CheckpointError, match="an SDXL LoRA on an SD 1.x base: its module names"):
        with swapper.applied(sdxl_lora):
            pass
    # Names that fit either family (conv_in): the metadata tells.
    meta_only = tmp_path / "meta_only.safetensors"
    save_file({"lora_unet_conv_in.lora_down.weight": torch.zeros(2, 4, 3, 3),
               "lora_unet_conv_in.lora_up.weight": torch.zeros(32, 2, 1, 1)}, str(meta_only),
              metadata={"ss_base_model_version": "sdxl_base_v1-0"})
    with pytest.raises(CheckpointError, match="an SDXL LoRA on an SD 1.x base: its metadata"):
        with swapper.applied(meta_only):
            pass
    assert all(torch.equal(before[k], v) for k, v in pipe.unet.state_dict().items())


@pytest.mark.parametrize("entry", REAL_SDXL_FILES, ids=[f["path"] for f in REAL_SDXL_FILES])
def test_every_key_of_a_real_sd_scripts_sdxl_file_fits_an_sdxl_layer(entry):
    """A real sdxl_train_network.py file (tests/data/kohya_sdxl) against SDXL 1.0's shapes (the published
    configs of shared.base_configs, on the meta device): every module lands, and every delta fits."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from shared.base_configs import clip_l_text_config, sdxl_text_encoder_2_config, sdxl_unet_config

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(sdxl_unet_config())
        te1 = CLIPTextModel(CLIPTextConfig(**clip_l_text_config()))
        te2 = CLIPTextModelWithProjection(CLIPTextConfig(**sdxl_text_encoder_2_config()))
    state = load_file(str(SDXL_DATA / entry["path"]))
    plan = LoraSwapper(unet, te1, te2).plan(state)
    assert {name for name, _, _ in plan} == {k.partition(".")[0] for k in state}
    for name, module, adapter in plan:
        assert adapter.merged(module.weight, 1.0).shape == module.weight.shape, name
    prefixes = {name.split("_")[1] for name, _, _ in plan}
    assert ("te1" in prefixes and "te2" in prefixes) == entry["trains_text_encoder"]


# ---------------------------------------------------------------- the evaluator on a folder


@pytest.mark.slow
def test_evaluator_run_scores_a_folder_of_sdxl_lora_files(tmp_path, sdxl_lora):
    from shared.jsonio import read_model
    from shared.records import CheckpointMetrics, EvaluationSummary
    from shared.trial import Trial

    folder = tmp_path / "sdxl_run"
    folder.mkdir()
    state = load_file(str(sdxl_lora))
    for epoch in (1, 2):
        save_file({k: v * epoch if k.endswith("up.weight") else v for k, v in state.items()},
                  str(folder / f"sdxl_lora-{epoch:06d}.safetensors"),
                  metadata={"ss_epoch": str(epoch), "ss_steps": str(4 * epoch),
                            "ss_base_model_version": "sdxl_base_v1-0"})
    cfg = tmp_path / "eval.toml"
    cfg.write_text(f'[model]\nbase = "demo:tiny-sdxl"\n[dataset]\nvalidation_dir = "demo:dataset/validation"\n'
                   f'[evaluation]\nprompts = {json.dumps(PROMPTS)}\nnum_samples = 2\nsteps = 3\nresolution = 64\n'
                   'guidance_scale = 5.0\noriginal_size = [96, 128]\nclip_model = "demo:tiny-clip"\n')
    run_cli("evaluator", "run", "--dir", str(folder), "--config", str(cfg), "--device", "cpu")
    trial = Trial(folder)
    summary = read_model(trial.evaluation_summary_path, EvaluationSummary)
    assert set(summary.checkpoints) == {"sdxl_lora-000001", "sdxl_lora-000002"}
    for name, row in summary.checkpoints.items():
        assert row.metrics.score is not None and row.epoch == int(name[-1])
        record = read_model(trial.results_dir(row.results_dir, name) / "metrics.json", CheckpointMetrics)
        assert record.generation["network"] == f"LoRA ({len(LORA_MODULES)} modules)"
        assert record.generation["size_conditioning"]["original_size"] == {"width": 96, "height": 128}
        assert record.num_samples == 2 and record.metrics.clip_i is not None
    first, second = (summary.checkpoints[f"sdxl_lora-00000{e}"].metrics for e in (1, 2))
    assert first.clip_t != second.clip_t, "the two checkpoints' LoRAs made no difference"
