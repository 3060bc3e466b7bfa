"""Training state folders (``<checkpoint>-state/``) for ``--continue``: LoRA weights, optimizer,
scheduler and counters. Written to a temp folder and renamed, so a half-written state is never used."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

STATE_FILE = "train_state.json"
WEIGHTS_FILE = "lora_weights.safetensors"


@dataclass(frozen=True)
class Counters:
    step: int
    epoch: int  # completed epochs
    total_steps: int
    total_epochs: int
    steps_per_epoch: int
    seed: int
    output_name: str
    #: The length the lr schedule was built for (0 in states written before it was recorded: then
    #: total_steps, which is what those runs used).
    schedule_steps: int = 0


def schedule_length(counters: Counters | None, total_steps: int) -> int:
    """How many steps this run's lr schedule spans.

    A new run: its own length. A continuation follows the schedule the run started with, whatever
    ``--steps``/``--epochs`` say, so its lr is the uninterrupted run's at every step; only a run taken
    past that schedule's end stretches it to the new end (else linear would train at lr 0 from there).
    """
    if counters is None:
        return total_steps
    return max(counters.schedule_steps or counters.total_steps, total_steps)


def apply_schedule(optimizer, scheduler) -> None:
    """After loading a state: set each group's lr to what ``scheduler`` gives at its restored step.

    The optimizer state holds the lr of the schedule it was saved with; with a stretched schedule
    that would be one step out of date.
    """
    lambdas = getattr(scheduler, "lr_lambdas", None)
    if not lambdas:
        return
    for group, base, fn in zip(optimizer.param_groups, scheduler.base_lrs, lambdas):
        group["lr"] = base * fn(scheduler.last_epoch)
    scheduler._last_lr = [g["lr"] for g in optimizer.param_groups]


def save_state(dest: Path, counters: Counters, weights: dict[str, torch.Tensor], optimizer, scheduler) -> None:
    from safetensors.torch import save_file

    tmp = dest.with_name(f".{dest.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        save_file({k: v.detach().cpu().contiguous() for k, v in weights.items()}, str(tmp / WEIGHTS_FILE))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        (tmp / STATE_FILE).write_text(json.dumps(asdict(counters), indent=2), encoding="utf-8")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # a full disk: give back what the half-written state took
        raise
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(dest, old)
        os.replace(tmp, dest)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, dest)


def read_counters(state_dir: Path) -> Counters | None:
    """Counters of a complete state folder, or None if it is not one of ours or is incomplete."""
    try:
        data = json.loads((state_dir / STATE_FILE).read_text(encoding="utf-8"))
        if not (state_dir / WEIGHTS_FILE).exists():
            return None
        return Counters(**data)
    except (OSError, ValueError, TypeError):
        return None


def load_state(state_dir: Path, optimizer, scheduler) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    # Our own files; weights_only keeps torch.load from running code even here.
    optimizer.load_state_dict(torch.load(state_dir / "optimizer.pt", weights_only=True))
    scheduler.load_state_dict(torch.load(state_dir / "scheduler.pt", weights_only=True))
    return load_file(str(state_dir / WEIGHTS_FILE))
