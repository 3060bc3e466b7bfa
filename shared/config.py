"""The run config: one TOML file with [model] [dataset] [network] [training] [output] [evaluation] [sweep].

Unknown keys are errors (a typo must not silently fall back to a default). Relative paths are
resolved against the folder of the TOML file, so a config can be run from anywhere; ``demo:`` names
refer to the offline demo assets (see shared.demo_assets).
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from shared.errors import ConfigError

DEMO_PREFIX = "demo:"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


Family = Literal["sd1", "sdxl"]
DEFAULT_RESOLUTION: dict[str, int] = {"sd1": 512, "sdxl": 1024}


class ModelConfig(_Section):
    # Required in every config file (load_config); the default only serves configs built in code.
    base: str = Field("demo:tiny", description="Required. SD 1.x or SDXL weights: a diffusers folder, a "
                      "single-file .safetensors checkpoint, or 'demo:tiny' / 'demo:tiny-sdxl' for the offline "
                      "random-weight demo models.")
    family: Family | None = Field(None, description="sd1 (SD 1.x/2.x) or sdxl (SDXL 1.0, Pony, Illustrious, "
                                  "NoobAI); detected from the weights when left out.")
    v_parameterization: bool = Field(False, description="The base predicts v (SD 2.x-v style).")
    clip_skip: int | None = Field(None, ge=1, le=12, description="SD 1.x only: SDXL always uses the "
                                  "penultimate layer.")


class DatasetConfig(_Section):
    train_dir: str | None = Field(None, description="kohya layout: N_concept/ folders of images with caption "
                                  "files (N = repeats). Required to train (or dataset_config with sd-scripts); "
                                  "'demo:dataset/train' for the offline demo dataset.")
    validation_dir: str | None = Field(None, description="Held-out images with captions: evaluation "
                                       "references and, if no prompts are given, the prompts.")
    dataset_config: str | None = Field(None, description="An sd-scripts dataset TOML, passed through "
                                       "verbatim (sd-scripts backend only).")
    caption_extension: str = Field(".txt", description="Caption files' extension: \".txt\" (\"txt\" means the same).")
    resolution: int | None = Field(None, ge=32, le=4096, description="Default: 512 for sd1, 1024 for sdxl.")
    repeats_override: int | None = Field(None, ge=1, description="Ignore the N_ folder prefix.")

    @field_validator("caption_extension")
    @classmethod
    def _dotted_extension(cls, value: str) -> str:
        """``txt`` is what users write (sd-scripts wants ``.txt``): both mean the same. An empty one is
        left for the dataset scan to refuse with its own message."""
        value = value.strip()
        return "." + value if value and not value.startswith(".") else value


class NetworkConfig(_Section):
    dim: int = Field(8, ge=1, le=1024, description="LoRA rank (network_dim).")
    alpha: float = Field(4.0, gt=0, description="LoRA alpha; scale = alpha / dim.")
    train_text_encoder: bool = False
    dropout: float = Field(0.0, ge=0, lt=1)


class TrainingConfig(_Section):
    backend: Literal["builtin", "sd-scripts"] = "builtin"
    max_train_epochs: int | None = Field(10, ge=1)
    max_train_steps: int | None = Field(None, ge=1, description="Overrides max_train_epochs when set.")
    save_every_n_epochs: int | None = Field(1, ge=1)
    save_every_n_steps: int | None = Field(None, ge=1)
    save_state: bool = True
    train_batch_size: int = Field(1, ge=1)
    gradient_accumulation_steps: int = Field(1, ge=1)
    learning_rate: float = Field(1e-4, gt=0)
    text_encoder_lr: float | None = Field(None, gt=0, description="SDXL: the first text encoder's.")
    text_encoder_2_lr: float | None = Field(None, gt=0, description="SDXL's second text encoder "
                                            "(default: text_encoder_lr).")
    cache_text_encoder_outputs: bool = Field(False, description="SDXL, UNet-only training: encode captions "
                                             "once (sd-scripts --cache_text_encoder_outputs).")
    no_half_vae: bool | None = Field(None, description="Keep the VAE in fp32 under mixed precision "
                                     "(default: on for SDXL, whose VAE overflows in fp16).")
    optimizer: str = "AdamW"
    lr_scheduler: Literal["constant", "constant_with_warmup", "cosine", "linear"] = "constant"
    lr_warmup_steps: int = Field(0, ge=0)
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    gradient_checkpointing: bool = False
    cache_latents: bool = False
    seed: int = 42
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N (builtin backend).")
    num_gpus: int = Field(1, ge=1, description="More than 1 launches sd-scripts with accelerate.")
    # sd-scripts backend
    sd_scripts_dir: str | None = Field(None, description="Checkout of kohya-ss/sd-scripts "
                                       "(default: $SD_SCRIPTS_DIR).")
    sd_scripts_python: str | None = Field(None, description="Python of sd-scripts' own venv "
                                          "(default: $SD_SCRIPTS_PYTHON).")
    tokenizer_cache_dir: str | None = None
    extra_args: list[str] = Field(default_factory=list, description="Passed to train_network.py verbatim.")

    @model_validator(mode="after")
    def _needs_a_length(self) -> "TrainingConfig":
        if self.max_train_epochs is None and self.max_train_steps is None:
            raise ValueError("set max_train_epochs or max_train_steps")
        return self

    def resolved_sd_scripts_dir(self) -> str | None:
        return self.sd_scripts_dir or os.environ.get("SD_SCRIPTS_DIR") or None

    def resolved_sd_scripts_python(self) -> str | None:
        return self.sd_scripts_python or os.environ.get("SD_SCRIPTS_PYTHON") or None


class OutputConfig(_Section):
    dir: str = Field("runs/trial_0001", description="The trial folder (checkpoints, status, logs).")
    name: str = Field("lora", pattern=r"^[A-Za-z0-9_.][A-Za-z0-9_.\- ]*$",
                      description="output_name: files are <name>-000002.safetensors etc.")


class EarlyStopConfig(_Section):
    enabled: bool = False
    patience: int = Field(3, ge=1, description="Checkpoints without improvement before stopping.")
    min_delta: float = Field(0.0, ge=0, description="Smallest score gain that counts as improvement.")
    min_checkpoints: int = Field(2, ge=1, description="Never stop before this many are scored.")


class EvaluationConfig(_Section):
    prompts: list[str] = Field(default_factory=list)
    prompt_file: str | None = Field(None, description="One prompt per line; # starts a comment.")
    negative_prompt: str = ""
    num_samples: int = Field(8, ge=1, le=256, description="Images per checkpoint (prompts cycle).")
    seed: int = Field(1234, description="Sample i uses seed + i: fixed across checkpoints.")
    steps: int = Field(25, ge=1, le=1000)
    guidance_scale: float = Field(7.5, ge=0)
    resolution: int | None = Field(None, ge=32, le=4096, description="Default: dataset.resolution.")
    batch_size: int | None = Field(None, ge=1, description="Default: all samples in one batch; out of GPU "
                                      "memory, the evaluator halves it and keeps the size that fitted.")
    scheduler: Literal["ddim", "euler", "dpmsolver"] = "ddim"
    references_dir: str | None = Field(None, description="Reference images; default: validation_dir.")
    clip_model: str = Field("demo:tiny-clip", description="open_clip architecture name, 'hf-hub:org/name', "
                            "or 'demo:tiny-clip'.")
    clip_pretrained: str | None = Field(None, description="open_clip pretrained tag or a local weights file.")
    dino_model: str | None = Field(None, description="DINO subject-identity metric (off when unset): "
                                   "'demo:tiny-dino', 'hf-hub:timm/vit_small_patch14_dinov2.lvd142m', or a timm "
                                   "architecture with dino_pretrained.")
    dino_pretrained: str | None = Field(None, description="Local .safetensors weights for dino_model.")
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    dtype: Literal["auto", "fp32", "fp16", "bf16"] = "auto"
    gpu_sharing: Literal["concurrent", "pause-trainer"] = "concurrent"
    lora_scale: float = 1.0
    original_size: tuple[int, int] | None = Field(None, description="SDXL size conditioning (width, height) "
                                                   "of the pretend source image; default: the sample size.")
    crop_top_left: tuple[int, int] = Field((0, 0), description="SDXL crop conditioning (left, top).")
    compile: bool = Field(False, description="torch.compile the UNet once per daemon (GPU; the first "
                          "compile takes a minute, done while the baseline is scored).")
    early_stop: EarlyStopConfig = Field(default_factory=EarlyStopConfig)


class SearchDimension(_Section):
    """One axis of a sweep: a float/int range or a list of choices, over a dotted config field."""

    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    type: Literal["float", "int", "auto"] = "auto"
    choices: list[Any] | None = None

    @model_validator(mode="after")
    def _range_or_choices(self) -> "SearchDimension":
        if self.choices is None and (self.low is None or self.high is None):
            raise ValueError("give either choices = [...] or low and high")
        if self.choices is not None and not self.choices:
            raise ValueError("choices must not be empty")
        return self


class PrunerConfig(_Section):
    type: Literal["median", "percentile", "patient", "none"] = "median"
    margin: float = Field(0.0, ge=0, description="median: prune only when the score is this much below the "
                          "median of finished trials at the same epoch (scores are noisy).")
    percentile: float = Field(25.0, gt=0, lt=100, description="percentile: prune below this percentile.")
    n_startup_trials: int = Field(1, ge=0)
    n_warmup_steps: int = Field(1, ge=0, description="Epochs reported before a trial may be pruned.")
    patience: int = Field(2, ge=1, description="patient pruner: epochs without improvement.")
    min_delta: float = 0.0


class SweepConfig(_Section):
    study_name: str = "epochscope"
    storage: str | None = Field(None, description="Optuna storage URL; default sqlite:///<root>/study.db")
    root: str = "sweeps/demo"
    n_trials: int = Field(4, ge=1)
    direction: Literal["maximize", "minimize"] = "maximize"
    objective: str = Field("score", description="Metric taken from the best checkpoint of each trial.")
    sampler: Literal["tpe", "random"] = "tpe"
    seed: int | None = 0
    pruner: PrunerConfig = Field(default_factory=PrunerConfig)
    trial_timeout_s: float = Field(3600.0, gt=0, description="How long to wait for the final score.")
    space: dict[str, SearchDimension] = Field(default_factory=dict, description="Dotted field -> range.")
    enqueue: list[dict[str, Any]] = Field(default_factory=list, description="Fixed trials run first.")


class RunConfig(_Section):
    """The whole run config. ``source`` is where it was read from (not part of the TOML)."""

    schema_version: int = 1
    model: ModelConfig = Field(default_factory=ModelConfig)
    dataset: DatasetConfig = Field(default_factory=DatasetConfig)
    network: NetworkConfig = Field(default_factory=NetworkConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    sweep: SweepConfig | None = None

    @model_validator(mode="after")
    def _family_defaults(self) -> "RunConfig":
        if self.dataset.resolution is None:
            self.dataset.resolution = DEFAULT_RESOLUTION[self.family]
        if self.family == "sdxl" and self.model.clip_skip not in (None, 2):
            raise ValueError("model.clip_skip: SDXL always uses the penultimate text-encoder layer; leave it out")
        if self.training.cache_text_encoder_outputs and self.network.train_text_encoder:
            raise ValueError("training.cache_text_encoder_outputs cannot be used with network.train_text_encoder")
        return self

    @property
    def family(self) -> Family:
        """The model family: set, detected at load, or SD 1.x when neither could tell."""
        return self.model.family or "sd1"

    def evaluation_resolution(self) -> int:
        return self.evaluation.resolution or self.dataset.resolution


# Fields holding paths, resolved against the TOML's folder (``demo:`` names are left alone).
_PATH_FIELDS = (
    ("model", "base"),
    ("dataset", "train_dir"),
    ("dataset", "validation_dir"),
    ("dataset", "dataset_config"),
    ("training", "sd_scripts_dir"),
    ("training", "tokenizer_cache_dir"),
    ("output", "dir"),
    ("evaluation", "prompt_file"),
    ("evaluation", "references_dir"),
)


def _looks_like_path(value: str) -> bool:
    return not value.startswith(DEMO_PREFIX) and not value.startswith("hf-hub:")


def resolve_paths(config: RunConfig, base_dir: Path) -> RunConfig:
    """Make relative paths absolute against ``base_dir``; hub ids without a local match stay as they are."""
    data = config.model_dump()
    for section, key in _PATH_FIELDS:
        value = data[section].get(key)
        if not value or not _looks_like_path(value):
            continue
        p = Path(os.path.expanduser(value))
        if not p.is_absolute():
            candidate = (base_dir / p).resolve()
            # A bare hub id like "runwayml/stable-diffusion-v1-5" has no local match: keep it.
            if section == "model" and not candidate.exists() and not value.startswith("."):
                continue
            p = candidate
        data[section][key] = str(p)
    if data.get("sweep") and data["sweep"].get("root"):
        root = Path(os.path.expanduser(data["sweep"]["root"]))
        data["sweep"]["root"] = str(root if root.is_absolute() else (base_dir / root).resolve())
    return RunConfig.model_validate(data)


def config_from_dict(data: dict[str, Any], source: Path | str = "<config>") -> RunConfig:
    try:
        return RunConfig.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(p) for p in first.get("loc", ()))
        msg = first.get("msg", "invalid value")
        if first.get("type") == "extra_forbidden":
            msg = "unknown key (check the spelling; see configs/example-sd15.toml for every key)"
        raise ConfigError(source, msg, field=loc or None) from None


def load_config(path: Path | str, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Read, validate and path-resolve a TOML config. ``overrides`` maps dotted keys to values."""
    from shared.jsonio import read_bytes

    path = Path(path)
    raw = read_bytes(path, ConfigError)
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(path, f"invalid TOML: {e}") from None
    for dotted, value in (overrides or {}).items():
        set_dotted(data, dotted, value)
    _check_family(data, path)
    config = config_from_dict(data, path)
    _require_base(data, path)
    return resolve_paths(config, path.resolve().parent)


