"""Score one checkpoint (or the baseline): swap the LoRA in, generate with fixed seeds and measure
(``score``), then write samples, metrics.json, the summary and TensorBoard (``write_outputs``; the daemon
runs it on its background writer). Plain functions of their inputs, so they are tested without the
watcher."""

from __future__ import annotations

import logging
import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from evaluator import summary as summaries
from evaluator.acceleration import Acceleration, accelerate
from evaluator.gpu_sharing import trainer_paused
from evaluator.lora_swap import LoraSwapper
from evaluator.metrics import (
    SCORE_RULE,
    ClipEncoder,
    DinoEncoder,
    ReferenceSet,
    SampleSet,
    TrainingSet,
    compute_metrics,
    load_image,
    prepare_references,
    prepare_samples,
    prepare_training,
    sample_copies,
)
from evaluator.metrics.evidence import overlap_warnings, result_notes
from evaluator.pipeline import generate, load_pipeline, pick_dtype, set_scheduler
from evaluator.settings import TrialSettings
from evaluator.tensorboard_log import encode_grid, log_checkpoint
from shared.errors import EpochscopeError
from shared.jsonio import atomic_write_bytes, read_model, write_model
from shared.records import DIVERGED, CheckpointMetrics, Fingerprint, Sample
from shared.trial import BASELINE, Trial, sample_filename

log = logging.getLogger("epochscope.evaluator")
# Threads that encode sample PNGs (zlib releases the GIL) and write them: one per sample up to 8, as many as
# this process may use. A 512 px PNG takes 25-110 ms to encode; 8 of them one after another were a third
# of a plain GPU generation.
PNG_THREADS = max(1, min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 2))
_encoding: ThreadPoolExecutor | None = None
_encoding_lock = threading.Lock()


def _encoding_pool() -> ThreadPoolExecutor:
    """The process's PNG encoding threads, started on first use and kept (score runs once per checkpoint)."""
    global _encoding
    with _encoding_lock:
        if _encoding is None:
            _encoding = ThreadPoolExecutor(max_workers=PNG_THREADS, thread_name_prefix="epochscope-png")
        return _encoding


@dataclass
class Models:
    """The base pipeline and CLIP encoder, loaded once and shared by every trial that uses them."""

    key: tuple
    pipe: object
    swapper: LoraSwapper
    encoder: ClipEncoder
    device: str
    dino: DinoEncoder | None = None
    acceleration: Acceleration = field(default_factory=Acceleration)

    @classmethod
    def load(cls, settings: TrialSettings, device: str, dtype_name: str = "auto", compile: bool = False) -> "Models":
        """Load the pipeline and encoders; ``compile``: ``evaluation.compile`` (see evaluator.acceleration)."""
        t0 = time.monotonic()
        dtype = pick_dtype(dtype_name, device)
        pipe = load_pipeline(settings.base, device, dtype, family=settings.family)
        acceleration = accelerate(pipe, device, compile)
        # CLIP in the pipeline's dtype: half the memory traffic on a GPU; its values move by at most ~1e-3
        # (bf16) from fp32's (tests/test_metrics_encoder.py states the tolerance).
        encoder = ClipEncoder.load(settings.clip_model, settings.clip_pretrained, device=device, dtype=dtype)
        dino = DinoEncoder.load(settings.dino_model, settings.dino_pretrained, device) if settings.dino_model else None
        log.info("loaded %s and CLIP %s%s on %s in %.1f s (acceleration: %s)", settings.base, encoder.name,
                 f" and DINO {dino.name}" if dino else "", device, time.monotonic() - t0, acceleration.describe())
        models = cls(settings.model_key(), pipe, LoraSwapper.for_pipeline(pipe), encoder, device, dino)
        models.acceleration = acceleration
        return models


