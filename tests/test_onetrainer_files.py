"""Real OneTrainer LoRA files (tests/data/onetrainer, written by OneTrainer's own saver): every format it writes
merges exactly where, and by exactly what, its INTERNAL file says. INTERNAL names each layer by the diffusers
module path OneTrainer itself adapted, so the reference does not come from our name table. SDXL files were
made on the demo SDXL model and are merged into it; SD 1.5 files were made on the SD 1.5 architecture and are
planned against its published shapes on the meta device."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from evaluator.lora_swap import LoraSwapper
from evaluator.pipeline import load_pipeline
from shared.errors import CheckpointError
from shared.model_family import family_of_lora

DATA = Path(__file__).parent / "data" / "onetrainer"
SDXL, SD15 = DATA / "sdxl", DATA / "sd15"
MANIFESTS = {family: json.loads((DATA / family / "manifest.json").read_text()) for family in ("sdxl", "sd15")}
MANIFEST = MANIFESTS["sdxl"]
FORMATS = [f for f in MANIFEST["files"] if f["format"] != "INTERNAL"]
SD15_FORMATS = [f for f in MANIFESTS["sd15"]["files"] if f["format"] != "INTERNAL"]
COMPONENTS = ("text_encoder_2", "text_encoder", "unet")
UNET_ONLY = ("ORIGINAL_LORA",)  # no prefix for the UNet, so OneTrainer writes it without the text encoders


def _internal(folder: Path) -> Path:
    return folder / "internal" / "internal.safetensors"


@pytest.fixture(scope="module")
def sdxl_pipe(demo_assets):
    return load_pipeline("demo:tiny-sdxl", "cpu", torch.float32)


def _live_module(root: torch.nn.Module, path: str) -> torch.nn.Module:
    try:
        return root.get_submodule(path)
    except AttributeError:  # transformers >= 5.6: CLIPTextModel has no text_model level
        return root.get_submodule(path.removeprefix("text_model."))


def _expected_deltas(roots: dict[str, torch.nn.Module], folder: Path = SDXL,
                     unet_only: bool = False) -> dict[torch.nn.Module, torch.Tensor]:
    """Layer -> weight change, from the INTERNAL file: dW = alpha / rank * up @ down (3x3 down, 1x1 up)."""
    state = load_file(str(_internal(folder)))
    out = {}
    for key in sorted(k for k in state if k.endswith(".lora_down.weight")):
        if unet_only and not key.startswith("unet."):
            continue
        module = key.removesuffix(".lora_down.weight")
        component = next(c for c in COMPONENTS if module.startswith(c + "."))
        down, up = state[key].float(), state[module + ".lora_up.weight"].float()
        alpha, rank = float(state[module + ".alpha"]), down.shape[0]
        layer = _live_module(roots[component], module[len(component) + 1:])
        delta = (torch.einsum("or,rikl->oikl", up.flatten(1), down) if down.dim() == 4 else up @ down) * alpha / rank
        out[layer] = delta.reshape(layer.weight.shape)
    return out


def _roots(pipe) -> dict[str, torch.nn.Module]:
    return {c: getattr(pipe, c) for c in COMPONENTS if getattr(pipe, c, None) is not None}


def test_the_files_are_what_onetrainer_wrote():
    for family, manifest in MANIFESTS.items():
        assert manifest["onetrainer_commit"] and manifest["transformers"] == "5.5.4"
        assert {f["format"] for f in manifest["files"]} >= {"KOHYA_LORA", "COMFY_LORA", "DIFFUSERS_LORA", "ORIGINAL_LORA",
                                                             "INTERNAL"}
        for entry in manifest["files"]:
            state = load_file(str(DATA / family / entry["path"]))
            assert len(state) == entry["keys"] and sorted(state)[:3] == entry["first_keys"]


@pytest.mark.parametrize("entry", FORMATS, ids=[f["format"] for f in FORMATS])
def test_every_onetrainer_format_merges_where_its_internal_file_says(sdxl_pipe, entry):
    swapper = LoraSwapper.for_pipeline(sdxl_pipe)
    expected = _expected_deltas(_roots(sdxl_pipe), unet_only=entry["format"] in UNET_ONLY)
    # every Linear and Conv2d of the UNet (263) and both encoders (37): OneTrainer's "full" preset
    assert len(expected) == (263 if entry["format"] in UNET_ONLY else 300)
    layers = [m for m in sdxl_pipe.components.values() if isinstance(m, torch.nn.Module)]
    before = {id(p): p.detach().clone() for root in layers for p in root.parameters()}
    with swapper.applied(SDXL / entry["path"]) as n:
        assert n == len(expected)
        for layer, delta in expected.items():
            got = layer.weight.detach() - before[id(layer.weight)]
            assert torch.allclose(got, delta, atol=5e-5, rtol=1e-2), (entry["format"], layer)
        changed = {id(p) for root in layers for p in root.parameters() if not torch.equal(p, before[id(p)])}
        assert changed == {id(layer.weight) for layer in expected}, "a layer the file does not name was changed"
    assert all(torch.equal(p, before[id(p)]) for root in layers for p in root.parameters()), "not restored"


def test_onetrainer_sdxl_files_are_told_sdxl_from_the_unet_alone(tmp_path, demo_assets):
    """OneTrainer's default (LEGACY) names SDXL's UNet by its diffusers paths, as sd-scripts does SD 1.x's:
    a UNet-only file must still read as SDXL, and be refused on an SD 1.x base as one."""
    sd1 = LoraSwapper.for_pipeline(load_pipeline("demo:tiny", "cpu", torch.float32))
    for entry in FORMATS:
        state = load_file(str(SDXL / entry["path"]))
        unet_only = {k: v for k, v in state.items() if not k.startswith(("lora_te", "text_encoder", "clip_"))}
        assert unet_only and family_of_lora(unet_only) == "sdxl", entry["format"]
        path = tmp_path / f"{entry['format']}.safetensors"
        save_file(unet_only, str(path))
        with pytest.raises(CheckpointError, match="an SDXL LoRA on an SD 1.x base: its module names"):
            with sd1.applied(path):
                pass


def test_diffusers_adapter_metadata_sets_the_scale_or_is_refused(tmp_path, sdxl_pipe):
    """diffusers files keep no alpha per layer; diffusers >= 0.34 writes each component's peft config in the
    header. Its lora_alpha applies (here 2 x OneTrainer's folded-in scale); per-layer patterns are refused."""
    state = load_file(str(SDXL / "diffusers_lora" / "diffusers_lora.safetensors"))
    unet = {k: v for k, v in state.items() if k.startswith("unet.")}
    expected = {m: d for m, d in _expected_deltas(_roots(sdxl_pipe)).items()
                if any(m is mod for mod in sdxl_pipe.unet.modules())}
    config = {"unet": {"r": 2, "lora_alpha": 4, "rank_pattern": {}, "alpha_pattern": {}, "use_dora": False}}
    path = tmp_path / "with_metadata.safetensors"
    save_file(unet, str(path), metadata={"format": "pt", "lora_adapter_metadata": json.dumps(config)})
    swapper = LoraSwapper.for_pipeline(sdxl_pipe)
    before = {m: m.weight.detach().clone() for m in expected}
    with swapper.applied(path):
        for layer, delta in expected.items():  # alpha 4 / rank 2 = 2 x the file's own (alpha-folded) change
            assert torch.allclose(layer.weight.detach() - before[layer], 2 * delta, atol=1e-4, rtol=1e-2)
    config["unet"]["alpha_pattern"] = {"down_blocks.1.attentions.0.proj_in": 8}
    save_file(unet, str(path), metadata={"format": "pt", "lora_adapter_metadata": json.dumps(config)})
    with pytest.raises(CheckpointError, match="sets alpha_pattern for unet"):
        with swapper.applied(path):
            pass
    assert all(torch.equal(m.weight, w) for m, w in before.items())


def test_a_onetrainer_save_folder_is_scored_in_training_order_with_steps_from_the_names(tmp_path, demo_assets):
    """`evaluator run` on OneTrainer's workspace/save folder as OneTrainer names its files: step and epoch come
    from the names, and the LEGACY and COMFY files (the same weights) score the same."""
    from conftest import REPO_ROOT, run_cli
    from shared.jsonio import read_model
    from shared.records import EvaluationSummary
    from shared.trial import Trial

    save = tmp_path / "save"
    save.mkdir()
    names = {"legacy_lora": "luca2026-11-23_10-00-00-save-40-1-0", "comfy_lora": "luca2026-11-23_10-05-00-save-60-1-20"}
    for fmt, stem in names.items():
        (save / f"{stem}.safetensors").write_bytes((SDXL / fmt / f"{fmt}.safetensors").read_bytes())
    config = tmp_path / "eval.toml"
    config.write_text((REPO_ROOT / "configs" / "evaluate-folder.toml").read_text()
                      .replace('base = "demo:tiny" ', 'base = "demo:tiny-sdxl" '))
    run_cli("evaluator", "run", "--dir", str(save), "--config", str(config), timeout=600)
    summary = read_model(Trial(save).evaluation_summary_path, EvaluationSummary)
    rows = [e for e in summary.ordered() if e.checkpoint != "baseline"]
    assert [(e.checkpoint, e.step, e.epoch) for e in rows] == [(names["legacy_lora"], 40, 1),
                                                             (names["comfy_lora"], 60, 2)]
    assert rows[0].metrics.score == rows[1].metrics.score and rows[1].metrics.ssim_prev == pytest.approx(1.0)


@pytest.mark.parametrize("entry", SD15_FORMATS, ids=[f["format"] for f in SD15_FORMATS])
def test_every_onetrainer_sd15_format_lands_on_the_layer_its_internal_file_names(entry):
    """SD 1.5's published shapes (shared.base_configs) on the meta device: each module of the file is planned onto
    the very layer OneTrainer's INTERNAL file names, with the same weight change, and fits it. COMFY names the UNet
    in the original ldm layout (``diffusion_model.input_blocks.1.1.…``), which sd-scripts never writes for SD 1.x."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from shared.base_configs import clip_l_text_config, sd15_unet_config

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(sd15_unet_config())
        te = CLIPTextModel(CLIPTextConfig(**clip_l_text_config()))
    state = load_file(str(SD15 / entry["path"]))
    assert family_of_lora(state) == "sd1", "told from the names alone, in every layout"
    plan = LoraSwapper(unet, te).plan(state)
    expected = _expected_deltas({"unet": unet, "text_encoder": te}, SD15, unet_only=entry["format"] in UNET_ONLY)
    assert len(plan) == len(expected) == 53 + (0 if entry["format"] in UNET_ONLY else 12)
    for name, layer, adapter in plan:
        assert layer in expected, name
        assert torch.allclose(adapter.delta(layer.weight.shape), expected[layer], atol=5e-5, rtol=1e-2), name
    assert {id(layer) for _, layer, _ in plan} == {id(layer) for layer in expected}
