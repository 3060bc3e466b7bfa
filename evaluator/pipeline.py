"""The base Stable Diffusion pipeline, loaded once per daemon, and batched sample generation."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shared.demo_assets import resolve_demo
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


def load_pipeline(base: str, device: str, dtype):
    """A diffusers folder or a single-file .safetensors checkpoint, offline, with DDIM-ready config."""
    import torch
    from diffusers import StableDiffusionPipeline

    path = Path(resolve_demo(base))
    if device.startswith("cuda"):
        _check_free_vram(device)
    try:
        if path.is_dir():
            pipe = StableDiffusionPipeline.from_pretrained(path, dtype=dtype, local_files_only=True)
        elif path.is_file() and path.suffix == ".safetensors":
            pipe = StableDiffusionPipeline.from_single_file(str(path), dtype=dtype, local_files_only=True)
        elif path.is_file():
            raise EpochscopeError(f"model.base {path}: only .safetensors or diffusers folders are loaded "
                                  "(pickle checkpoints are never unpickled)")
        else:
            raise EpochscopeError(f"model.base {base!r} not found")
    except EpochscopeError:
        raise
    except Exception as e:  # noqa: BLE001
        raise EpochscopeError(f"model.base {path}: cannot load the pipeline offline: {type(e).__name__}: {e}") from None
    pipe.set_progress_bar_config(disable=True)
    pipe.to(device)
    with torch.no_grad():
        for module in (pipe.unet, pipe.text_encoder, pipe.vae):
            module.requires_grad_(False)
    return pipe


def _check_free_vram(device: str, need_bytes: int = 3 * 1024**3) -> None:
    import torch

    free, total = torch.cuda.mem_get_info(torch.device(device))
    if free < need_bytes:
        log.warning("only %.1f of %.1f GiB free on %s; generation will use small batches", free / 2**30,
                    total / 2**30, device)


def set_scheduler(pipe, name: str) -> None:
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler

    cls = {"ddim": DDIMScheduler, "euler": EulerDiscreteScheduler, "dpmsolver": DPMSolverMultistepScheduler}[name]
    pipe.scheduler = cls.from_config(pipe.scheduler.config)


@dataclass(frozen=True)
class SampleSpec:
    """One sample: everything that decides its pixels besides the weights."""

    prompt: str
    seed: int
    negative_prompt: str
    steps: int
    guidance_scale: float
    width: int
    height: int

    def batch_key(self) -> tuple[int, float, int, int]:
        return (self.steps, self.guidance_scale, self.width, self.height)


@dataclass(frozen=True)
class GenerationSettings:
    """Every sample of a checkpoint, in order. Samples sharing steps, CFG and size run in one batch."""

    samples: tuple[SampleSpec, ...]
    batch_size: int | None = None
    clip_skip: int | None = None

    @classmethod
    def uniform(cls, prompts: list[str], seeds: list[int], negative_prompt: str, steps: int, guidance_scale: float,
                resolution: int, batch_size: int | None = None, clip_skip: int | None = None) -> "GenerationSettings":
        return cls(tuple(SampleSpec(p, s, negative_prompt, steps, guidance_scale, resolution, resolution)
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
        if any(s.batch_key() != first.batch_key() or s.negative_prompt != first.negative_prompt
               for s in self.samples):
            out["per_sample"] = [{"steps": s.steps, "guidance_scale": s.guidance_scale, "width": s.width,
                                  "height": s.height, "negative_prompt": s.negative_prompt} for s in self.samples]
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
    transformers 4 module layout)."""
    if not clip_skip or clip_skip <= 1:
        return {"prompt": [s.prompt for s in specs], "negative_prompt": [s.negative_prompt for s in specs]}
    from shared.text_encoding import encode_prompts

    dtype = pipe.unet.dtype
    embed = lambda texts: encode_prompts(pipe.tokenizer, pipe.text_encoder, texts, clip_skip,  # noqa: E731
                                         pipe.text_encoder.device).to(dtype)
    return {"prompt_embeds": embed([s.prompt for s in specs]),
            "negative_prompt_embeds": embed([s.negative_prompt for s in specs])}


def generate(pipe, settings: GenerationSettings) -> tuple[list[np.ndarray], list[bool]]:
    """All samples in as few batches as memory allows; on CUDA OOM the batch is halved and retried."""
    import torch

    images: list[np.ndarray | None] = [None] * len(settings.samples)
    nsfw: list[bool] = [False] * len(settings.samples)
    pending = _batches(settings)
    while pending:
        idx = pending.pop(0)
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
            half = len(idx) // 2
            log.warning("out of GPU memory: retrying with batch size %d", half)
            pending[:0] = [idx[:half], idx[half:]]
            continue
        flags = getattr(out, "nsfw_content_detected", None) or [False] * len(idx)
        for i, im, flag in zip(idx, out.images, flags):
            images[i], nsfw[i] = np.asarray(im, np.float32), bool(flag)
    return [im for im in images if im is not None], nsfw
