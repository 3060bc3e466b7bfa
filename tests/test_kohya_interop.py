"""Interop with the real kohya ecosystem: the naming table under both transformers layouts, the merge
math of every network kind, real sd-scripts / LyCORIS files (tests/data/kohya_sd15), our files in
diffusers, and evaluating a folder our trainer did not make."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from evaluator.lora_networks import parse_network
from evaluator.lora_swap import LoraSwapper
from shared.errors import CheckpointError
from shared.kohya_names import KohyaTable, text_transformer
from conftest import run_cli, write_demo_config
from _disk import FULL_SIZE_MODEL

DATA = Path(__file__).parent / "data" / "kohya_sd15"
MANIFEST = json.loads((DATA / "manifest.json").read_text()) if (DATA / "manifest.json").exists() else {"files": []}
REAL_FILES = [f for f in MANIFEST["files"] if (DATA / f["path"]).exists()]


class Transformers4Layout(torch.nn.Module):
    """A CLIPTextModel as transformers 4 nests it: the transformer under ``text_model``."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.text_model = inner
        self.config = inner.config

    def forward(self, *args, **kwargs):
        return self.text_model(*args, **kwargs)


class Transformers5Layout(torch.nn.Module):
    """A CLIPTextModel as transformers 5 lays it out: the transformer's parts at the top level."""

    def __init__(self, nested: torch.nn.Module) -> None:
        super().__init__()
        self.embeddings = nested.text_model.embeddings
        self.encoder = nested.text_model.encoder
        self.final_layer_norm = nested.text_model.final_layer_norm
        self.config = nested.config
        self._call = nested.forward  # a bound method, not a submodule: the tree stays flat

    def forward(self, *args, **kwargs):
        return self._call(*args, **kwargs)


def _both_layouts(te: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(flat, nested): the installed transformers' own model for its layout, a re-wrapping for the other."""
    if hasattr(te, "text_model"):  # transformers 4
        return Transformers5Layout(te), te
    return te, Transformers4Layout(te)


def _tiny_text_encoder():
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    return CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=32, intermediate_size=37, num_attention_heads=4,
                                        num_hidden_layers=3, max_position_embeddings=77)).eval()