def _require_base(data: dict[str, Any], path: Path) -> None:
    """A config file must name its base model: a left-out one silently meant the random demo model."""
    model = data.get("model")
    if not isinstance(model, dict) or "base" not in model:
        raise ConfigError(path, 'is required: the SD 1.x or SDXL weights to train on or sample with (a '
                          'diffusers folder or a single-file .safetensors), e.g. model.base = '
                          '"/models/v1-5-pruned-emaonly.safetensors", or model.base = "demo:tiny" for the '
                          "offline demo", field="model.base")


def require_training_data(config: RunConfig, source: Path | str) -> None:
    """Training needs images: ``dataset.train_dir`` (or an sd-scripts ``dataset_config``). Checked by the
    trainer only: a config that only evaluates a folder may leave them out."""
    d = config.dataset
    if d.train_dir is None and not (config.training.backend == "sd-scripts" and d.dataset_config):
        also = " (or dataset.dataset_config with the sd-scripts backend)" if config.training.backend == "sd-scripts" else ""
        raise ConfigError(source, "is required to train: the training images in kohya layout (N_concept/ "
                          f"folders of images with captions){also}, e.g. dataset.train_dir = \"/data/train\", "
                          "or dataset.train_dir = \"demo:dataset/train\" for the offline demo dataset",
                          field="dataset.train_dir")


