"""The base pipeline (SD 1.x or SDXL), loaded once per daemon, and batched sample generation with fixed seeds."""

from __future__ import annotations

import logging
import weakref
from dataclasses import dataclass

import numpy as np

from shared.config import Family
from shared.errors import EpochscopeError

log = logging.getLogger("epochscope.evaluator")


def pick_device(name: str) -> str:
    import torch

    if name in ("auto", ""):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise EpochscopeError(f"--device {name}: CUDA is not available on this machine (use cpu or auto)")
    return name


def pick_dtype(name: str, device: str):
    import torch

    if name == "auto":
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[name]


def load_pipeline(base: str, device: str, dtype, family: Family | None = None):
    """The base pipeline (``StableDiffusionPipeline`` or ``StableDiffusionXLPipeline``, by ``family`` or
    as told from the weights), loaded offline by ``shared.base_loading`` and frozen on ``device``."""
    import torch

    from shared.base_loading import load_base_pipeline

    if device.startswith("cuda"):
        _check_free_vram(device)
    pipe = load_base_pipeline(base, family, dtype)
    pipe.to(device)
    with torch.no_grad():
        for module in _frozen_modules(pipe):
            module.requires_grad_(False)
    return pipe


def _frozen_modules(pipe) -> list:
    names = ("unet", "text_encoder", "text_encoder_2", "vae")
    return [m for m in (getattr(pipe, n, None) for n in names) if m is not None]


def is_sdxl(pipe) -> bool:
    """An SDXL pipeline: two text encoders, size-conditioned UNet."""
    return getattr(pipe, "text_encoder_2", None) is not None


def _check_free_vram(device: str, need_bytes: int = 3 * 1024**3) -> None:
    import torch

    free, total = torch.cuda.mem_get_info(torch.device(device))
    if free < need_bytes:
        log.warning("only %.1f of %.1f GiB free on %s; generation will use small batches", free / 2**30,
                    total / 2**30, device)


def set_scheduler(pipe, name: str, v_prediction: bool = False) -> None:
    """``v_prediction``: the base predicts v (model.v_parameterization), which a single file's published
    config (epsilon) cannot say."""
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler

    cls = {"ddim": DDIMScheduler, "euler": EulerDiscreteScheduler, "dpmsolver": DPMSolverMultistepScheduler}[name]
    extra = {"prediction_type": "v_prediction"} if v_prediction else {}
    pipe.scheduler = cls.from_config(pipe.scheduler.config, **extra)


@dataclass(frozen=True)
class SizeConditioning:
    """SDXL's size and crop conditioning as the config states it (``evaluation.original_size`` and
    ``evaluation.crop_top_left``): the pretend source image's (width, height), None for the sample's own
    size, and the crop's (left, top). The target size is always the sample's size."""

    original_size: tuple[int, int] | None = None
    crop_top_left: tuple[int, int] = (0, 0)

    def for_sample(self, width: int, height: int) -> dict[str, tuple[int, int]]:
        """The ``SampleSpec`` fields, in diffusers' order: sizes (height, width), crop (top, left)."""
        ow, oh = self.original_size or (width, height)
        left, top = self.crop_top_left
        return {"original_size": (oh, ow), "target_size": (height, width), "crops_coords_top_left": (top, left)}


@dataclass(frozen=True)
class SampleSpec:
    """One sample: everything that decides its pixels besides the weights.

    ``original_size``, ``target_size`` and ``crops_coords_top_left`` are SDXL's size conditioning, None
    for SD 1.x; they are in the order ``StableDiffusionXLPipeline`` takes them: sizes (height, width), the
    crop (top, left)."""

    prompt: str
    seed: int
    negative_prompt: str
    steps: int
    guidance_scale: float
    width: int
    height: int
    original_size: tuple[int, int] | None = None
    target_size: tuple[int, int] | None = None
    crops_coords_top_left: tuple[int, int] | None = None

    def batch_key(self) -> tuple:
        return (self.steps, self.guidance_scale, self.width, self.height, self.original_size, self.target_size,
                self.crops_coords_top_left)

    def size_conditioning(self) -> dict | None:
        """SDXL's size conditioning with named axes, for metrics.json; None for SD 1.x samples."""
        if self.original_size is None or self.target_size is None or self.crops_coords_top_left is None:
            return None
        (oh, ow), (th, tw), (top, left) = self.original_size, self.target_size, self.crops_coords_top_left
        return {"original_size": {"width": ow, "height": oh}, "target_size": {"width": tw, "height": th},
                "crop_top_left": {"left": left, "top": top}}


