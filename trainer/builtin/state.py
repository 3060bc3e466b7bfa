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


def save_state(dest: Path, counters: Counters, weights: dict[str, torch.Tensor], optimizer, scheduler) -> None:
    from safetensors.torch import save_file

    tmp = dest.with_name(f".{dest.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in weights.items()}, str(tmp / WEIGHTS_FILE))
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    (tmp / STATE_FILE).write_text(json.dumps(asdict(counters), indent=2), encoding="utf-8")
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