@dataclass
class TrialContext:
    """Per-trial cached work: references embedded once, baseline and recent samples kept in memory."""

    trial: Trial
    settings: TrialSettings
    references: ReferenceSet | None = None
    training: TrainingSet | None = None
    overlap: list[str] | None = None  # references that are near-duplicates of training images
    baseline: SampleSet | None = None
    samples_cache: dict[str, SampleSet] = field(default_factory=dict)
    stop_requested: bool = False
    unreadable: list[str] = field(default_factory=list)  # references / training images left out
    prepared: set[str] = field(default_factory=set)  # "references", "training": read once per trial

    def ensure_references(self, encoder: ClipEncoder, dino: DinoEncoder | None = None) -> ReferenceSet | None:
        if self.references is None and self.settings.references and "references" not in self.prepared:
            images, paths = self._readable(self.settings.references, "reference")
            if images:
                self.references = prepare_references(images, encoder, [p.name for p in paths], dino)
            self.prepared.add("references")
        return self.references

    def _readable(self, paths: list[Path], what: str) -> tuple[list[np.ndarray], list[Path]]:
        """The images that can be read; each unreadable one is logged once and left out, so that one bad file
        among the references or training images is not blamed on every checkpoint."""
        images, kept = [], []
        for path in paths:
            try:
                images.append(load_image(path))
                kept.append(path)
            except EpochscopeError as e:
                if str(path) in self.unreadable:  # already said (an earlier attempt failed later on)
                    continue
                self.unreadable.append(str(path))
                log.error("%s: %s left out: %s (fix it, then `evaluator run --force` scores every checkpoint again with it)",
                          self.trial.name, what, e)
        return images, kept

    def ensure_training(self, encoder: ClipEncoder, dino: DinoEncoder | None = None) -> TrainingSet | None:
        """The training images, embedded once per trial; the first time, references that duplicate them
        are logged as a warning (and kept in ``overlap`` for the notes)."""
        if self.training is None and self.settings.training and "training" not in self.prepared:
            t0 = time.monotonic()
            root = _common_root(self.settings.training)
            images, paths = self._readable(self.settings.training, "training image")
            if images:
                self.training = prepare_training(images, [str(p.relative_to(root)) for p in paths], encoder, dino)
            self.prepared.add("training")
            log.info("%s: %d training images prepared for the memorisation check in %.1f s", self.trial.name,
                     len(paths), time.monotonic() - t0)
        if self.overlap is None:
            self.overlap = overlap_warnings(self.ensure_references(encoder, dino), self.training, encoder.name)
            for w in self.overlap:
                log.warning("%s: %s", self.trial.name, w)
        return self.training

    @property
    def notes(self) -> list[str]:
        """Weak-evidence notes for metrics.json, the summary and the report."""
        left_out = set(self.unreadable)
        return result_notes(sum(str(p) not in left_out for p in self.settings.references),
                            sum(str(p) not in left_out for p in self.settings.training), self.overlap or ())

    def saved_samples(self, name: str, encoder: ClipEncoder, dino: DinoEncoder | None = None) -> SampleSet | None:
        """A scored version's samples (``name``: its results folder), rebuilt from its PNGs after a restart."""
        if name in self.samples_cache:
            return self.samples_cache[name]
        folder = self.trial.evaluations_dir / name  # a results folder name: baseline or <stem>@<sha>
        try:
            record = read_model(folder / "metrics.json", CheckpointMetrics)
            images = [load_image(folder / s.file) if not s.failed else np.full((1, 1, 3), np.nan, np.float32)
                      for s in record.samples]
        except EpochscopeError:
            return None
        samples = prepare_samples(images, [s.prompt for s in record.samples], [s.seed for s in record.samples],
                                  encoder, failures=[s.failed for s in record.samples], dino=dino)
        self.samples_cache[name] = samples
        return samples


def _common_root(paths) -> Path:
    import os

    return Path(os.path.commonpath([str(p.parent) for p in paths]))


