"""What to evaluate with, per trial: read from the trial's params.json, with CLI overrides."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from evaluator.pipeline import GenerationSettings, SampleSpec, SizeConditioning
from shared.config import Family, RunConfig
from shared.demo_assets import resolve_demo
from shared.errors import EpochscopeError
from shared.model_family import family_of_base
from shared.sample_prompts import PromptLine, read_prompt_file

log = logging.getLogger("epochscope.evaluator")

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}


@dataclass(frozen=True)
class Overrides:
    num_samples: int | None = None
    steps: int | None = None
    device: str | None = None
    gpu_sharing: str | None = None


@dataclass(frozen=True)
class TrialSettings:
    base: str
    output_name: str
    generation: GenerationSettings
    scheduler: str
    references: list[Path]
    clip_model: str
    clip_pretrained: str | None
    lora_scale: float
    gpu_sharing: str
    early_stop_enabled: bool
    patience: int
    min_delta: float
    min_checkpoints: int
    training: tuple[Path, ...] = ()  # dataset.train_dir images: memorisation is checked against them
    dino_model: str | None = None
    dino_pretrained: str | None = None
    family: str = "sd1"  # model.family: "sd1" or "sdxl" (set, or told from the weights by load_config)
    v_prediction: bool = False  # model.v_parameterization: the sampler must be told, whatever the base's config says
    device: str = "auto"
    dtype: str = "auto"
    compile: bool = False

    def model_key(self) -> tuple[str, str, str | None, str | None, str | None]:
        """Trials that share these share the loaded models."""
        return (self.base, self.clip_model, self.clip_pretrained, self.dino_model, self.dino_pretrained)


def _images_with_captions(folder: Path, caption_extension: str) -> list[tuple[Path, str | None]]:
    out = []
    for p in sorted(folder.rglob("*")):
        if p.suffix.lower() in IMAGE_SUFFIXES:
            cap = p.with_suffix(caption_extension)
            out.append((p, cap.read_text(encoding="utf-8").strip() if cap.exists() else None))
    return out


def _generation(config: RunConfig, overrides: Overrides) -> GenerationSettings:
    """Prompts from evaluation.prompts, else evaluation.prompt_file (sd-scripts' sample-prompt format,
    per-line options honoured), else the validation captions; cycled to num_samples, seed + i each. For
    an SDXL base each sample also carries the size conditioning (target size: its own size)."""
    ev = config.evaluation
    lines = [PromptLine(p) for p in ev.prompts]
    if not lines and ev.prompt_file:
        lines = read_prompt_file(Path(ev.prompt_file))
        for line in lines:
            if line.ignored or line.sampler:
                log.warning("%s: %r: options %s are not used by the evaluator (it samples with evaluation.scheduler)",
                            ev.prompt_file, line.prompt[:40], ", ".join(line.ignored + ((f"--ss {line.sampler}",)
                                                                                     if line.sampler else ())))
    if not lines:
        lines = [PromptLine(c) for c in _validation_captions(config)]
    if not lines:
        raise EpochscopeError("no evaluation prompts: set evaluation.prompts, evaluation.prompt_file, or a "
                              "dataset.validation_dir with caption files")
    n = overrides.num_samples if overrides.num_samples is not None else ev.num_samples
    size = config.evaluation_resolution()  # evaluation.resolution, else dataset.resolution (512 sd1, 1024 sdxl)
    sdxl = SizeConditioning(ev.original_size, ev.crop_top_left) if family_of(config) == "sdxl" else None
    steps = overrides.steps
    samples = []
    for i in range(n):
        line, cycle = lines[i % len(lines)], i // len(lines)
        width, height = line.width or size, line.height or size
        samples.append(SampleSpec(
            prompt=line.prompt, seed=(line.seed + cycle) if line.seed is not None else ev.seed + i,
            negative_prompt=line.negative_prompt if line.negative_prompt is not None else ev.negative_prompt,
            steps=steps or line.steps or ev.steps,
            guidance_scale=line.guidance_scale if line.guidance_scale is not None else ev.guidance_scale,
            width=width, height=height, **(sdxl.for_sample(width, height) if sdxl else {})))
    return GenerationSettings(tuple(samples), ev.batch_size, config.model.clip_skip)


def _validation_captions(config: RunConfig) -> list[str]:
    ref_dir = config.evaluation.references_dir or config.dataset.validation_dir
    if not ref_dir or not Path(resolve_demo(ref_dir)).is_dir():
        return []
    return sorted({c for _, c in _images_with_captions(Path(resolve_demo(ref_dir)), config.dataset.caption_extension)
                   if c})


def settings_for(config: RunConfig, overrides: Overrides = Overrides()) -> TrialSettings:
    ev = config.evaluation
    ref_dir = ev.references_dir or config.dataset.validation_dir
    refs: list[tuple[Path, str | None]] = []
    if ref_dir:
        folder = Path(resolve_demo(ref_dir))
        if not folder.is_dir():
            raise EpochscopeError(f"evaluation references folder {folder} does not exist")
        refs = _images_with_captions(folder, config.dataset.caption_extension)
    return TrialSettings(
        base=config.model.base, output_name=config.output.name,
        generation=_generation(config, overrides),
        scheduler=ev.scheduler,
        references=[p for p, _ in refs], clip_model=ev.clip_model, clip_pretrained=ev.clip_pretrained,
        lora_scale=ev.lora_scale, gpu_sharing=overrides.gpu_sharing or ev.gpu_sharing,
        early_stop_enabled=ev.early_stop.enabled, patience=ev.early_stop.patience,
        min_delta=ev.early_stop.min_delta, min_checkpoints=ev.early_stop.min_checkpoints,
        training=tuple(training_images(config)), dino_model=ev.dino_model, dino_pretrained=ev.dino_pretrained,
        family=family_of(config), v_prediction=config.model.v_parameterization,
        device=overrides.device or ev.device, dtype=ev.dtype, compile=ev.compile)


def family_of(config: RunConfig) -> Family:
    """``model.family``, else told from the weights (a config read without ``load_config``, such as an
    older params.json, may leave it unset), else SD 1.x."""
    return config.model.family or family_of_base(config.model.base) or "sd1"


def training_images(config: RunConfig) -> list[Path]:
    """Every image under dataset.train_dir (kohya N_concept/ folders), sorted; [] when it is unset or
    missing (e.g. an sd-scripts dataset_config): memorisation is then checked against references only."""
    if not config.dataset.train_dir:
        return []
    folder = Path(resolve_demo(config.dataset.train_dir))
    if not folder.is_dir():
        return []
    return [p for p in sorted(folder.rglob("*")) if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