@dataclass(frozen=True)
class GenerationSettings:
    """Every sample of a checkpoint, in order. Samples sharing steps, CFG, size (and for SDXL size
    conditioning) run in one batch."""

    samples: tuple[SampleSpec, ...]
    batch_size: int | None = None
    clip_skip: int | None = None  # SD 1.x only; SDXL always uses the penultimate layer

    @classmethod
    def uniform(cls, prompts: list[str], seeds: list[int], negative_prompt: str, steps: int, guidance_scale: float,
                resolution: int, batch_size: int | None = None, clip_skip: int | None = None,
                sdxl: SizeConditioning | None = None) -> "GenerationSettings":
        """Square samples of one size; ``sdxl``: the size conditioning of an SDXL base (None for SD 1.x)."""
        cond = sdxl.for_sample(resolution, resolution) if sdxl is not None else {}
        return cls(tuple(SampleSpec(p, s, negative_prompt, steps, guidance_scale, resolution, resolution, **cond)
                         for p, s in zip(prompts, seeds)), batch_size, clip_skip)

    @property
    def prompts(self) -> list[str]:
        return [s.prompt for s in self.samples]

    @property
    def seeds(self) -> list[int]:
        return [s.seed for s in self.samples]

    def describe(self) -> dict:
        first = self.samples[0]
        out = {"steps": first.steps, "guidance_scale": first.guidance_scale, "resolution": first.width,
               "seeds": self.seeds, "negative_prompt": first.negative_prompt, "clip_skip": self.clip_skip}
        sdxl = first.size_conditioning() is not None
        if sdxl:
            out["size_conditioning"] = first.size_conditioning()
        if any(s.batch_key() != first.batch_key() or s.negative_prompt != first.negative_prompt
               for s in self.samples):
            out["per_sample"] = [{"steps": s.steps, "guidance_scale": s.guidance_scale, "width": s.width,
                                  "height": s.height, "negative_prompt": s.negative_prompt,
                                  **({"size_conditioning": s.size_conditioning()} if sdxl else {})}
                                 for s in self.samples]
        return out


def _batches(settings: GenerationSettings) -> list[list[int]]:
    """Runs of consecutive samples with the same batch key, split to the batch size."""
    out: list[list[int]] = []
    for i, spec in enumerate(settings.samples):
        if out and settings.samples[out[-1][0]].batch_key() == spec.batch_key() and (
                settings.batch_size is None or len(out[-1]) < settings.batch_size):
            out[-1].append(i)
        else:
            out.append([i])
    return out


def _prompt_kwargs(pipe, specs: list[SampleSpec], clip_skip: int | None) -> dict:
    """Prompts as text, or as embeddings when clip_skip is set (diffusers' own clip_skip needs the
    transformers 4 module layout); SDXL's always as embeddings (``_sdxl_kwargs``)."""
    if is_sdxl(pipe):
        return _sdxl_kwargs(pipe, specs)
    if not clip_skip or clip_skip <= 1:
        return {"prompt": [s.prompt for s in specs], "negative_prompt": [s.negative_prompt for s in specs]}
    from shared.text_encoding import encode_prompts

    dtype = pipe.unet.dtype
    embed = lambda texts: encode_prompts(pipe.tokenizer, pipe.text_encoder, texts, clip_skip,  # noqa: E731
                                         pipe.text_encoder.device).to(dtype)
    return {"prompt_embeds": embed([s.prompt for s in specs]),
            "negative_prompt_embeds": embed([s.negative_prompt for s in specs])}


