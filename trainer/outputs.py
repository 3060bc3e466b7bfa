"""The previous run's files in a trial folder: detect them, and move them aside for ``--new``."""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

from shared.trial import Trial


def previous_run_files(trial: Trial, output_name: str) -> list[Path]:
    """Checkpoints and state folders of ``output_name`` (complete or not)."""
    from shared.naming import parse_stem

    files: list[Path] = []
    for path in trial.checkpoint_paths():
        try:
            parse_stem(path.name, output_name)
        except ValueError:
            continue
        files.append(path)
    files += [p for _, p in trial.state_dirs(output_name)]
    return files


def back_up_previous_run(trial: Trial, output_name: str, now: datetime | None = None) -> Path | None:
    """Move the previous run's checkpoints, states and evaluations into backup/<timestamp>/.
    Never overwrites and never deletes."""
    files = previous_run_files(trial, output_name)
    extra = [p for p in (trial.evaluations_dir, trial.status_path, trial.params_path) if p.exists()]
    if not files:
        return None
    stamp = (now or datetime.now()).strftime("%Y%m%d_%H%M%S")
    dest = trial.backup_dir / stamp
    n = 1
    while dest.exists():
        n += 1
        dest = trial.backup_dir / f"{stamp}_{n}"
    dest.mkdir(parents=True)
    for path in files + extra:
        os.replace(path, dest / path.name)
    return dest


def consume_stale_stop_request(trial: Trial, now: datetime | None = None) -> Path | None:
    """A stop request left from an earlier run must not stop this one: keep it under another name."""
    if not trial.stop_request_path.exists():
        return None
    stamp = (now or datetime.now()).strftime("%Y%m%d_%H%M%S")
    dest = trial.root / f"stop_request.{stamp}.consumed.json"
    os.replace(trial.stop_request_path, dest)
    return dest
