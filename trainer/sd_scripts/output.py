"""Parse sd-scripts' console output (stdout prints, rich or simple logging, tqdm bars split on \\r)."""

from __future__ import annotations

import re
from pathlib import Path

from trainer.backends.base import BackendError, CheckpointSaved, EpochStarted, Event, Progress, Totals

_BAR = re.compile(r"^steps:\s*\d+%\|[^|]*\|\s*(\d+)/(\d+)\s*\[")
_LOSS = re.compile(r"avr_loss=([-+0-9.eE]+|nan|inf)")
_EPOCH = re.compile(r"^epoch (\d+)/(\d+)$")
_SAVING = re.compile(r"saving checkpoint: (.+?\.safetensors)\s*$")
_TOTAL = re.compile(r"(?:total optimization steps|steps for \d+ epochs is) / .*?:\s*(\d+)\s*$")
_EPOCHS = re.compile(r"num epochs / .*?:\s*(\d+)\s*$")
_EXCEPTION = re.compile(r"^(?:[\w.]+\.)?(\w*(?:Error|Exception)|KeyboardInterrupt)(?::\s*(.*))?$")
_OOM = re.compile(r"CUDA out of memory|OutOfMemoryError")


def parse_line(line: str) -> list[Event]:
    """Events in one piece of output (the caller splits on both \\r and \\n)."""
    text = line.strip()
    if not text:
        return []
    m = _BAR.match(text)
    if m:
        loss = _LOSS.search(text)
        avg = float(loss.group(1)) if loss else None
        return [Progress(step=int(m.group(1)), total_steps=int(m.group(2)), avg_loss=avg, loss=avg)]
    m = _EPOCH.match(text)
    if m:
        return [EpochStarted(int(m.group(1)), int(m.group(2)))]
    m = _SAVING.search(text)
    if m and text.startswith("saving checkpoint:"):  # the stdout print; the logger's copy may be wrapped
        return [CheckpointSaved(Path(m.group(1)))]
    m = _TOTAL.search(text)
    if m:
        return [Totals(total_steps=int(m.group(1)))]
    m = _EPOCHS.search(text)
    if m:
        return [Totals(total_epochs=int(m.group(1)))]
    if _OOM.search(text):
        return [BackendError(f"out of GPU memory: {text[:300]}")]
    m = _EXCEPTION.match(text)
    if m and m.group(1) not in ("Error",):
        return [BackendError(text[:500])]
    return []
