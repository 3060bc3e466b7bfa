"""eval/* scalars at each checkpoint's step and a grid of its samples, in the trial's logs/evaluator/.

Scoring a step again (``evaluator run --force``, a rewritten checkpoint) must not add a second point at
that step: ``logged.json`` beside the event files records what was logged, and after a repeat the event
files are rewritten as one, without the earlier eval/* scalars and sample grid of that step and in step
order (so curves do not jump back).

Each trial's folder keeps one writer open for the life of the process, flushed after every checkpoint
(``close_writers`` closes them). TensorBoard without TensorFlow checksums records in pure Python; the
C CRC of google-crc32c (``tensorboard_crc``) is put in its place when a writer opens.
"""

from __future__ import annotations

import atexit
import json
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shared.records import Metrics
from shared.trial import Trial

LEDGER = "logged.json"
SCALAR_PREFIX = "eval/"
IMAGE_PREFIX = "samples/"


def sample_grid(images: list[np.ndarray], columns: int = 4, failures: list[str | None] | None = None) -> np.ndarray:
    """HxWx3 grid of equally sized images (NaN shown as black; a failed sample gets a red frame)."""
    if not images:
        return np.zeros((8, 8, 3), np.float32)
    h, w = images[0].shape[:2]
    rows = (len(images) + columns - 1) // columns
    grid = np.zeros((rows * h, columns * w, 3), np.float32)
    for i, im in enumerate(images):
        if im.shape[:2] != (h, w):
            continue
        r, c = divmod(i, columns)
        tile = np.nan_to_num(np.clip(im[..., :3], 0, 1)).astype(np.float32)
        if failures and i < len(failures) and failures[i]:
            b = max(1, min(h, w) // 16)
            tile = tile.copy()
            tile[:b], tile[-b:], tile[:, :b], tile[:, -b:] = (1, 0, 0), (1, 0, 0), (1, 0, 0), (1, 0, 0)
        grid[r * h:(r + 1) * h, c * w:(c + 1) * w] = tile
    return grid


@dataclass(frozen=True)
class EncodedGrid:
    """The sample grid as TensorBoard stores it: PNG bytes and the size."""

    height: int
    width: int
    png: bytes


def encode_grid(images: list[np.ndarray], failures: list[str | None] | None = None) -> EncodedGrid:
    """The sample grid, encoded as torch's ``SummaryWriter.add_image`` would (values scaled by 255 and
    truncated to 8 bits). Separate from ``log_checkpoint`` so that it can run beside the metrics."""
    import io

    from PIL import Image

    pixels = (sample_grid(images, failures=failures) * 255).clip(0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return EncodedGrid(pixels.shape[0], pixels.shape[1], buf.getvalue())


def log_checkpoint(trial: Trial, step: int, metrics: Metrics, images: list[np.ndarray], tag: str,
                   failures: list[str | None] | None = None, grid: EncodedGrid | None = None) -> None:
    """Log ``metrics`` as eval/<name> scalars and the sample grid as samples/<tag>, at ``step``, replacing
    whatever an earlier scoring logged for the same tag at the same step.

    A first scoring of a step goes through the trial's open writer and is flushed before returning. A
    repeat closes that writer, writes its values to a file of their own and rewrites the event files as
    one (``replace_step``); the next first scoring opens a new writer. ``grid``: the images already encoded
    (``encode_grid``); then ``images`` and ``failures`` are not looked at."""
    logdir = trial.logs_dir / "evaluator"
    logdir.mkdir(parents=True, exist_ok=True)
    ledger = _read_ledger(logdir)
    key = f"{tag}@{step}"
    grid = grid or encode_grid(images, failures)
    with _lock:
        if key in ledger:
            _close(logdir)
            earlier = _event_files(logdir)
            writer = _open(logdir)
            try:
                _add(writer, step, metrics, tag, grid)
            finally:
                writer.close()
            replace_step(logdir, earlier, step, (SCALAR_PREFIX, f"{IMAGE_PREFIX}{tag}"))
        else:
            writer = _writer(logdir)
            _add(writer, step, metrics, tag, grid)
            writer.flush()
    ledger[key] = ledger.get(key, 0) + 1
    from shared.jsonio import atomic_write_text

    atomic_write_text(logdir / LEDGER, json.dumps(ledger, indent=1, sort_keys=True) + "\n")


def close_writers() -> None:
    """Flush and close every open writer (the daemon calls this when it stops; also run at exit)."""
    with _lock:
        for logdir in list(_writers):
            _close(logdir)


_writers: dict[Path, object] = {}  # logs/evaluator folder -> its open SummaryWriter
_lock = threading.RLock()
atexit.register(close_writers)


def _open(logdir: Path):
    from torch.utils.tensorboard import SummaryWriter

    from evaluator import tensorboard_crc

    tensorboard_crc.install()
    return SummaryWriter(str(logdir))


def _writer(logdir: Path):
    """The open writer of ``logdir``; a new one when there is none or its file was moved away (a trainer's
    ``--new`` backs up logs/)."""
    writer = _writers.get(logdir)
    if writer is not None and not Path(writer._get_file_writer().event_writer._file_name).exists():
        _close(logdir)
        writer = None
    if writer is None:
        writer = _writers[logdir] = _open(logdir)
    return writer


def _close(logdir: Path) -> None:
    writer = _writers.pop(logdir, None)
    if writer is not None:
        try:
            writer.close()
        except OSError:
            pass  # its folder is gone: nothing left to flush into


def _add(writer, step: int, metrics: Metrics, tag: str, grid: EncodedGrid) -> None:
    from tensorboard.compat.proto.summary_pb2 import Summary

    for name, value in metrics.model_dump().items():
        if value is not None:
            writer.add_scalar(f"{SCALAR_PREFIX}{name}", value, step)
    image = Summary.Image(height=grid.height, width=grid.width, colorspace=3, encoded_image_string=grid.png)
    writer._get_file_writer().add_summary(Summary(value=[Summary.Value(tag=f"{IMAGE_PREFIX}{tag}", image=image)]), step)


def _read_ledger(logdir: Path) -> dict[str, int]:
    try:
        data = json.loads((logdir / LEDGER).read_text(encoding="utf-8"))
        return {str(k): int(v) for k, v in data.items()} if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _event_files(logdir: Path) -> list[Path]:
    return sorted(p for p in logdir.iterdir() if p.is_file() and p.name.startswith("events.out.tfevents."))


def replace_step(logdir: Path, earlier: list[Path], step: int, prefixes: tuple[str, ...]) -> int:
    """Rewrite every event file in ``logdir`` as one: values at ``step`` whose tag starts with one of
    ``prefixes`` are dropped from the ``earlier`` files (the newest file holds their replacements), and
    summaries are put in step order. Other steps, tags and wall times are kept. Returns how many values
    were dropped."""
    from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
    from tensorboard.compat.proto import event_pb2
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    files = _event_files(logdir)
    old = set(earlier)
    kept, dropped = [], 0
    for f in files:
        for raw in RawEventFileLoader(str(f)).Load():
            ev = event_pb2.Event.FromString(raw)
            if ev.HasField("file_version"):
                continue
            if f in old and ev.HasField("summary") and ev.step == step:
                values = [v for v in ev.summary.value if not v.tag.startswith(prefixes)]
                if len(values) != len(ev.summary.value):
                    dropped += len(ev.summary.value) - len(values)
                    if not values:
                        continue
                    del ev.summary.value[:]
                    ev.summary.value.extend(values)
            kept.append(ev)
    kept.sort(key=lambda e: (e.HasField("summary"), e.step if e.HasField("summary") else 0))  # stable
    writer = EventFileWriter(str(logdir), filename_suffix=".rewritten")
    for ev in kept:
        writer.add_event(ev)
    writer.close()
    if not any(p not in files for p in _event_files(logdir)):
        return 0  # nothing was written: keep the old files rather than lose them
    for f in files:
        f.unlink(missing_ok=True)
    return dropped
