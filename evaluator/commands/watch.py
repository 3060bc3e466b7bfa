"""Watch a trial folder (or a sweep root of trial_* folders) and score each new complete checkpoint.

Examples:
  python -m evaluator watch --dir runs/demo/trial_0001 --exit-when-done
  python -m evaluator watch --dir sweeps/demo --device cuda:1
  python -m evaluator watch --dir /kohya/output --config eval.toml --name mylora   # a folder sd-scripts wrote
"""

from __future__ import annotations

import argparse
from pathlib import Path

from evaluator.daemon import Daemon, Options
from evaluator.settings import Overrides
from shared.arg_types import positive_float, positive_int


def add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dir", type=Path, required=True,
                        help="a trial folder, a sweep root, or any folder of LoRA files (with --config)")
    parser.add_argument("--config", type=Path,
                        help="a TOML whose [model] and [evaluation] sections say what to generate with, for a folder "
                        "our trainer did not make (no params.json); see configs/evaluate-folder.toml")
    parser.add_argument("--name", help="score only this output name's files (NAME.safetensors, NAME-000002..., "
                        "NAME-step...); default: the trial's output name, or every *.safetensors")
    parser.add_argument("--device", help="auto | cpu | cuda | cuda:N (default: the config's evaluation.device, "
                        "whose default is auto)")
    parser.add_argument("--dtype", choices=["auto", "fp32", "fp16", "bf16"],
                        help="default: the config's evaluation.dtype (auto: fp16/bf16 on GPU, fp32 on CPU)")
    parser.add_argument("--num-samples", type=positive_int, help="override evaluation.num_samples")
    parser.add_argument("--steps", type=positive_int, help="override evaluation.steps")
    parser.add_argument("--retry-failed", action="store_true",
                        help="score again the checkpoints recorded failed (e.g. quarantined after the evaluator was "
                        "killed while scoring them, or failed before a fix); the rest keep their results")
    parser.add_argument("--gpu-sharing", choices=["concurrent", "pause-trainer"],
                        help="on the trainer's GPU: share it (default) or pause the trainer while generating")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common(parser)
    parser.add_argument("--exit-when-done", action="store_true",
                        help="exit 0 once the trainer is finished and every checkpoint is scored (a folder without "
                        "a trainer: once its final file is scored, or after --idle-exit seconds with nothing new)")
    parser.add_argument("--idle-exit", type=positive_float, default=300.0,
                        help="with --exit-when-done on a folder without a trainer: seconds without a new file "
                        "before exiting (default 300)")
    parser.add_argument("--max-attempts", type=positive_int, default=2,
                        help="a checkpoint that crashed the evaluator this many times is recorded failed (default 2)")
    parser.add_argument("--polling", action="store_true", help="poll the disk (network filesystems)")
    parser.add_argument("--rescan-interval", type=positive_float, default=5.0, help="seconds between rescans (default 5)")
    parser.add_argument("--incomplete-timeout", type=positive_float, default=120.0,
                        help="seconds a file may stay incomplete or corrupt before it is recorded failed")
    parser.add_argument("--wait-lock", action="store_true", help="wait for another evaluator on the folder")


def options_from(args: argparse.Namespace, **extra) -> Options:
    return Options(device=args.device, dtype=args.dtype, config_path=args.config, name=args.name,
                   retry_failed=args.retry_failed,
                   overrides=Overrides(num_samples=args.num_samples, steps=args.steps, gpu_sharing=args.gpu_sharing),
                   **extra)


def run(args: argparse.Namespace) -> int:
    opts = options_from(args, exit_when_done=args.exit_when_done, polling=args.polling,
                        rescan_interval=args.rescan_interval, incomplete_timeout=args.incomplete_timeout,
                        wait_lock=args.wait_lock, idle_exit=args.idle_exit, max_attempts=args.max_attempts)
    return Daemon(args.dir, opts).run()
