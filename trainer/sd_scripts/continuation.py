"""A resumed sd-scripts run counts steps and epochs from zero again. It writes into a staging folder,
and each complete output is moved into the trial under its true name, with ss_steps/ss_epoch and
train_state.json corrected, so nothing earlier is overwritten and the history stays right."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from shared.naming import CHECKPOINT_SUFFIX, epoch_stem, parse_stem, state_dirname, step_stem
from shared.safetensors_info import inspect
from shared.trial import Trial

STAGING = ".continue-staging"
STATE_DONE_MARKER = "random_states_0.pkl"  # sd-scripts writes it last; we only check that it exists


def staging_dir(trial: Trial) -> Path:
    return trial.root / STAGING


def true_stem(stem: str, output_name: str, step0: int, epoch0: int) -> str:
    name = parse_stem(stem, output_name)
    if name.kind == "epoch":
        return epoch_stem(output_name, epoch0 + (name.epoch or 0))
    if name.kind == "step":
        return step_stem(output_name, step0 + (name.step or 0))
    return output_name


def adopt_outputs(trial: Trial, output_name: str, step0: int, epoch0: int) -> list[Path]:
    """Move every complete checkpoint and state from staging into the trial; returns the new files."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    staging = staging_dir(trial)
    if not staging.is_dir():
        return []
    moved = []
    for path in sorted(staging.glob("*" + CHECKPOINT_SUFFIX)):
        info = inspect(path)
        if not info.is_complete:
            continue
        stem = path.name[: -len(CHECKPOINT_SUFFIX)]
        try:
            new = true_stem(stem, output_name, step0, epoch0)
        except ValueError:
            continue
        meta = dict(info.metadata)
        meta["ss_steps"] = str(step0 + (info.metadata_int("ss_steps") or 0))
        meta["ss_epoch"] = str(epoch0 + (info.metadata_int("ss_epoch") or 0))
        with safe_open(str(path), framework="pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        target = trial.checkpoint_path(new)
        tmp = target.with_name(f".{target.name}.tmp")
        save_file(tensors, str(tmp), metadata=meta)
        os.replace(tmp, target)
        path.unlink()
        moved.append(target)
    for state in sorted(p for p in staging.iterdir() if p.is_dir() and p.name.endswith("-state")):
        data_file = state / "train_state.json"
        if not (state / STATE_DONE_MARKER).exists() or not data_file.exists():
            continue
        stem = state.name[: -len("-state")]
        try:
            new = true_stem(stem, output_name, step0, epoch0)
        except ValueError:
            continue
        data = json.loads(data_file.read_text())
        data = {"current_step": step0 + int(data.get("current_step", 0)),
                "current_epoch": epoch0 + int(data.get("current_epoch", 0))}
        data_file.write_text(json.dumps(data))
        target = trial.root / state_dirname(new)
        if target.exists():
            shutil.rmtree(target)
        os.replace(state, target)
    return moved
