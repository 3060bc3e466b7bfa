from pathlib import Path

import pytest

from shared.config import load_config, set_dotted
from shared.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("name", ["demo.toml", "example-sd15.toml", "example-sdxl.toml"])
def test_shipped_configs_load(name):
    config = load_config(REPO / "configs" / name)
    assert Path(config.output.dir).is_absolute()


def test_relative_paths_resolve_against_the_toml(tmp_path):
    (tmp_path / "data").mkdir()
    cfg = tmp_path / "c.toml"
    cfg.write_text('[model]\nbase = "demo:tiny"\n[dataset]\ntrain_dir = "data"\n[output]\ndir = "out/t1"\n')
    config = load_config(cfg)
    assert config.dataset.train_dir == str(tmp_path / "data")
    assert config.output.dir == str(tmp_path / "out" / "t1")
    assert config.model.base == "demo:tiny"


def test_unknown_key_is_named(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text("[training]\nlearning_rat = 1e-4\n")
    with pytest.raises(ConfigError) as e:
        load_config(cfg)
    assert "training.learning_rat" in str(e.value) and str(cfg) in str(e.value)


def test_bad_value_is_named(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text("[network]\ndim = 0\n")
    with pytest.raises(ConfigError, match="network.dim"):
        load_config(cfg)


def test_invalid_toml(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text("[training\n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(cfg)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.toml")


def test_overrides_and_hub_ids(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[model]\nbase = "runwayml/stable-diffusion-v1-5"\n')
    config = load_config(cfg, {"training.learning_rate": 0.5, "network.dim": 16})
    assert config.training.learning_rate == 0.5 and config.network.dim == 16
    assert config.model.base == "runwayml/stable-diffusion-v1-5"
    data: dict = {}
    set_dotted(data, "a.b.c", 1)
    assert data == {"a": {"b": {"c": 1}}}


def test_length_is_required(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text("[training]\nmax_train_epochs = false\n")
    with pytest.raises(ConfigError):
        load_config(cfg)


def test_model_family_is_detected_from_the_weights_and_checked(tmp_path):
    """Issue 13: model.family comes from the weights when left out (a single file's tensor names, a diffusers
    folder's layout, a demo name), sets the default resolution, and a stated family the weights contradict
    is one error naming model.family."""
    import torch
    from safetensors.torch import save_file

    from shared.model_family import family_of_base

    xl = tmp_path / "xl.safetensors"
    save_file({"conditioner.embedders.1.model.ln_final.weight": torch.zeros(1),
               "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(1)}, str(xl))
    sd = tmp_path / "sd.safetensors"
    save_file({"cond_stage_model.transformer.text_model.final_layer_norm.weight": torch.zeros(1),
               "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(1)}, str(sd))
    folder = tmp_path / "xl-folder"
    (folder / "text_encoder_2").mkdir(parents=True)
    (folder / "model_index.json").write_text('{"_class_name": "StableDiffusionXLPipeline"}')
    assert [family_of_base(str(p)) for p in (xl, sd, folder, tmp_path / "missing")] == ["sdxl", "sd1", "sdxl", None]
    assert family_of_base("demo:tiny-sdxl") == "sdxl" and family_of_base("demo:tiny") == "sd1"

    def load(base: str, extra: str = ""):
        cfg = tmp_path / "c.toml"
        cfg.write_text(f'[model]\nbase = "{base}"\n{extra}')
        return load_config(cfg)

    c = load("xl.safetensors")  # relative to the TOML's folder
    assert c.model.family == "sdxl" and c.family == "sdxl" and c.dataset.resolution == 1024
    assert load("sd.safetensors").dataset.resolution == 512
    assert load("xl-folder", "family = \"sdxl\"\n").family == "sdxl"
    with pytest.raises(ConfigError) as e:
        load("sd.safetensors", 'family = "sdxl"\n')
    assert e.value.field == "model.family" and "SD 1.x" in str(e.value)
    assert load("missing.safetensors").model.family is None  # the trainer names the missing file later


def test_lora_family_from_names_then_metadata():
    from shared.model_family import family_of_lora

    assert family_of_lora(["lora_te1_text_model_encoder_layers_0_mlp_fc1.alpha"]) == "sdxl"
    assert family_of_lora(["lora_unet_input_blocks_4_1_proj_in.alpha"]) == "sdxl"
    assert family_of_lora(["lora_unet_down_blocks_0_attentions_0_proj_in.alpha"]) == "sd1"
    assert family_of_lora(["x.alpha"], {"ss_base_model_version": "sdxl_base_v1-0"}) == "sdxl"
    assert family_of_lora(["x.alpha"], {"modelspec.architecture": "stable-diffusion-v1/lora"}) == "sd1"
    assert family_of_lora(["x.alpha"]) is None
