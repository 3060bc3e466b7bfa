"""The previous run's files in a trial folder: detect them, move them aside for ``--new``, and keep a
previous final checkpoint under its epoch or step name when a continuation writes a new one."""

from __future__ import annotations

import json
import math
import os
import shutil
from datetime import datetime
from pathlib import Path

from shared.errors import EpochscopeError
from shared.naming import CHECKPOINT_SUFFIX, epoch_stem, step_stem
from shared.safetensors_info import inspect
from shared.trial import Trial

STAGING = ".continue-staging"  # where a resumed sd-scripts run writes first (trainer/sd_scripts/continuation.py)


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


def _params_output_name(trial: Trial) -> str | None:
    """The output.name the folder's params.json was written for (read leniently: any readable string)."""
    try:
        data = json.loads(trial.params_path.read_text(encoding="utf-8"))
        name = data["config"]["output"]["name"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return name if isinstance(name, str) else None


def other_run_files(trial: Trial, output_name: str) -> list[Path]:
    """Files of a run under another output name: params.json if it names that run, and checkpoints and
    state folders that are not ``output_name``'s. A run started here without --new would mix with it."""
    from shared.naming import parse_stem

    files: list[Path] = []
    owner = _params_output_name(trial)
    if owner is not None and owner != output_name:
        files.append(trial.params_path)
    for path in trial.checkpoint_paths():
        try:
            parse_stem(path.name, output_name)
        except ValueError:
            files.append(path)
    ours = {p for _, p in trial.state_dirs(output_name)}
    files += [p for _, p in trial.state_dirs() if p not in ours]
    return files


def other_run_names(trial: Trial, output_name: str) -> list[str]:
    """The output names of ``other_run_files``, params.json's first."""
    from shared.naming import parse_stem

    names: list[str] = []
    owner = _params_output_name(trial)
    if owner is not None and owner != output_name:
        names.append(owner)
    for path in other_run_files(trial, output_name):
        if path != trial.params_path:
            name = parse_stem(path.name.removesuffix("-state")).output_name
            if name not in names:
                names.append(name)
    return names


def has_run_files(trial: Trial) -> bool:
    """Whether any run has written to the folder: a status, params, logs, checkpoints or states."""
    return (any(p.exists() for p in (trial.status_path, trial.params_path, trial.log_path, trial.logs_dir))
            or bool(trial.checkpoint_paths()) or bool(trial.state_dirs()))


def back_up_previous_run(trial: Trial, output_name: str, now: datetime | None = None) -> Path | None:
    """Move the previous run's checkpoints, states, evaluations, TensorBoard logs and training.log into
    backup/<timestamp>/, so the new run's curves start clean; a run under another output name goes too
    (its checkpoints, states and params.json). Never overwrites and never deletes."""
    files = previous_run_files(trial, output_name)
    files += [p for p in other_run_files(trial, output_name) if p != trial.params_path]
    history = [p for p in (trial.logs_dir, trial.log_path) if p.exists()]
    extra = [p for p in (trial.evaluations_dir, trial.status_path, trial.params_path, trial.root / STAGING)
             if p.exists()]
    other_params = _params_output_name(trial) not in (None, output_name)
    if not files and not history and not other_params:
        return None
    stamp = (now or datetime.now()).strftime("%Y%m%d_%H%M%S")
    dest = trial.backup_dir / stamp
    n = 1
    while dest.exists():
        n += 1
        dest = trial.backup_dir / f"{stamp}_{n}"
    dest.mkdir(parents=True)
    for path in files + history + extra:
        os.replace(path, dest / path.name)
    return dest


def _steps_per_epoch(final: Path, state_dir: Path) -> int | None:
    """Optimizer steps per epoch of the run that wrote ``final``: from the builtin state's counters, or
    from sd-scripts' metadata."""
    try:
        return int(json.loads((state_dir / "train_state.json").read_text())["steps_per_epoch"])
    except (OSError, ValueError, KeyError, TypeError):
        return _metadata_steps_per_epoch(final)


def _metadata_steps_per_epoch(path: Path) -> int | None:
    """sd-scripts' metadata: batches per epoch / gradient accumulation (None if it does not say)."""
    info = inspect(path)
    batches = info.metadata_int("ss_num_batches_per_epoch")
    if not batches:
        return None
    return math.ceil(batches / (info.metadata_int("ss_gradient_accumulation_steps") or 1))


def steps_per_epoch_of(trial: Trial, output_name: str, *more: Path) -> int | None:
    """Steps per epoch as any checkpoint of ``output_name`` in the trial (or the ``more`` folders) says."""
    for folder in (trial.root, *more):
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob(output_name + "*.safetensors")):
            spe = _metadata_steps_per_epoch(path)
            if spe:
                return spe
    return None


