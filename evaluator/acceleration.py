"""Faster generation where the hardware allows, set up once when the models are loaded (``Models.load``).

- ``evaluation.compile`` (opt-in): ``torch.compile`` of the UNet, in place (``Module.compile``), once per
  daemon. The first generation compiles it: that is the baseline, scored before any checkpoint. A LoRA is
  merged into the UNet's weights in place (``evaluator.lora_swap``), and dynamo treats parameters as
  inputs, so swapping checkpoints does not recompile; ``compile_stats`` counts the graphs and recompiles
  so the daemon can show that after every checkpoint. A new batch shape (a last, smaller batch) compiles
  one more graph, once.
- ``channels_last`` for the UNet and the VAE on CUDA, where convolutions run faster in that layout. On
  the CPU it is left off (bench/bench_acceleration.py measures all three).
- The VAE decode is already batched: diffusers decodes a pipeline call's whole batch at once unless VAE
  slicing is switched on, which ``load_pipeline`` never does; nothing is added for it here.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

log = logging.getLogger("epochscope.evaluator")


@dataclass(frozen=True)
class Acceleration:
    """What was switched on for a loaded pipeline."""

    compiled: bool = False
    channels_last: bool = False

    def describe(self) -> str:
        parts = (["torch.compile (UNet)"] if self.compiled else []) + (["channels_last"] if self.channels_last else [])
        return ", ".join(parts) or "none"


@dataclass(frozen=True)
class CompileStats:
    """Dynamo's counters for this process: graphs compiled, and how many of them were recompiles."""

    graphs: int
    recompiles: int

    def __str__(self) -> str:
        return f"{self.graphs} compiled graph(s), {self.recompiles} recompile(s)"


def compile_stats() -> CompileStats:
    """The process's dynamo counters (0, 0 before anything is compiled)."""
    from torch._dynamo.utils import counters

    return CompileStats(int(counters["stats"]["unique_graphs"]), int(sum(counters["recompiles"].values())))


def accelerate(pipe, device: str, compile: bool = False) -> Acceleration:
    """Switch on what pays on ``device``: channels_last on CUDA, and ``torch.compile`` of the UNet when
    ``compile`` is set. The UNet stays the same module object (the LoRA swapper holds its layers)."""
    import torch

    channels_last = device.startswith("cuda")
    if channels_last:
        pipe.unet.to(memory_format=torch.channels_last)
        pipe.vae.to(memory_format=torch.channels_last)
    if compile:
        t0 = time.monotonic()
        pipe.unet.compile(fullgraph=False, dynamic=False)
        log.info("UNet set to be compiled by torch.compile on its first call (the baseline; %.1f s so far)",
                 time.monotonic() - t0)
    return Acceleration(compiled=compile, channels_last=channels_last)
