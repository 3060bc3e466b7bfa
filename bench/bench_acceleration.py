"""What each generation speed-up of evaluator/acceleration.py gives, side by side in one run: the
evaluation's images generated eager, with channels_last (UNet and VAE), and with a torch.compile'd UNet
(after its compile, which is timed on its own), alternating so that a machine's changing load affects
all alike. (That a LoRA swap compiles nothing more is tested: tests/test_acceleration.py.)

  python bench/bench_acceleration.py                 # demo model, 8 samples x 25 steps, 64 px, CPU
  python bench/bench_acceleration.py --sd15          # SD-1.5 architecture, random weights, 512 px (GPU)
  python bench/bench_acceleration.py --sdxl          # SDXL 1.0 architecture, random weights, 1024 px (GPU)
  python bench/bench_acceleration.py --no-compile    # skip torch.compile (its compile takes a minute or more)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))
from _bench_models import MODELS, add_model_arguments, base_for, resolution_for  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_arguments(ap)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-compile", action="store_true")
    args = ap.parse_args()
    import torch

    from evaluator.acceleration import accelerate, compile_stats
    from evaluator.pipeline import (GenerationSettings, SizeConditioning, generate, load_pipeline, pick_device,
                                    pick_dtype, set_scheduler)

    device = pick_device(args.device)
    base = base_for(args.model)
    res = resolution_for(args.model, args.resolution)
    prompts = ["a red circle on a blue background, sks style", "a yellow square on a green background, sks style"]
    gen = GenerationSettings.uniform([prompts[i % 2] for i in range(args.samples)], list(range(args.samples)), "",
                                     args.steps, 7.5, res,
                                     sdxl=SizeConditioning() if args.model.endswith("sdxl") else None)
    dtype = pick_dtype("auto", device)

    def pipeline():
        pipe = load_pipeline(base, device, dtype)
        set_scheduler(pipe, "ddim")
        return pipe

    def timed(pipe) -> float:
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        generate(pipe, gen)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    variants = {"eager": pipeline()}
    cl = pipeline()
    cl.unet.to(memory_format=torch.channels_last)
    cl.vae.to(memory_format=torch.channels_last)
    variants["channels_last"] = cl
    compile_s = None
    if not args.no_compile:
        compiled = pipeline()
        accelerate(compiled, "cpu", compile=True)  # "cpu": the compile alone, without channels_last
        t0 = time.perf_counter()
        generate(compiled, gen)
        compile_s = time.perf_counter() - t0
        variants["torch.compile"] = compiled
    for pipe in variants.values():
        timed(pipe)  # warm-up
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(args.repeats):
        for name, pipe in variants.items():
            times[name].append(timed(pipe))
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"{MODELS[args.model]}: {args.samples} samples x {args.steps} steps, {res} px, {dtype}, {device}; "
          f"median of {args.repeats}, alternating")
    for k, v in med.items():
        print(f"  {k:14s} {v:.3f} s  ({v / med['eager']:.2f}x eager; each: {', '.join(f'{x:.3f}' for x in times[k])})")
    if compile_s is not None:
        print(f"  torch.compile: first call (compiling) {compile_s:.1f} s; {compile_stats()} after "
              f"{args.repeats + 1} more calls")
    return 0


if __name__ == "__main__":
    sys.exit(main())