def remove_stale_samples(folder: Path, keep: int) -> list[Path]:
    """Delete sample_NN.png files with NN >= keep (left by an earlier scoring with more samples)."""
    removed = []
    for p in sorted(folder.glob("sample_*.png")):
        stem = p.stem.split("_", 1)[1]
        if stem.isdigit() and int(stem) >= keep:
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def as_saved(image: np.ndarray) -> np.ndarray:
    """What the PNG will hold: metrics see exactly what a restart would reload. Failed images keep NaN."""
    if not np.isfinite(image).all():
        return image
    return np.round(np.clip(image, 0, 1) * 255) / 255


def png_bytes(image: np.ndarray) -> bytes:
    """A sample as the PNG file that holds it (8 bits; NaN as black)."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray((np.nan_to_num(np.clip(image, 0, 1)) * 255).round().astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


@dataclass
class Scored:
    """A version generated and measured, its files not yet written (``write_outputs`` writes them).

    ``result`` is what metrics.json will hold; the daemon decides with it at once (the log line, early
    stop) while a background writer writes the files."""

    result: CheckpointMetrics
    trial: Trial
    folder: Path
    baseline: bool
    images: list[np.ndarray]
    failures: list[str | None]
    pngs: list[Future]  # each sample's PNG bytes, encoded from the moment it was generated
    grid: Future  # the TensorBoard grid (EncodedGrid), encoded once the failures were known

    @property
    def metrics(self):
        return self.result.metrics

    @property
    def timings(self) -> dict[str, float]:
        return self.result.timings

    @property
    def files(self) -> list[Path]:
        """Every file of this version, in the order ``write_outputs`` writes them."""
        return [self.folder / s.file for s in self.result.samples] + [self.folder / "metrics.json"]


class OutputError(EpochscopeError):
    """Writing one of a version's files failed; the message names the file."""


def score(models: Models, ctx: TrialContext, name: str, lora: Path | None, fp: Fingerprint | None,
          epoch: int | None, step: int | None, previous: str | None) -> Scored:
    """Generate and measure one checkpoint (``lora=None``: the baseline); ``write_outputs`` writes its files.

    ``previous`` is the results folder of the checkpoint scored just before this one in training order.
    The trial's in-memory caches (baseline and recent samples) are updated here, so the next checkpoint
    can be measured against this one before its files are on disk."""
    timings: dict[str, float] = {}
    t0 = time.monotonic()
    set_scheduler(models.pipe, ctx.settings.scheduler, ctx.settings.v_prediction)
    gen = ctx.settings.generation
    with trainer_paused(ctx.trial, ctx.settings.gpu_sharing, models.device):
        if lora is None:
            images, nsfw = generate(models.pipe, gen)
        else:
            with models.swapper.applied(lora, ctx.settings.lora_scale):
                timings["swap"] = time.monotonic() - t0
                if models.swapper.last_nonfinite:  # every sample would be NaN: not worth the GPU's time
                    images = [np.full((spec.height, spec.width, 3), np.nan, np.float32) for spec in gen.samples]
                    nsfw = [False] * len(images)
                else:
                    images, nsfw = generate(models.pipe, gen)
    timings["generate"] = time.monotonic() - t0 - timings.get("swap", 0.0)
    t1 = time.monotonic()
    images = [as_saved(im) for im in images]
    pool = _encoding_pool()  # the files' slowest part, beside the metrics instead of after them
    pngs = [pool.submit(png_bytes, im) for im in images]
    folder = ctx.trial.baseline_dir if lora is None else ctx.trial.checkpoint_eval_dir(name, fp.short if fp else None)
    samples = prepare_samples(images, gen.prompts, gen.seeds, models.encoder, nsfw, dino=models.dino)
    grid = pool.submit(encode_grid, images, list(samples.failures))
    refs = ctx.ensure_references(models.encoder, models.dino)
    training = ctx.ensure_training(models.encoder, models.dino)
    baseline = None if lora is None else ctx.baseline or ctx.saved_samples(BASELINE, models.encoder, models.dino)
    prev = ctx.saved_samples(previous, models.encoder, models.dino) if previous else None
    copies = sample_copies(samples, refs, training)
    metrics = compute_metrics(samples, refs, baseline=baseline, previous=prev, training=training, copies=copies)
    timings["metrics"] = time.monotonic() - t1
    records = [Sample(file=sample_filename(i), prompt=prompt, seed=seed, failed=failed, copy_of=copies[i])
               for i, (prompt, seed, failed) in enumerate(zip(gen.prompts, gen.seeds, samples.failures))]
    timings["total"] = time.monotonic() - t0
    result = CheckpointMetrics(
        checkpoint=name, file=lora.name if lora else None, fingerprint=fp, epoch=epoch, step=step, metrics=metrics,
        samples=records, encoder=models.encoder.name, num_samples=len(images),
        num_references=len(refs.images) if refs else 0,
        num_training_images=len(training.names) if training else 0, notes=ctx.notes + _diverged_note(models, lora),
        generation={**gen.describe(), "scheduler": ctx.settings.scheduler, "device": models.device,
                    "dtype": str(models.pipe.unet.dtype).removeprefix("torch."),
                    "clip_dtype": str(models.encoder.dtype).removeprefix("torch."),
                    "lora_scale": ctx.settings.lora_scale, "previous_checkpoint": previous,
                    "network": models.swapper.last_description if lora else None},
        timings=timings)
    if lora is None:
        ctx.baseline = samples
    else:
        ctx.samples_cache = {k: v for k, v in ctx.samples_cache.items() if k == previous}
        ctx.samples_cache[folder.name] = samples
    return Scored(result, ctx.trial, folder, lora is None, images, list(samples.failures), pngs, grid)