def _sd15_on_meta():
    """The SD 1.5 UNet and text encoder shapes, without memory or init time."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8)
        te = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_attention_heads=12,
                                          num_hidden_layers=12, max_position_embeddings=77))
    return unet, te


# ---------------------------------------------------------------- the naming table


def test_table_names_are_kohyas_under_both_transformers_layouts(demo_assets):
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(demo_assets.pipeline_dir / "unet")
    te5, te4 = _both_layouts(_tiny_text_encoder())
    assert not hasattr(te5, "text_model") and hasattr(te4, "text_model")
    t5, t4 = KohyaTable.for_models(unet, te5), KohyaTable.for_models(unet, te4)
    assert t5.modules == t4.modules
    r5 = t5.resolve({"unet": unet, "text_encoder": te5})
    r4 = t4.resolve({"unet": unet, "text_encoder": te4})
    te_names = [n for n in r5 if n.startswith("lora_te_")]
    assert len(te_names) == 3 * 6 and all(n.startswith("lora_te_text_model_encoder_layers_") for n in te_names)
    assert set(r5) == set(r4) and all(r5[n] is r4[n] for n in r5), "both layouts resolve to the same modules"
    assert "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q" in r5


def test_clip_skip_is_the_same_under_both_layouts(demo_assets):
    from transformers import CLIPTokenizer

    from shared.text_encoding import encode_prompts

    tok = CLIPTokenizer.from_pretrained(demo_assets.pipeline_dir / "tokenizer")
    te5, te4 = _both_layouts(_tiny_text_encoder())
    prompts = ["a red circle", "a square"]
    with torch.no_grad():
        a = encode_prompts(tok, te5, prompts, 2, "cpu")
        b = encode_prompts(tok, te4, prompts, 2, "cpu")
        last = encode_prompts(tok, te5, prompts, None, "cpu")
        hidden = te5(tok(prompts, padding="max_length", max_length=77, return_tensors="pt").input_ids,
                     output_hidden_states=True).hidden_states
    assert torch.equal(a, b)
    assert torch.allclose(a, text_transformer(te5).final_layer_norm(hidden[-2]))
    assert not torch.allclose(a, last)


def test_sd15_table_matches_kohyas_module_count():
    unet, te = _sd15_on_meta()
    table = KohyaTable.for_models(unet, te)
    resolved = table.resolve({"unet": unet, "text_encoder": te})
    families = {}
    for name in resolved:
        families[table.modules[name].family] = families.get(table.modules[name].family, 0) + 1
    # sd-scripts' networks.lora on SD 1.5: 192 UNet attention modules + 72 text-encoder modules = 264.
    assert families["attention"] == 192 and families["text"] == 72


# ---------------------------------------------------------------- the merge math, known answers


def _adapter_weight(state: dict, name: str, shape, scale=1.0):
    adapters = parse_network(state)
    w = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    return w, adapters[name].merged(w, scale)


def test_lora_linear_and_conv_known_answers():
    g = torch.Generator().manual_seed(0)
    up, down = torch.randn(8, 2, generator=g), torch.randn(2, 6, generator=g)
    w, merged = _adapter_weight({"m.lora_up.weight": up, "m.lora_down.weight": down, "m.alpha": torch.tensor(1.0)},
                                "m", (8, 6), scale=0.5)
    assert torch.allclose(merged, w + 0.5 * (1.0 / 2) * up @ down, atol=1e-6)
    # LoCon: 3x3 down, 1x1 up; the delta is a 3x3 conv kernel.
    up4, down4 = torch.randn(8, 2, 1, 1, generator=g), torch.randn(2, 6, 3, 3, generator=g)
    w, merged = _adapter_weight({"c.lora_up.weight": up4, "c.lora_down.weight": down4, "c.alpha": torch.tensor(2.0)},
                                "c", (8, 6, 3, 3))
    expected = w + torch.einsum("or,rikl->oikl", up4[:, :, 0, 0], down4)
    assert torch.allclose(merged, expected, atol=1e-5)
    # No alpha: alpha = rank (scale 1).
    w, merged = _adapter_weight({"m.lora_up.weight": up, "m.lora_down.weight": down}, "m", (8, 6))
    assert torch.allclose(merged, w + up @ down, atol=1e-6)


def test_loha_lokr_and_dora_known_answers():
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    w1a, w1b, w2a, w2b = r(8, 2), r(2, 6), r(8, 2), r(2, 6)
    w, merged = _adapter_weight({"h.hada_w1_a": w1a, "h.hada_w1_b": w1b, "h.hada_w2_a": w2a, "h.hada_w2_b": w2b,
                                 "h.alpha": torch.tensor(1.0)}, "h", (8, 6))
    assert torch.allclose(merged, w + 0.5 * (w1a @ w1b) * (w2a @ w2b), atol=1e-5)
    # LoKr, both sides full: scale 1 whatever alpha says.
    k1, k2 = r(2, 3), r(4, 2)
    w, merged = _adapter_weight({"k.lokr_w1": k1, "k.lokr_w2": k2, "k.alpha": torch.tensor(7.0)}, "k", (8, 6))
    assert torch.allclose(merged, w + torch.kron(k1, k2), atol=1e-5)
    # LoKr, w2 factorised at rank 2: alpha / rank.
    a, b = r(4, 2), r(2, 2)
    w, merged = _adapter_weight({"k.lokr_w1": k1, "k.lokr_w2_a": a, "k.lokr_w2_b": b, "k.alpha": torch.tensor(1.0)},
                                "k", (8, 6))
    assert torch.allclose(merged, w + 0.5 * torch.kron(k1, a @ b), atol=1e-5)
    # DoRA: each output row of W + dW rescaled to the learnt magnitude.
    up, down = r(8, 2), r(2, 6)
    mag = r(8, 1).abs() + 0.5
    w, merged = _adapter_weight({"d.lora_up.weight": up, "d.lora_down.weight": down, "d.alpha": torch.tensor(2.0),
                                 "d.dora_scale": mag}, "d", (8, 6))
    full = w + up @ down
    assert torch.allclose(merged, full * mag / full.norm(dim=1, keepdim=True), atol=1e-5)
    assert torch.allclose(merged.norm(dim=1, keepdim=True), mag, atol=1e-4)


def test_unmergeable_networks_are_refused_by_name():
    with pytest.raises(CheckpointError, match="IA3"):
        parse_network({"m.weight": torch.ones(3), "m.on_input": torch.tensor(True)})
    with pytest.raises(CheckpointError, match="peft DoRA"):
        parse_network({"unet.down_blocks.0.attentions.0.proj_in.lora_A.weight": torch.ones(2, 3),
                       "unet.down_blocks.0.attentions.0.proj_in.lora_B.weight": torch.ones(3, 2),
                       "unet.down_blocks.0.attentions.0.proj_in.lora_magnitude_vector": torch.ones(3)})
    with pytest.raises(CheckpointError, match=r"module unet.down_blocks.0.attentions.0.proj_in has only \['lora_A"):
        parse_network({"unet.down_blocks.0.attentions.0.proj_in.lora_A.weight": torch.ones(2, 3)})
    with pytest.raises(CheckpointError, match="1 of 3 keys .*m.something_new"):
        parse_network({"m.lora_up.weight": torch.ones(3, 1), "m.lora_down.weight": torch.ones(1, 3),
                       "m.something_new": torch.ones(1)})
    with pytest.raises(CheckpointError, match="incomplete"):
        parse_network({"m.lora_down.weight": torch.ones(1, 3)})
    with pytest.raises(CheckpointError, match=r"m.lora_A.weight repeats a weight the file already gives"):
        parse_network({"m.lora_down.weight": torch.ones(1, 3), "m.lora_A.weight": torch.ones(1, 3),
                       "m.lora_up.weight": torch.ones(3, 1)})
    with pytest.raises(CheckpointError, match=r"embeddings bundled with the LoRA \(1 keys, e.g. bundle_emb.sks.clip_l\)"):
        parse_network({"m.lora_up.weight": torch.ones(3, 1), "m.lora_down.weight": torch.ones(1, 3),
                       "bundle_emb.sks.clip_l": torch.ones(2, 768)})  # OneTrainer's bundle_additional_embeddings


# ---------------------------------------------------------------- real sd-scripts and LyCORIS files


def test_real_files_are_listed_with_their_commands():
    assert REAL_FILES, "tests/data/kohya_sd15 holds no files"
    readme = (DATA / "README.md").read_text()
    assert "48d368fa" in readme
    kinds = {f["kind"] for f in REAL_FILES}
    assert {"lora", "locon", "dylora"} <= kinds


@pytest.mark.parametrize("entry", REAL_FILES, ids=[f["path"] for f in REAL_FILES])
def test_every_key_of_a_real_file_lands_on_an_sd15_layer(entry):
    """Names resolve against the SD 1.5 layout (transformers 5 here, so the text_model level is absent)
    and every module's delta fits its layer's shape: nothing is dropped, nothing refused."""
    unet, te = _sd15_on_meta()
    state = load_file(str(DATA / entry["path"]))
    swapper = LoraSwapper(unet, te)
    plan = swapper.plan(state)
    covered = {k.partition(".")[0] for k in state}
    assert {name for name, _, _ in plan} == covered
    for name, module, adapter in plan:
        new = adapter.merged(module.weight, 1.0)  # shapes only: meta tensors
        assert new.shape == module.weight.shape, name
    te_modules = [n for n, _, _ in plan if n.startswith("lora_te_")]
    assert bool(te_modules) == entry["trains_text_encoder"]
    assert all(n.startswith("lora_te_text_model_encoder_layers_") for n in te_modules)


@pytest.mark.parametrize("entry", [f for f in REAL_FILES if f["kind"] in ("lora", "locon", "dylora")],
                         ids=lambda f: f["path"])
def test_merged_weight_of_named_layers_matches_the_formula(entry):
    state = load_file(str(DATA / entry["path"]))
    adapters = parse_network(state)
    names = [n for n in ("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q",
                         "lora_te_text_model_encoder_layers_0_mlp_fc1", "lora_unet_down_blocks_0_resnets_0_conv1")
             if n in adapters]
    assert names
    unet, te = _sd15_on_meta()
    modules = LoraSwapper(unet, te).modules
    for name in names:
        shape = modules[name].weight.shape
        w = torch.randn(*shape, generator=torch.Generator().manual_seed(3))
        up, down = state[f"{name}.lora_up.weight"].float(), state[f"{name}.lora_down.weight"].float()
        alpha, rank = float(state[f"{name}.alpha"]), down.shape[0]
        if len(shape) == 4 and shape[-1] == 3:  # LoCon: sum over rank of up[o, r] * down[r, i, k, l]
            delta = (up[:, :, 0, 0, None, None, None] * down[None]).sum(dim=1)
        else:
            delta = (up.flatten(1) @ down.flatten(1)).reshape(shape)
        expected = w + 0.8 * alpha / rank * delta
        assert torch.allclose(adapters[name].merged(w, 0.8), expected, atol=1e-5), name
        assert up.abs().sum() > 0, f"{name}: the file's up weights are zero, the check would prove nothing"


def test_a_real_sd15_file_on_a_base_of_other_shapes_is_refused_naming_the_layer(demo_assets):
    from diffusers import UNet2DConditionModel

    from evaluator.lora_swap import load_lora_file

    entry = next(f for f in REAL_FILES if f["path"].startswith("lora_unet_only/"))
    unet = UNet2DConditionModel.from_pretrained(demo_assets.pipeline_dir / "unet")
    swapper = LoraSwapper(unet, None)
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    with pytest.raises(CheckpointError) as e:
        with swapper.applied(DATA / entry["path"]):
            pass
    assert "lora_unet_" in str(e.value)
    assert all(torch.equal(before[k], v) for k, v in unet.state_dict().items()), "a refused file changed weights"
    assert load_lora_file(DATA / entry["path"])


# ---------------------------------------------------------------- our files in other tools


@pytest.fixture(scope="module")
def te_trial(tmp_path_factory, demo_assets):
    from shared.trial import Trial

    root = tmp_path_factory.mktemp("te")
    cfg = write_demo_config(root / "demo.toml", root / "trial_0001", epochs=1)
    run_cli("trainer", "run", "--config", str(cfg), "--new", "--set", "network.train_text_encoder=true",
            "--set", "model.clip_skip=2")
    return Trial(root / "trial_0001")


def test_builtin_text_encoder_keys_are_kohyas_and_diffusers_consumes_every_key(te_trial, demo_assets, caplog):
    import logging

    from diffusers import StableDiffusionPipeline

    path = te_trial.checkpoint_path("lora")
    sd = load_file(str(path))
    te_keys = [k for k in sd if k.startswith("lora_te")]
    assert te_keys and all(k.startswith("lora_te_text_model_encoder_layers_") for k in te_keys)
    pipe = StableDiffusionPipeline.from_pretrained(demo_assets.pipeline_dir, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        base = pipe.text_encoder(pipe.tokenizer(["a red circle"], padding="max_length", max_length=77,
                                                return_tensors="pt").input_ids)[0]
    with caplog.at_level(logging.WARNING):
        pipe.load_lora_weights(str(path.parent), weight_name=path.name)  # diffusers < 0.32 offline needs the name
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "No LoRA keys associated to CLIPTextModel" not in messages
    assert "unexpected" not in messages.lower()
    with torch.no_grad():
        after = pipe.text_encoder(pipe.tokenizer(["a red circle"], padding="max_length", max_length=77,
                                                 return_tensors="pt").input_ids)[0]
    assert (after - base).abs().max() > 1e-6, "diffusers did not apply the text-encoder LoRA"
    # Our own swap applies every key of the same file.
    swapper = LoraSwapper(pipe.unet, pipe.text_encoder)
    plan = swapper.plan(sd)
    assert {n for n, _, _ in plan} == {k.partition(".")[0] for k in sd}


# ---------------------------------------------------------------- evaluating any folder


def _eval_toml(path: Path, base: str, extra: str = "") -> Path:
    path.write_text(f"""
