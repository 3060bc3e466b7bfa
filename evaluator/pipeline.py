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
class GenerationSettings:
    prompts: list[str]  # one per sample
    seeds: list[int]
    negative_prompt: str
    steps: int
    guidance_scale: float
    resolution: int
    batch_size: int | None

    def describe(self) -> dict:
        return {"steps": self.steps, "guidance_scale": self.guidance_scale, "resolution": self.resolution,
                "seeds": self.seeds, "negative_prompt": self.negative_prompt}


def generate(pipe, settings: GenerationSettings) -> tuple[list[np.ndarray], list[bool]]:
    """All samples in as few batches as memory allows; on CUDA OOM the batch is halved and retried."""
    import torch

    n = len(settings.prompts)
    batch = settings.batch_size or n
    images: list[np.ndarray] = []
    nsfw: list[bool] = []
    i = 0
    while i < n:
        j = min(n, i + batch)
        try:
            out = pipe(prompt=settings.prompts[i:j], negative_prompt=[settings.negative_prompt] * (j - i),
                       num_inference_steps=settings.steps, guidance_scale=settings.guidance_scale,
                       height=settings.resolution, width=settings.resolution,
                       generator=[torch.Generator("cpu").manual_seed(s) for s in settings.seeds[i:j]],
                       output_type="np")
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            if batch == 1:
                raise EpochscopeError("out of GPU memory even with batch size 1") from None
            batch = max(1, batch // 2)
            log.warning("out of GPU memory: retrying with batch size %d", batch)
            continue
        images += [np.asarray(im, np.float32) for im in out.images]
        flags = getattr(out, "nsfw_content_detected", None) or [False] * (j - i)
        nsfw += [bool(f) for f in flags]
        i = j
    return images, nsfw
