"""Write report.html for a trial (or every trial plus index.html for a sweep root); --table prints
the summary table.

Example: python -m evaluator report --dir runs/demo/trial_0001 --table
"""

from __future__ import annotations

import argparse
from pathlib import Path

from evaluator.report import print_summary_table, write_sweep_index, write_trial_report
from shared.errors import EpochscopeError
from shared.trial import SweepRoot, Trial, is_trial_dir


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dir", type=Path, required=True, help="a trial folder or a sweep root")
    parser.add_argument("--table", action="store_true", help="also print the summary table")


def run(args: argparse.Namespace) -> int:
    if not args.dir.is_dir():
        raise EpochscopeError(f"--dir {args.dir} is not a folder")
    sweep = SweepRoot(args.dir)
    trials = [Trial(args.dir)] if is_trial_dir(args.dir) or not sweep.trials() else sweep.trials()
    scored = [t for t in trials if t.evaluation_summary_path.exists() or t.evaluation_state_path.exists()]
    if not scored:  # a typo in --dir must not leave a realtime_evaluations/ folder in someone's folder
        raise EpochscopeError(f"--dir {args.dir}: nothing evaluated there yet (no "
                              f"{trials[0].evaluation_summary_path.relative_to(trials[0].root.parent)}); "
                              f"score it first: python -m evaluator run --dir {args.dir}")
    for trial in scored:
        path = write_trial_report(trial)
        if args.table:
            print_summary_table(trial)
        print(f"report: {path}")
    if trials and trials[0].root != args.dir:
        print(f"index:  {write_sweep_index(args.dir)}")
    return 0
