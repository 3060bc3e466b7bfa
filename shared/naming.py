"""sd-scripts' checkpoint naming, the one place that formats and parses it (and reads OneTrainer's save names).

``{name}-{epoch:06d}``       saved every N epochs
``{name}-step{step:08d}``    saved every N steps
``{name}``                   the final file (no suffix)
Each may have a ``-state`` folder beside it holding the training state for ``--continue``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

CHECKPOINT_SUFFIX = ".safetensors"
STATE_SUFFIX = "-state"
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl")

_EPOCH_RE = re.compile(r"^(?P<name>.+)-(?P<epoch>\d{6})$")
# OneTrainer's periodic saves: <prefix><YYYY-MM-DD_HH-MM-SS>-save-<global step>-<epoch>-<step in epoch>, where
# <epoch> counts finished epochs (GenericTrainer, TrainProgress.filename_string).
_ONETRAINER_SAVE_RE = re.compile(r"\d{4}-\d{2}-\d{2}_\d{2}-\d{2}-\d{2}-save-(?P<step>\d+)-(?P<epoch>\d+)-(?P<in_epoch>\d+)$")
_STEP_RE = re.compile(r"^(?P<name>.+)-step(?P<step>\d{8})$")

Kind = Literal["epoch", "step", "final"]


@dataclass(frozen=True, order=True)
class CheckpointName:
    """A parsed checkpoint stem. ``epoch``/``step`` are what the name says; metadata may say more."""

    output_name: str
    kind: Kind
    epoch: int | None = None
    step: int | None = None

    @property
    def stem(self) -> str:
        if self.kind == "epoch":
            return epoch_stem(self.output_name, self.epoch or 0)
        if self.kind == "step":
            return step_stem(self.output_name, self.step or 0)
        return self.output_name

    @property
    def filename(self) -> str:
        return self.stem + CHECKPOINT_SUFFIX

    @property
    def state_dirname(self) -> str:
        return state_dirname(self.stem)


def epoch_stem(output_name: str, epoch: int) -> str:
    return f"{output_name}-{epoch:06d}"


def step_stem(output_name: str, step: int) -> str:
    return f"{output_name}-step{step:08d}"


def state_dirname(checkpoint_stem: str) -> str:
    return checkpoint_stem + STATE_SUFFIX


def parse_stem(stem: str, output_name: str | None = None) -> CheckpointName:
    """Parse a file stem. With ``output_name`` given, a stem that is neither that name nor one of its
    suffixed forms raises ValueError (it belongs to another run)."""
    if stem.endswith(CHECKPOINT_SUFFIX):
        stem = stem[: -len(CHECKPOINT_SUFFIX)]
    m = _STEP_RE.match(stem)
    if m and (output_name is None or m["name"] == output_name):
        return CheckpointName(m["name"], "step", step=int(m["step"]))
    m = _EPOCH_RE.match(stem)
    if m and (output_name is None or m["name"] == output_name):
        return CheckpointName(m["name"], "epoch", epoch=int(m["epoch"]))
    if output_name is not None and stem != output_name:
        raise ValueError(f"{stem!r} is not a checkpoint of {output_name!r}")
    return CheckpointName(stem, "final")


def onetrainer_progress(stem: str) -> tuple[int, int] | None:
    """(step, epoch) of a OneTrainer save from its name (it writes no ss_steps/ss_epoch), kohya's way: the epoch a
    mid-epoch save belongs to counts from 1, as sd-scripts' ``ss_epoch`` does; None for any other name."""
    m = _ONETRAINER_SAVE_RE.search(stem.removesuffix(CHECKPOINT_SUFFIX))
    if m is None:
        return None
    epoch = int(m["epoch"]) + (1 if int(m["in_epoch"]) else 0)
    return int(m["step"]), epoch


def parse_state_dirname(dirname: str, output_name: str | None = None) -> CheckpointName | None:
    """The checkpoint a ``-state`` folder belongs to, or None if the name is not a state folder."""
    if not dirname.endswith(STATE_SUFFIX):
        return None
    try:
        return parse_stem(dirname[: -len(STATE_SUFFIX)], output_name)
    except ValueError:
        return None