def _diverged_note(models: Models, lora: Path | None) -> list[str]:
    found = models.swapper.last_nonfinite if lora is not None else None
    if not found:
        return []
    return [f"{DIVERGED}{found.describe(lora)}; its samples were not generated (each would be NaN) "
            "and count as failed"]


def write_outputs(scored: Scored) -> None:
    """Write a scored version's files: sample PNGs (already encoded by ``score``; written in threads, each
    atomically), then metrics.json, the summary row and TensorBoard, each atomically. Every sample file is on
    disk before metrics.json, and metrics.json before the summary points at it. A failing write raises
    ``OutputError`` naming the file; TensorBoard only logs a warning (it must never cost a result)."""
    t0 = time.monotonic()
    folder, result = scored.folder, scored.result
    with ThreadPoolExecutor(max_workers=PNG_THREADS, thread_name_prefix="epochscope-write") as pool:  # fsyncs
        pngs = [(folder / s.file, pool.submit(lambda p, f: atomic_write_bytes(p, f.result()), folder / s.file, png))
                for s, png in zip(result.samples, scored.pngs)]
    for path, f in pngs:
        _named(path, f.result)
    _named(folder, lambda: remove_stale_samples(folder, len(scored.images)))  # fewer samples than before
    result.timings["write"] = time.monotonic() - t0
    _named(folder / "metrics.json", lambda: write_model(folder / "metrics.json", result))
    _named(scored.trial.evaluation_summary_path,
           lambda: summaries.record(scored.trial, result, SCORE_RULE, baseline=scored.baseline,
                                    results_dir=folder.name))
    try:
        log_checkpoint(scored.trial, tensorboard_step(result), result.metrics, scored.images,
                       "baseline" if scored.baseline else "checkpoint", failures=scored.failures,
                       grid=scored.grid.result())
    except Exception as e:  # noqa: BLE001 - TensorBoard must never cost a result
        log.warning("TensorBoard logging failed: %s", e)


def tensorboard_step(result: CheckpointMetrics) -> int:
    """The x of a version's TensorBoard points: its training step, else its epoch (files without metadata,
    scored from a folder), else 0 (the baseline) - never 0 for every checkpoint, which would make each one
    replace the last."""
    if result.step is not None:
        return result.step
    return result.epoch if result.epoch is not None else 0


def _named(path: Path, write) -> None:
    """Run ``write``; an OS error becomes an ``OutputError`` that names ``path``."""
    try:
        write()
    except OSError as e:
        raise OutputError(f"could not write {path}: {e.strerror or e}") from e
