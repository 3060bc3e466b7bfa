from pathlib import Path

import pytest

from shared.config import load_config, set_dotted
from shared.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("name", ["demo.toml", "example-sd15.toml"])
def test_shipped_configs_load(name):
    config = load_config(REPO / "configs" / name)
    assert Path(config.output.dir).is_absolute()


def test_relative_paths_resolve_against_the_toml(tmp_path):
    (tmp_path / "data").mkdir()
    cfg = tmp_path / "c.toml"
    cfg.write_text('[dataset]\ntrain_dir = "data"\n[output]\ndir = "out/t1"\n')
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