def _sdxl_kwargs(pipe, specs: list[SampleSpec]) -> dict:
    """SDXL prompt embeddings (``shared.text_encoding.encode_prompts_sdxl``, the trainer's) and the batch's
    size conditioning, the same for the negative branch. An empty negative prompt is all zeros when the
    model asks for it (``force_zeros_for_empty_prompt``, as SDXL base does), per sample, so a sample's
    image does not depend on its batch."""
    import torch

    from shared.text_encoding import encode_prompts_sdxl

    tokenizers, encoders = (pipe.tokenizer, pipe.tokenizer_2), (pipe.text_encoder, pipe.text_encoder_2)
    device, dtype = pipe.text_encoder_2.device, pipe.unet.dtype
    embeds, pooled = encode_prompts_sdxl(tokenizers, encoders, [s.prompt for s in specs], device)
    neg, neg_pooled = encode_prompts_sdxl(tokenizers, encoders, [s.negative_prompt for s in specs], device)
    if getattr(pipe.config, "force_zeros_for_empty_prompt", False):
        keep = torch.tensor([bool(s.negative_prompt) for s in specs], device=neg.device)
        neg, neg_pooled = neg * keep[:, None, None].to(neg.dtype), neg_pooled * keep[:, None].to(neg_pooled.dtype)
    first = specs[0]
    return {"prompt_embeds": embeds.to(dtype), "pooled_prompt_embeds": pooled.to(dtype),
            "negative_prompt_embeds": neg.to(dtype), "negative_pooled_prompt_embeds": neg_pooled.to(dtype),
            "original_size": first.original_size, "target_size": first.target_size,
            "crops_coords_top_left": first.crops_coords_top_left or (0, 0),
            "negative_original_size": first.original_size, "negative_target_size": first.target_size,
            "negative_crops_coords_top_left": first.crops_coords_top_left or (0, 0)}


#: Per loaded pipeline, the batch size that fitted in GPU memory, per batch key (learned from OOMs).
_BATCH_LIMITS: "weakref.WeakKeyDictionary[object, dict[tuple, int]]" = weakref.WeakKeyDictionary()


def _within_limits(batches: list[list[int]], settings: GenerationSettings, limits: dict[tuple, int]) -> list[list[int]]:
    """``batches`` split to the batch sizes that fitted in GPU memory before (per batch key)."""
    out: list[list[int]] = []
    for idx in batches:
        limit = limits.get(settings.samples[idx[0]].batch_key(), len(idx))
        out += [idx[i:i + limit] for i in range(0, len(idx), limit)]
    return out


def generate(pipe, settings: GenerationSettings) -> tuple[list[np.ndarray], list[bool]]:
    """All samples in as few batches as memory allows. On CUDA OOM the batch is halved and retried, and the
    pipeline remembers the size that fitted, so later checkpoints do not run out of memory again first.
    Sample i's noise comes from its own CPU generator seeded with its seed, so it is the same in any batch."""
    import torch

    images: list[np.ndarray | None] = [None] * len(settings.samples)
    nsfw: list[bool] = [False] * len(settings.samples)
    limits = _BATCH_LIMITS.setdefault(pipe, {})
    pending = _batches(settings)
    while pending:
        idx, *rest = _within_limits([pending.pop(0)], settings, limits)
        pending[:0] = rest
        specs = [settings.samples[i] for i in idx]
        first = specs[0]
        try:
            with torch.no_grad():
                out = pipe(**_prompt_kwargs(pipe, specs, settings.clip_skip), num_inference_steps=first.steps,
                           guidance_scale=first.guidance_scale, height=first.height, width=first.width,
                           generator=[torch.Generator("cpu").manual_seed(s.seed) for s in specs], output_type="np")
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            if len(idx) == 1:
                raise EpochscopeError("out of GPU memory even with batch size 1") from None
            half = (len(idx) + 1) // 2
            limits[first.batch_key()] = half
            log.warning("out of GPU memory with %d images a batch: %d from now on", len(idx), half)
            pending[:0] = [idx[:half], idx[half:]]
            continue
        flags = getattr(out, "nsfw_content_detected", None) or [False] * len(idx)
        for i, im, flag in zip(idx, out.images, flags):
            images[i], nsfw[i] = np.asarray(im, np.float32), bool(flag)
    return [im for im in images if im is not None], nsfw
