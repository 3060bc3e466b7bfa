"""A resumed sd-scripts run counts steps and epochs from zero again. It writes into a staging folder,
and each complete output is moved into the trial under its true name, with ss_steps/ss_epoch and
train_state.json corrected, so nothing earlier is overwritten and the history stays right.

True names: a staged file at its step s is at step step0 + s of the run. It ends an epoch only if that
step is a multiple of the steps per epoch (a continuation from a mid-epoch state is out of phase with
the run's epochs), so a staged epoch file becomes ``-{epoch}`` only then and ``-step{step}`` otherwise;
``ss_epoch`` counts completed epochs, never the one in progress.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from shared.jsonio import atomic_write_text
from shared.naming import CHECKPOINT_SUFFIX, epoch_stem, parse_stem, state_dirname, step_stem
from shared.safetensors_info import inspect
from shared.trial import Trial
from trainer.backends.base import ResumePoint
from trainer.outputs import STAGING, retire_final, steps_per_epoch_of  # noqa: F401 (re-exported)

STATE_DONE_MARKER = "random_states_0.pkl"  # sd-scripts writes it last; we only check that it exists
SCHEDULE_KEY = "epochscope_schedule_steps"  # added to an adopted state's train_state.json
#: sd-scripts' own train_state.json (steps counted from the continuation's start), kept beside the
#: corrected one so that adopting a state again after an interruption corrects the original, not the result.
ORIGINAL_STATE_FILE = "train_state.sd-scripts.json"


def staging_dir(trial: Trial) -> Path:
    return trial.root / STAGING


def remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass  # absent, or it still holds something unfinished: keep it for a look


def true_stem(stem: str, output_name: str, step0: int, epoch0: int, staged_step: int | None = None,
              steps_per_epoch: int | None = None) -> str:
    """The trial name of a staged ``stem``. With the staged step and the steps per epoch known, epochs are
    the run's own (see the module docstring); without, the continuation's epochs are added to epoch0."""
    name = parse_stem(stem, output_name)
    if name.kind == "final":
        return output_name
    if staged_step is not None and steps_per_epoch:
        step = step0 + staged_step
        if name.kind == "epoch" and step % steps_per_epoch == 0:
            return epoch_stem(output_name, step // steps_per_epoch)
        return step_stem(output_name, step)
    if name.kind == "epoch":
        return epoch_stem(output_name, epoch0 + (name.epoch or 0))
    return step_stem(output_name, step0 + (name.step or 0))


def schedule_length(trial: Trial, output_name: str, resume: ResumePoint, steps: int | None,
                    epochs: int | None) -> int | None:
    """The lr schedule a continuation follows: the run's original length, stretched only when the
    continuation goes past its end (as the builtin backend does). None if the original is unknown."""
    if resume.schedule_steps is None:
        return None
    spe = steps_per_epoch_of(trial, output_name)
    end = resume.step + steps if steps is not None else (resume.step + epochs * spe if epochs and spe else 0)
    return max(resume.schedule_steps, end)


def adopt_outputs(trial: Trial, output_name: str, step0: int, epoch0: int,
                  schedule_steps: int | None = None) -> list[Path]:
    """Move every complete checkpoint and state from staging into the trial; returns the new files."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    staging = staging_dir(trial)
    if not staging.is_dir():
        return []
    spe = steps_per_epoch_of(trial, output_name, staging)
    moved = []
    for path in sorted(staging.glob("*" + CHECKPOINT_SUFFIX)):
        info = inspect(path)
        if not info.is_complete:
            continue
        stem = path.name[: -len(CHECKPOINT_SUFFIX)]
        staged_step = info.metadata_int("ss_steps") or 0
        try:
            new = true_stem(stem, output_name, step0, epoch0, staged_step, spe)
        except ValueError:
            continue
        meta = dict(info.metadata)
        step = step0 + staged_step
        meta["ss_steps"] = str(step)
        meta["ss_epoch"] = str(step // spe if spe else epoch0 + (info.metadata_int("ss_epoch") or 0))
        if schedule_steps:
            meta["ss_max_train_steps"] = str(schedule_steps)
        with safe_open(str(path), framework="pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        target = trial.checkpoint_path(new)
        if _adopted_before(target, step):  # killed after the rename, before the unlink: done already
            path.unlink()
            continue
        if new == output_name:
            retire_final(trial, output_name)  # the previous final keeps its epoch or step name
        tmp = target.with_name(f".{target.name}.tmp")
        save_file(tensors, str(tmp), metadata=meta)
        os.chmod(tmp, 0o644 & ~_umask())
        os.replace(tmp, target)
        path.unlink()
        moved.append(target)
    for state in sorted(p for p in staging.iterdir() if p.is_dir() and p.name.endswith("-state")):
        data_file = state / "train_state.json"
        if not (state / STATE_DONE_MARKER).exists() or not data_file.exists():
            continue
        original = _original_state(state)
        stem = state.name[: -len("-state")]
        staged_step = int(original.get("current_step", 0))
        try:
            new = true_stem(stem, output_name, step0, epoch0, staged_step, spe)
        except ValueError:
            continue
        step = step0 + staged_step
        data = {"current_step": step,
                "current_epoch": step // spe if spe else epoch0 + int(original.get("current_epoch", 0))}
        if schedule_steps:
            data[SCHEDULE_KEY] = schedule_steps
        atomic_write_text(data_file, json.dumps(data))
        target = trial.root / state_dirname(new)
        if target.exists():  # e.g. the old final's state, left by a kill inside retire_final: a resume point
            move_aside(trial, target)
        os.replace(state, target)
    return moved


def _adopted_before(target: Path, step: int) -> bool:
    """``target`` is this staged checkpoint already adopted (same step): adopting it again would retire
    it as the previous final, or write it a second time."""
    info = inspect(target)
    return info.is_complete and info.metadata_int("ss_steps") == step


def _original_state(state: Path) -> dict:
    """sd-scripts' own counters of a staged state. Saved once (atomically) before train_state.json is
    corrected in place, and read from there ever after: correcting is then safe to repeat."""
    saved = state / ORIGINAL_STATE_FILE
    if saved.exists():
        return json.loads(saved.read_text(encoding="utf-8"))
    raw = (state / "train_state.json").read_text(encoding="utf-8")
    data = json.loads(raw)
    atomic_write_text(saved, raw)
    return data


def move_aside(trial: Trial, folder: Path) -> Path:
    """Keep a folder that is in the way under backup/ (it may be someone's resume point): never delete it."""
    from datetime import datetime

    stamp = datetime.now().strftime("%Y%m%d_%H%M%S")
    dest = trial.backup_dir / f"{folder.name}.replaced-{stamp}"
    n = 1
    while dest.exists():
        n += 1
        dest = trial.backup_dir / f"{folder.name}.replaced-{stamp}_{n}"
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.replace(folder, dest)
    return dest


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