def _check_family(data: dict[str, Any], path: Path) -> None:
    """Fill ``model.family`` from the weights when left out (before validation, so the family's default
    resolution applies), and refuse a family that the weights contradict."""
    from shared.model_family import FAMILY_NAMES, family_of_base

    model = data.get("model")
    model = model if isinstance(model, dict) else {}
    base = model.get("base")
    if not isinstance(base, str):
        return
    if _looks_like_path(base) and not Path(os.path.expanduser(base)).is_absolute():
        base = str((path.resolve().parent / os.path.expanduser(base)).resolve())
    detected = family_of_base(base)
    stated = model.get("family")
    if detected is None or stated == detected:
        return
    if stated is not None:
        raise ConfigError(path, f"is {stated!r}, but {base} holds an {FAMILY_NAMES[detected]} model "
                          f"({detected!r}); fix model.family or leave it out", field="model.family")
    data.setdefault("model", {})["family"] = detected


def set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    """``set_dotted(d, "training.learning_rate", 1e-4)``: how sweeps and CLI overrides change a config."""
    parts = dotted.split(".")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError("<override>", f"{part} is not a section", field=dotted)
    node[parts[-1]] = value


def get_dotted(data: dict[str, Any], dotted: str) -> Any:
    node: Any = data
    for part in dotted.split("."):
        node = node[part]
    return node
