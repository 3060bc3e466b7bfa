"""Watch a trial folder (or a sweep root of trial_* folders) and score each new complete checkpoint.

Examples:
  python -m evaluator watch --dir runs/demo/trial_0001 --exit-when-done
  python -m evaluator watch --dir sweeps/demo --device cuda:1
"""

from __future__ import annotations

import argparse
from pathlib import Path

from evaluator.daemon import Daemon, Options
from evaluator.settings import Overrides


def add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dir", type=Path, required=True, help="a trial folder or a sweep root")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: auto)")
    parser.add_argument("--dtype", default="auto", choices=["auto", "fp32", "fp16", "bf16"],
                        help="auto: fp16/bf16 on GPU, fp32 on CPU")
    parser.add_argument("--num-samples", type=int, help="override evaluation.num_samples")
    parser.add_argument("--steps", type=int, help="override evaluation.steps")
    parser.add_argument("--gpu-sharing", choices=["concurrent", "pause-trainer"],
                        help="on the trainer's GPU: share it (default) or pause the trainer while generating")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common(parser)
    parser.add_argument("--exit-when-done", action="store_true",
                        help="exit 0 once the trainer is finished and every checkpoint is scored")
    parser.add_argument("--polling", action="store_true", help="poll the disk (network filesystems)")
    parser.add_argument("--rescan-interval", type=float, default=5.0, help="seconds between rescans (default 5)")
    parser.add_argument("--incomplete-timeout", type=float, default=120.0,
                        help="seconds a file may stay incomplete or corrupt before it is recorded failed")
    parser.add_argument("--wait-lock", action="store_true", help="wait for another evaluator on the folder")


def options_from(args: argparse.Namespace, **extra) -> Options:
    return Options(device=args.device, dtype=args.dtype,
                   overrides=Overrides(num_samples=args.num_samples, steps=args.steps, gpu_sharing=args.gpu_sharing),
                   **extra)


def run(args: argparse.Namespace) -> int:
    opts = options_from(args, exit_when_done=args.exit_when_done, polling=args.polling,
                        rescan_interval=args.rescan_interval, incomplete_timeout=args.incomplete_timeout,
                        wait_lock=args.wait_lock)
    return Daemon(args.dir, opts).run()
