"""train_network.py / sdxl_train_network.py arguments from our config, as plain data (printable,
testable, no process)."""

from __future__ import annotations

from pathlib import Path

from shared.config import RunConfig

PLACEHOLDER_DIR = "$SD_SCRIPTS_DIR"
PLACEHOLDER_PYTHON = "$SD_SCRIPTS_PYTHON"
SCRIPTS = {"sd1": "train_network.py", "sdxl": "sdxl_train_network.py"}


def script_name(config: RunConfig) -> str:
    """The sd-scripts entry point for the config's model family."""
    return SCRIPTS[config.family]


# sd-scripts builds these schedules from --max_train_steps, which a continuation sets to its own length.
# Named as a function instead, they take the original run's length (sd-scripts' --lr_scheduler_type).
LENGTH_DEPENDENT = {"linear": "transformers.optimization.get_linear_schedule_with_warmup",
                    "cosine": "transformers.optimization.get_cosine_schedule_with_warmup"}


def schedule_args(config: RunConfig, schedule_steps: int) -> list[str]:
    """A continuation's lr schedule: the one the run started with, ``schedule_steps`` long (sd-scripts
    restores its step from the state). Empty for schedules whose length does not matter."""
    t = config.training
    function = LENGTH_DEPENDENT.get(t.lr_scheduler)
    if function is None:
        return []
    total = schedule_steps * t.num_gpus  # sd-scripts steps the scheduler once per process
    return ["--lr_scheduler_type", function, "--lr_scheduler_args", f"num_warmup_steps={t.lr_warmup_steps}",
            f"num_training_steps={total}"]


def script_args(config: RunConfig, output_dir: Path, logging_dir: Path, resume: Path | None,
                steps: int | None, epochs: int | None, schedule_steps: int | None = None) -> list[str]:
    """Arguments after ``train_network.py``. ``steps``/``epochs``: the length of this run;
    ``schedule_steps``: with ``resume``, the length of the lr schedule to follow."""
    c, d, n, t = config, config.dataset, config.network, config.training
    args = ["--pretrained_model_name_or_path", c.model.base]
    if d.dataset_config:
        args += ["--dataset_config", d.dataset_config]
    else:
        args += ["--train_data_dir", str(d.train_dir), "--resolution", f"{d.resolution},{d.resolution}",
                 "--caption_extension", d.caption_extension, "--train_batch_size", str(t.train_batch_size)]
    args += ["--output_dir", str(output_dir), "--output_name", c.output.name, "--save_model_as", "safetensors",
             "--network_module", "networks.lora", "--network_dim", str(n.dim), "--network_alpha", _num(n.alpha),
             "--learning_rate", _num(t.learning_rate), "--optimizer_type", t.optimizer,
             "--lr_scheduler", t.lr_scheduler, "--gradient_accumulation_steps", str(t.gradient_accumulation_steps),
             "--mixed_precision", t.mixed_precision, "--save_precision", "float" if t.mixed_precision == "no"
             else t.mixed_precision, "--seed", str(t.seed), "--logging_dir", str(logging_dir),
             "--log_with", "tensorboard", "--console_log_simple"]
    schedule = schedule_args(config, schedule_steps) if resume is not None and schedule_steps else []
    if t.lr_warmup_steps and not schedule:  # with --lr_scheduler_type, sd-scripts refuses --lr_warmup_steps
        args += ["--lr_warmup_steps", str(t.lr_warmup_steps)]
    args += schedule
    args += text_encoder_lr_args(config)
    if not n.train_text_encoder:
        args += ["--network_train_unet_only"]
    if n.dropout:
        args += ["--network_dropout", _num(n.dropout)]
    if c.model.v_parameterization:
        args += ["--v_parameterization"]
    if c.model.clip_skip and c.family == "sd1":  # SDXL always uses the penultimate layer; sd-scripts warns
        args += ["--clip_skip", str(c.model.clip_skip)]
    if c.family == "sdxl":
        if t.cache_text_encoder_outputs:
            args += ["--cache_text_encoder_outputs"]
        if t.no_half_vae is not False:
            args += ["--no_half_vae"]
    elif t.no_half_vae:
        args += ["--no_half_vae"]
    if t.save_every_n_epochs:
        args += ["--save_every_n_epochs", str(t.save_every_n_epochs)]
    if t.save_every_n_steps:
        args += ["--save_every_n_steps", str(t.save_every_n_steps)]
    if t.save_state:
        args += ["--save_state"]
    if t.cache_latents:
        args += ["--cache_latents"]
    if t.gradient_checkpointing:
        args += ["--gradient_checkpointing"]
    if t.tokenizer_cache_dir:
        args += ["--tokenizer_cache_dir", t.tokenizer_cache_dir]
    if steps is not None:
        args += ["--max_train_steps", str(steps)]
    elif epochs is not None:
        args += ["--max_train_epochs", str(epochs)]
    if resume is not None:
        # sd-scripts restarts its step counter after --resume (its issues #1999, #2248). Counting this run
        # from 0 makes --max_train_steps exact; the backend renames the outputs to their true step/epoch.
        args += ["--resume", str(resume), "--initial_step", "0"]
    return args + list(t.extra_args)


def text_encoder_lr_args(config: RunConfig) -> list[str]:
    """``--text_encoder_lr`` takes one value per text encoder (SDXL: two); unset ones follow the first."""
    t = config.training
    first = t.text_encoder_lr
    if config.family == "sdxl" and t.text_encoder_2_lr and t.text_encoder_2_lr != first:
        return ["--text_encoder_lr", _num(first or t.learning_rate), _num(t.text_encoder_2_lr)]
    return ["--text_encoder_lr", _num(first)] if first else []


def launcher(config: RunConfig, python: str, scripts_dir: str) -> list[str]:
    script = str(Path(scripts_dir) / script_name(config))
    if config.training.num_gpus > 1:
        return [python, "-m", "accelerate.commands.launch", "--num_processes", str(config.training.num_gpus),
                "--num_machines", "1", script]
    return [python, script]


def _num(x: float) -> str:
    return repr(float(x)) if not float(x).is_integer() else str(int(x)) if abs(x) >= 1 else repr(float(x))
