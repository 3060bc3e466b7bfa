"""Score one checkpoint (or the baseline): swap the LoRA in, generate with fixed seeds, measure,
and write samples, metrics.json, the summary and TensorBoard. Plain functions of their inputs, so
they are tested without the watcher."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from evaluator import summary as summaries
from evaluator.gpu_sharing import trainer_paused
from evaluator.lora_swap import LoraSwapper
from evaluator.metrics import (
    SCORE_RULE,
    ClipEncoder,
    ReferenceSet,
    SampleSet,
    compute_metrics,
    load_image,
    prepare_references,
    prepare_samples,
)
from evaluator.pipeline import generate, load_pipeline, pick_dtype, set_scheduler
from evaluator.settings import TrialSettings
from evaluator.tensorboard_log import log_checkpoint
from shared.errors import EpochscopeError
from shared.jsonio import atomic_write_bytes, read_model, write_model
from shared.records import CheckpointMetrics, Fingerprint, Sample
from shared.trial import BASELINE, Trial, sample_filename

log = logging.getLogger("epochscope.evaluator")


@dataclass
class Models:
    """The base pipeline and CLIP encoder, loaded once and shared by every trial that uses them."""

    key: tuple
    pipe: object
    swapper: LoraSwapper
    encoder: ClipEncoder
    device: str

    @classmethod
    def load(cls, settings: TrialSettings, device: str, dtype_name: str = "auto") -> "Models":
        t0 = time.monotonic()
        dtype = pick_dtype(dtype_name, device)
        pipe = load_pipeline(settings.base, device, dtype)
        encoder = ClipEncoder.load(settings.clip_model, settings.clip_pretrained, device=device)
        log.info("loaded %s and CLIP %s on %s in %.1f s", settings.base, encoder.name, device, time.monotonic() - t0)
        return cls(settings.model_key(), pipe, LoraSwapper(pipe.unet, pipe.text_encoder), encoder, device)


@dataclass
class TrialContext:
    """Per-trial cached work: references embedded once, baseline and recent samples kept in memory."""

    trial: Trial
    settings: TrialSettings
    references: ReferenceSet | None = None
    baseline: SampleSet | None = None
    samples_cache: dict[str, SampleSet] = field(default_factory=dict)
    stop_requested: bool = False

    def ensure_references(self, encoder: ClipEncoder) -> ReferenceSet | None:
        if self.references is None and self.settings.references:
            self.references = prepare_references([load_image(p) for p in self.settings.references], encoder)
        return self.references

    def saved_samples(self, name: str, encoder: ClipEncoder) -> SampleSet | None:
        """A scored checkpoint's samples, rebuilt from its PNGs (after a restart too)."""
        if name in self.samples_cache:
            return self.samples_cache[name]
        folder = self.trial.baseline_dir if name == BASELINE else self.trial.checkpoint_eval_dir(name)
        try:
            record = read_model(folder / "metrics.json", CheckpointMetrics)
            images = [load_image(folder / s.file) if not s.failed else np.full((1, 1, 3), np.nan, np.float32)
                      for s in record.samples]
        except EpochscopeError:
            return None
        samples = prepare_samples(images, [s.prompt for s in record.samples], [s.seed for s in record.samples],
                                  encoder)
        self.samples_cache[name] = samples
        return samples


def as_saved(image: np.ndarray) -> np.ndarray:
    """What the PNG will hold: metrics see exactly what a restart would reload. Failed images keep NaN."""
    if not np.isfinite(image).all():
        return image
    return np.round(np.clip(image, 0, 1) * 255) / 255


def write_png(path: Path, image: np.ndarray) -> None:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray((np.nan_to_num(np.clip(image, 0, 1)) * 255).round().astype(np.uint8)).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


def score(models: Models, ctx: TrialContext, name: str, lora: Path | None, fp: Fingerprint | None,
          epoch: int | None, step: int | None, previous: str | None) -> CheckpointMetrics:
    """Generate and measure one checkpoint (``lora=None``: the baseline) and write every output."""
    timings: dict[str, float] = {}
    t0 = time.monotonic()
    set_scheduler(models.pipe, ctx.settings.scheduler)
    gen = ctx.settings.generation
    with trainer_paused(ctx.trial, ctx.settings.gpu_sharing):
        if lora is None:
            images, nsfw = generate(models.pipe, gen)
        else:
            with models.swapper.applied(lora, ctx.settings.lora_scale):
                timings["swap"] = time.monotonic() - t0
                images, nsfw = generate(models.pipe, gen)
    timings["generate"] = time.monotonic() - t0 - timings.get("swap", 0.0)
    t1 = time.monotonic()
    images = [as_saved(im) for im in images]
    samples = prepare_samples(images, gen.prompts, gen.seeds, models.encoder, nsfw)
    refs = ctx.ensure_references(models.encoder)
    baseline = None if lora is None else ctx.baseline or ctx.saved_samples(BASELINE, models.encoder)
    prev = ctx.saved_samples(previous, models.encoder) if previous else None
    metrics = compute_metrics(samples, refs, baseline=baseline, previous=prev)
    timings["metrics"] = time.monotonic() - t1

    folder = ctx.trial.baseline_dir if lora is None else ctx.trial.checkpoint_eval_dir(name)
    records = []
    for i, (im, prompt, seed, failed) in enumerate(zip(images, gen.prompts, gen.seeds, samples.failures)):
        write_png(folder / sample_filename(i), im)
        records.append(Sample(file=sample_filename(i), prompt=prompt, seed=seed, failed=failed))
    timings["total"] = time.monotonic() - t0
    result = CheckpointMetrics(
        checkpoint=name, file=lora.name if lora else None, fingerprint=fp, epoch=epoch, step=step, metrics=metrics,
        samples=records, encoder=models.encoder.name, num_samples=len(images),
        num_references=len(refs.images) if refs else 0,
        generation={**gen.describe(), "scheduler": ctx.settings.scheduler, "device": models.device,
                    "lora_scale": ctx.settings.lora_scale, "previous_checkpoint": previous},
        timings=timings)
    write_model(folder / "metrics.json", result)
    if lora is None:
        ctx.baseline = samples
    else:
        ctx.samples_cache = {k: v for k, v in ctx.samples_cache.items() if k == previous}
        ctx.samples_cache[name] = samples
    summaries.record(ctx.trial, result, SCORE_RULE, baseline=lora is None)
    try:
        log_checkpoint(ctx.trial, step or 0, metrics, images, "baseline" if lora is None else "checkpoint")
    except Exception as e:  # noqa: BLE001 - TensorBoard must never cost a result
        log.warning("TensorBoard logging failed: %s", e)
    return result
