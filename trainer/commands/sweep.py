"""Run an Optuna sweep: each trial trains in <root>/trial_NNNN/ and is pruned from checkpoint scores.

The study lives in sqlite:///<root>/study.db unless --storage names another (postgresql://user:pw@host/db
lets several machines share one study). Re-running the same command continues the study until
--n-trials trials are done; see docs/sweeps.md.

Examples:
  python -m trainer sweep --config configs/demo-sweep.toml
  python -m trainer sweep --config sweep.toml --storage postgresql://me:pw@db/optuna --evaluator auto
"""

from __future__ import annotations

import argparse
from pathlib import Path

from shared.config import load_config, require_training_data
from shared.errors import EpochscopeError
from shared.trial import SweepRoot
from trainer.sweep.driver import Sweep, SweepOptions


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, required=True, help="a run config with a [sweep] section")
    parser.add_argument("--root", type=Path, help="sweep folder (default: sweep.root)")
    parser.add_argument("--n-trials", type=int, help="trials to reach in the study: complete, pruned or failed, "
                        "not counting ones interrupted by a killed sweep (default: sweep.n_trials)")
    parser.add_argument("--storage", help="Optuna storage URL (default: sqlite:///<root>/study.db)")
    parser.add_argument("--study", help="study name (default: sweep.study_name)")
    parser.add_argument("--evaluator", choices=["auto", "none"], default="auto",
                        help="auto (default): use an evaluator already watching the root on this machine, "
                             "else start one for the sweep's lifetime; "
                             "none: one is already running (run_pair.sh --sweep starts it)")


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    if config.sweep is None:
        raise EpochscopeError(f"{args.config}: no [sweep] section (see configs/demo-sweep.toml)")
    require_training_data(config, args.config)  # refused once here, not once per trial
    root = (args.root or Path(config.sweep.root)).resolve()
    opts = SweepOptions(config_path=args.config.resolve(), config=config, root=root,
                        n_trials=config.sweep.n_trials if args.n_trials is None else args.n_trials,
                        storage=args.storage or config.sweep.storage or SweepRoot(root).default_storage,
                        study_name=args.study or config.sweep.study_name,
                        start_evaluator=args.evaluator == "auto")
    if opts.n_trials < 1:
        raise EpochscopeError("--n-trials must be at least 1")
    return Sweep(opts).run()
