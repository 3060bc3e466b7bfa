"""Per-checkpoint metrics time: the torch SSIM / Lab / colour distances against the scikit-image ones they
replaced (tests/_skimage_reference.py), side by side in one run, on synthetic images.

What is timed is the scoring's "metrics" stage for one checkpoint: prepare_samples (failure checks, CLIP
embeddings with the demo CLIP, image statistics, Lab pixels) + sample_copies + compute_metrics against
references, a baseline and a previous checkpoint (so both SSIMs run). SSIM and colour are also timed alone.

  python bench/bench_metrics.py [--sizes 64 512] [--samples 8] [--repeats 5] [--device cpu]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@contextlib.contextmanager
def reference_implementation():
    """Swap the scikit-image implementations back in where the scoring code looks them up."""
    import _skimage_reference as ref

    from evaluator.metrics import color, compute

    saved = (color.lab_pixels, color.sliced_wasserstein, color.delta_e2000, compute.paired_ssim)
    color.lab_pixels = lambda images, max_pixels=color.MAX_PIXELS, device=None: ref.lab_pixels(images, max_pixels)
    color.sliced_wasserstein = lambda a, b, device=None, b_quantiles=None: ref.sliced_wasserstein(a, b)
    color.delta_e2000 = ref.delta_e2000
    compute.paired_ssim = lambda a, b, device=None: ref.paired_ssim(a, b)
    try:
        yield
    finally:
        color.lab_pixels, color.sliced_wasserstein, color.delta_e2000, compute.paired_ssim = saved


def _median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 512])
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    import numpy as np
    import torch

    from _metrics_helpers import hue_shift, scene
    from evaluator.metrics import (ClipEncoder, color, compute_metrics, prepare_references, prepare_samples,
                                   sample_copies)
    from evaluator.metrics import compute as compute_module
    from shared.demo_assets import ensure_demo_assets

    ensure_demo_assets()
    encoder = ClipEncoder.load("demo:tiny-clip", device=args.device)
    n = args.samples
    prompts, seeds = [f"prompt {i}" for i in range(n)], list(range(n))
    print(f"metrics per checkpoint, {n} samples, device {args.device}, torch threads {torch.get_num_threads()}, "
          f"{os.cpu_count()} cores; median of {args.repeats}")
    for size in args.sizes:
        rng = np.random.default_rng(size)
        noisy = lambda im: np.clip(im + rng.normal(0, 0.02, im.shape), 0, 1).astype(np.float32)  # noqa: E731
        base = [noisy(scene(i, size)) for i in range(n)]
        prev = [noisy(hue_shift(im, 0.02)) for im in base]
        cur = [noisy(im) for im in prev]
        refs = prepare_references([scene(100 + i, size) for i in range(4)], encoder)
        baseline = prepare_samples(base, prompts, seeds, encoder)
        previous = prepare_samples(prev, prompts, seeds, encoder)

        def stage():
            s = prepare_samples(cur, prompts, seeds, encoder)
            copies = sample_copies(s, refs)
            return compute_metrics(s, refs, baseline=baseline, previous=previous, copies=copies)

        def ssim_only():
            compute_module.paired_ssim(cur, base, device=args.device)  # looked up at call time: swappable
            compute_module.paired_ssim(cur, prev, device=args.device)

        def colour_only():
            lab = color.lab_pixels(cur, device=args.device)
            color.sliced_wasserstein(lab, refs.lab_pixels, device=args.device, b_quantiles=refs.lab_quantiles)
            color.delta_e2000(lab.mean(axis=0), refs.mean_lab)

        new = (_median_time(stage, args.repeats), _median_time(ssim_only, args.repeats),
               _median_time(colour_only, args.repeats))
        m_new = stage()
        with reference_implementation():
            old = (_median_time(stage, args.repeats), _median_time(ssim_only, args.repeats),
                   _median_time(colour_only, args.repeats))
            m_old = stage()
        diff = max(abs(getattr(m_new, k) - getattr(m_old, k))
                   for k in ("ssim_prev", "ssim_base", "color_swd_lab", "color_delta_e2000_mean"))
        print(f"{size} px: metrics stage {old[0] * 1000:.0f} ms (scikit-image) -> {new[0] * 1000:.0f} ms (torch); "
              f"SSIM x2 {old[1] * 1000:.0f} -> {new[1] * 1000:.0f} ms; colour {old[2] * 1000:.0f} -> "
              f"{new[2] * 1000:.0f} ms; largest metric difference {diff:.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
