"""What to evaluate with, per trial: read from the trial's params.json, with CLI overrides."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from evaluator.pipeline import GenerationSettings
from shared.config import RunConfig
from shared.demo_assets import resolve_demo
from shared.errors import EpochscopeError

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

    def model_key(self) -> tuple[str, str, str | None]:
        """Trials that share these share the loaded models."""
        return (self.base, self.clip_model, self.clip_pretrained)


def _images_with_captions(folder: Path, caption_extension: str) -> list[tuple[Path, str | None]]:
    out = []
    for p in sorted(folder.rglob("*")):
        if p.suffix.lower() in IMAGE_SUFFIXES:
            cap = p.with_suffix(caption_extension)
            out.append((p, cap.read_text(encoding="utf-8").strip() if cap.exists() else None))
    return out


def read_prompt_file(path: Path) -> list[str]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise EpochscopeError(f"evaluation.prompt_file {path}: {e.strerror}") from None
    return [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]


def settings_for(config: RunConfig, overrides: Overrides = Overrides()) -> TrialSettings:
    ev = config.evaluation
    ref_dir = ev.references_dir or config.dataset.validation_dir
    refs: list[tuple[Path, str | None]] = []
    if ref_dir:
        folder = Path(resolve_demo(ref_dir))
        if not folder.is_dir():
            raise EpochscopeError(f"evaluation references folder {folder} does not exist")
        refs = _images_with_captions(folder, config.dataset.caption_extension)
    prompts = list(ev.prompts)
    if not prompts and ev.prompt_file:
        prompts = read_prompt_file(Path(ev.prompt_file))
    if not prompts:
        prompts = sorted({c for _, c in refs if c})
    if not prompts:
        raise EpochscopeError("no evaluation prompts: set evaluation.prompts, evaluation.prompt_file, or a "
                              "dataset.validation_dir with caption files")
    n = overrides.num_samples or ev.num_samples
    return TrialSettings(
        base=config.model.base, output_name=config.output.name,
        generation=GenerationSettings(prompts=[prompts[i % len(prompts)] for i in range(n)],
                                      seeds=[ev.seed + i for i in range(n)], negative_prompt=ev.negative_prompt,
                                      steps=overrides.steps or ev.steps, guidance_scale=ev.guidance_scale,
                                      resolution=config.evaluation_resolution(), batch_size=ev.batch_size),
        scheduler=ev.scheduler,
        references=[p for p, _ in refs], clip_model=ev.clip_model, clip_pretrained=ev.clip_pretrained,
        lora_scale=ev.lora_scale, gpu_sharing=overrides.gpu_sharing or ev.gpu_sharing,
        early_stop_enabled=ev.early_stop.enabled, patience=ev.early_stop.patience,
        min_delta=ev.early_stop.min_delta, min_checkpoints=ev.early_stop.min_checkpoints)