def retired_final_stem(final: Path, output_name: str, steps_per_epoch: int | None) -> str | None:
    """The name a previous final checkpoint keeps when a continuation writes a new one: its epoch's name
    if it ends an epoch, else its step's (a partial epoch is never called complete). None if the file
    does not say its step."""
    info = inspect(final)
    step, epoch = info.metadata_int("ss_steps"), info.metadata_int("ss_epoch")
    if not step:
        return None
    if steps_per_epoch and epoch and step == epoch * steps_per_epoch:
        return epoch_stem(output_name, epoch)
    return step_stem(output_name, step)


def retire_final(trial: Trial, output_name: str, steps_per_epoch: int | None = None) -> Path | None:
    """Before a continuation writes ``<name>.safetensors``: rename the previous one (and its -state
    folder) to its epoch or step name, so every checkpoint is written once and none is destroyed.
    Returns the new path, or None if there was no previous final."""
    final = trial.checkpoint_path(output_name)
    if not final.exists():
        return None
    state = trial.state_dir(output_name)
    spe = steps_per_epoch or _steps_per_epoch(final, state)
    stem = retired_final_stem(final, output_name, spe)
    candidates = [stem, step_stem(output_name, inspect(final).metadata_int("ss_steps") or 0)] if stem else []
    for candidate in candidates:
        target = trial.checkpoint_path(candidate)
        if not target.exists() and not trial.state_dir(candidate).exists():
            os.replace(final, target)  # a rename: same bytes and mtime, so the same fingerprint
            if state.exists():
                os.replace(state, trial.state_dir(candidate))
            return target
    raise EpochscopeError(f"{final} would be overwritten by the continuation and cannot be kept under its "
                          f"epoch or step name ({', '.join(candidates) or 'no ss_steps in its metadata'}); "
                          "move it aside first")


def consume_stale_stop_request(trial: Trial, now: datetime | None = None) -> Path | None:
    """A stop request left from an earlier run must not stop this one: keep it under another name."""
    if not trial.stop_request_path.exists():
        return None
    stamp = (now or datetime.now()).strftime("%Y%m%d_%H%M%S")
    dest = trial.root / f"stop_request.{stamp}.consumed.json"
    os.replace(trial.stop_request_path, dest)
    return dest


#: TensorBoard folders the trainer writes under logs/ (the evaluator's own, logs/evaluator, is not the run's).
TRAINER_LOG_DIRS = ("trainer", "sd-scripts")


def _link_or_copy(src: Path, dest: Path) -> None:
    try:
        os.link(src, dest)
    except OSError:  # another filesystem, or one without hard links
        shutil.copy2(src, dest)


def copy_run_until(source: Trial, dest: Trial, output_name: str, state_dir: Path, step: int,
                   epoch: int) -> list[Path]:
    """Copy into ``dest`` what ``trainer run --continue`` needs to go on from ``source``'s ``state_dir``: the
    checkpoints of ``output_name`` up to that state (later ones would be trained again), params.json (the run's
    history), training.log, the trainer's TensorBoard logs, and the state folder last, so a ``dest`` cut
    short by a kill holds no state whose checkpoints are missing. Each item is copied under a dot name and
    renamed into place; checkpoints are hard links where the filesystem allows (an SDXL run's are hundreds of MB
    each, and no writer here changes a checkpoint in place: each is written once, under a temporary name, and a
    sd-scripts continuation writes to its staging folder). ``source`` is only read. Returns the copied paths in
    ``dest``."""
    dest.root.mkdir(parents=True, exist_ok=True)
    items: list[Path] = []
    for ckpt in source.checkpoints(output_name):
        if (ckpt.step is not None and ckpt.step <= step) or (ckpt.step is None and ckpt.epoch is not None
                                                                and ckpt.epoch <= epoch):
            items.append(ckpt.path)
    items += [p for p in (source.params_path, source.log_path) if p.is_file()]
    items += [source.logs_dir / d for d in TRAINER_LOG_DIRS if (source.logs_dir / d).is_dir()]
    items.append(state_dir)
    copied: list[Path] = []
    for item in items:
        target = dest.root / item.relative_to(source.root)
        tmp = target.with_name(f".{target.name}.copy-tmp")
        target.parent.mkdir(parents=True, exist_ok=True)
        if tmp.is_dir():
            shutil.rmtree(tmp)
        if item.is_dir():
            shutil.copytree(item, tmp)
        elif item.suffix == CHECKPOINT_SUFFIX:
            _link_or_copy(item, tmp)
        else:
            shutil.copy2(item, tmp)
        os.replace(tmp, target)
        copied.append(target)
    return copied