[model]
base = "{base}"
[evaluation]
prompts = ["a red circle on a blue background, sks style"]
num_samples = 2
steps = 2
resolution = 64
clip_model = "demo:tiny-clip"
{extra}""")
    return path


def test_a_plain_folder_is_scored_with_config_and_epochs_from_metadata(tmp_path, te_trial):
    from shared.jsonio import read_model
    from shared.records import EvaluationSummary
    from shared.trial import Trial

    folder = tmp_path / "kohya_output"
    folder.mkdir()
    for name in ("lora-000001.safetensors", "lora.safetensors"):
        if te_trial.checkpoint_path(name[:-12]).exists():
            shutil.copy2(te_trial.checkpoint_path(name[:-12]), folder / name.replace("lora", "my_lora"))
    # sd-scripts-style extras in the folder: another run's file, and a sample prompts file.
    shutil.copy2(te_trial.checkpoint_path("lora"), folder / "other_run.safetensors")
    (folder / "prompts.txt").write_text("# sd-scripts sample prompts\na red circle --n blurry --w 72 --h 64 --d 7 --s 2\n")
    cfg = _eval_toml(tmp_path / "eval.toml", "demo:tiny", 'prompt_file = "prompts.txt"\n'.replace(
        "prompts.txt", str(folder / "prompts.txt")))
    cfg.write_text(cfg.read_text().replace('prompts = ["a red circle on a blue background, sks style"]\n', ""))
    no_config = run_cli("evaluator", "run", "--dir", str(folder), "--device", "cpu", check=False)
    assert no_config.returncode == 2 and "--config" in no_config.stderr and "params.json" in no_config.stderr
    run_cli("evaluator", "run", "--dir", str(folder), "--config", str(cfg), "--name", "my_lora", "--device", "cpu")
    t = Trial(folder)
    summary = read_model(t.evaluation_summary_path, EvaluationSummary)
    assert set(summary.checkpoints) == {"my_lora"} | ({"my_lora-000001"} if (folder / "my_lora-000001.safetensors").exists() else set())
    assert summary.checkpoints["my_lora"].epoch == 1  # from ss_epoch
    from PIL import Image

    first = Image.open(t.results_dir(summary.checkpoints["my_lora"].results_dir, "my_lora") / "sample_00.png")
    assert first.size == (72, 64), "the prompt file's --w/--h were not honoured"
    run_cli("evaluator", "run", "--dir", str(folder), "--config", str(cfg), "--device", "cpu")
    summary = read_model(t.evaluation_summary_path, EvaluationSummary)
    assert "other_run" in summary.checkpoints, "without --name every *.safetensors is a checkpoint"


def test_sample_prompt_lines_parse_as_sd_scripts_does():
    from shared.sample_prompts import parse_line

    p = parse_line("masterpiece, 1girl --n lowres, bad hands --w 513 --h 770 --d 42 --l 6.5 --s 30 --ss euler_a")
    assert (p.prompt, p.negative_prompt, p.width, p.height, p.seed, p.guidance_scale, p.steps, p.sampler) == (
        "masterpiece, 1girl", "lowres, bad hands", 512, 768, 42, 6.5, 30, "euler_a")
    assert parse_line("a cat --s 5000").steps == 1000
    assert parse_line("a cat --w 10").width == 64
    assert parse_line("a cat --zz 3").ignored == ("--zz 3",)
    assert parse_line("plain prompt") == parse_line("plain prompt")
    assert parse_line("plain prompt").negative_prompt is None


@pytest.mark.slow
@FULL_SIZE_MODEL
def test_real_sd_scripts_files_are_scored_end_to_end(tmp_path):
    """Every real file from tests/data, in one plain folder, scored by `evaluator run --config` on an
    SD-1.5-architecture model with random weights (built once, cached under .cache/)."""
    from shared.jsonio import read_model
    from shared.records import EvaluationState, EvaluationSummary
    from shared.trial import Trial
    from _sd_scripts_helpers import build_sd15_random

    base = build_sd15_random(Path(__file__).resolve().parent.parent / ".cache" / "sd15-random")
    folder = tmp_path / "real"
    folder.mkdir()
    for entry in REAL_FILES:
        shutil.copy2(DATA / entry["path"], folder / Path(entry["path"]).name)
    cfg = _eval_toml(tmp_path / "eval.toml", str(base))
    out = run_cli("evaluator", "run", "--dir", str(folder), "--config", str(cfg), "--device", "cpu", "--num-samples", "1",
                  timeout=1800)
    t = Trial(folder)
    state = read_model(t.evaluation_state_path, EvaluationState)
    failed = {e.name: e.error for e in state.entries.values() if e.status != "done"}
    assert not failed, failed
    summary = read_model(t.evaluation_summary_path, EvaluationSummary)
    for entry in REAL_FILES:
        row = summary.checkpoints[Path(entry["path"]).stem]
        assert row.epoch == entry["ss_epoch"] and row.step == entry["ss_steps"]
        assert row.metrics.score is not None
    assert "match no layer" not in out.stderr


def test_clip_skip_trial_trains_and_is_scored_with_the_same_clip_skip(te_trial):
    from shared.jsonio import read_model
    from shared.records import CheckpointMetrics, EvaluationSummary

    run_cli("evaluator", "run", "--dir", str(te_trial.root), "--device", "cpu", "--num-samples", "2", "--steps", "2")
    summary = read_model(te_trial.evaluation_summary_path, EvaluationSummary)
    row = summary.checkpoints["lora"]
    metrics = read_model(te_trial.results_dir(row.results_dir, "lora") / "metrics.json", CheckpointMetrics)
    assert metrics.generation["clip_skip"] == 2 and metrics.metrics.score is not None
    assert metrics.generation["network"].startswith("LoRA (")


def test_watch_exits_when_a_trainerless_folders_final_file_is_scored(tmp_path, te_trial):
    from shared.jsonio import read_model
    from shared.records import EvaluationSummary
    from shared.trial import Trial

    folder = tmp_path / "plain"
    folder.mkdir()
    shutil.copy2(te_trial.checkpoint_path("lora"), folder / "my_lora.safetensors")
    cfg = _eval_toml(tmp_path / "eval.toml", "demo:tiny")
    out = run_cli("evaluator", "watch", "--dir", str(folder), "--config", str(cfg), "--name", "my_lora",
                  "--exit-when-done", "--device", "cpu", "--rescan-interval", "0.5", timeout=300)
    assert "nothing more is coming" in out.stderr
    assert "my_lora" in read_model(Trial(folder).evaluation_summary_path, EvaluationSummary).checkpoints
