"""Score what is in a trial folder (or sweep root) once and exit; --force scores done ones again.

Example: python -m evaluator run --dir runs/demo/trial_0001 --force   # after changing a metric
"""

from __future__ import annotations

import argparse

from evaluator.commands.watch import add_common, options_from
from evaluator.daemon import Daemon


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common(parser)
    parser.add_argument("--force", action="store_true", help="score every checkpoint again")


def run(args: argparse.Namespace) -> int:
    return Daemon(args.dir, options_from(args, once=True, force=args.force)).run()
