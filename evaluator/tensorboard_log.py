"""eval/* scalars at each checkpoint's step and a grid of its samples, in the trial's logs/evaluator/.

Scoring a step again (``evaluator run --force``, a rewritten checkpoint) must not add a second point at
that step: ``logged.json`` beside the event files records what was logged, and after a repeat the event
files are rewritten as one, without the earlier eval/* scalars and sample grid of that step and in step
order (so curves do not jump back).

Crash safety (a ``kill -9`` at any point, then a restart, leaves every (tag, step) once):

- ``logged.json`` counts a ``tag@step`` *before* its values are written (the intent). A restart that finds
  the key takes the repeat path, which first drops whatever of that step is in the files (nothing, when the
  killed scoring had written nothing yet), so a point flushed just before a kill is never appended twice.
- A repeat writes the rewritten events to ``.events-rewrite.<random>.tmp`` (not an event file to
  TensorBoard), then records in ``logged.json`` under ``"rewrite"`` that file, the event file it becomes and
  the files it replaces (the commit), then renames it and deletes those files, then drops the record. A
  rewrite found recorded (``log_checkpoint``, ``remove_leftover_temp_files``) is finished that way.
- ``remove_leftover_temp_files`` (the daemon calls it at start) also deletes the ``.*.tmp`` files a killed
  writer left: a half-written rewrite, a ``.logged.json.<random>.tmp``.

Each trial's folder keeps one writer open for the life of the process, flushed after every checkpoint
(``close_writers`` closes them). TensorBoard without TensorFlow checksums records in pure Python; the
C CRC of google-crc32c (``tensorboard_crc``) is put in its place when a writer opens.
"""

from __future__ import annotations

import atexit
import json
import os
import socket
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from shared.jsonio import atomic_write_text, remove_temp_files
from shared.records import Metrics
from shared.trial import Trial

LEDGER = "logged.json"
REWRITE = "rewrite"  # the ledger's record of a rewrite under way; no "@", so never a tag@step key
SCALAR_PREFIX = "eval/"
IMAGE_PREFIX = "samples/"
EVENTS_PREFIX = "events.out.tfevents."
REWRITE_TMP_PREFIX = ".events-rewrite."  # no "tfevents" in it: TensorBoard does not read it
# The sample grid is a preview: tiles at most this many pixels on a side (512 px samples at 256, 1024 px at
# 341). Full-size samples are in the results folders and the report; a full-size grid of 8 SD 1.5 samples
# took as long to encode as all 8 sample files, and 4x the event-file space.
GRID_TILE_MAX = 384


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


def preview(image: np.ndarray, limit: int = GRID_TILE_MAX) -> np.ndarray:
    """``image`` shrunk by the smallest whole factor that brings its longer side to ``limit`` or less
    (mean of each factor x factor block; a remainder of under ``factor`` pixels at the edges is cut)."""
    h, w = image.shape[:2]
    factor = -(-max(h, w) // limit)
    if factor <= 1:
        return image
    h2, w2 = h // factor, w // factor
    cut = image[:h2 * factor, :w2 * factor]
    return sum(cut[i::factor, j::factor] for i in range(factor) for j in range(factor)) / factor ** 2


def encode_grid(images: list[np.ndarray], failures: list[str | None] | None = None) -> EncodedGrid:
    """The sample grid of ``preview`` tiles, encoded as torch's ``SummaryWriter.add_image`` would (values
    scaled by 255 and truncated to 8 bits). Separate from ``log_checkpoint`` so that it can run beside the
    metrics."""
    import io

    from PIL import Image

    pixels = (sample_grid([preview(im) for im in images], failures=failures) * 255).clip(0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return EncodedGrid(pixels.shape[0], pixels.shape[1], buf.getvalue())


def log_checkpoint(trial: Trial, step: int, metrics: Metrics, images: list[np.ndarray], tag: str,
                   failures: list[str | None] | None = None, grid: EncodedGrid | None = None) -> None:
    """Log ``metrics`` as eval/<name> scalars and the sample grid as samples/<tag>, at ``step``, replacing
    whatever an earlier scoring logged for the same tag at the same step.

    ``logged.json`` counts the step first. A first scoring of a step then goes through the trial's open
    writer and is flushed before returning. A repeat (also a scoring that a kill interrupted) closes that
    writer and rewrites the event files as one with the new values in place of the step's earlier ones
    (``replace_step``); the next first scoring opens a new writer. ``grid``: the images already encoded
    (``encode_grid``); then ``images`` and ``failures`` are not looked at."""
    logdir = trial.logs_dir / "evaluator"
    key = f"{tag}@{step}"
    grid = grid or encode_grid(images, failures)
    summaries = _summaries(metrics, tag, grid)
    with _lock:
        logdir.mkdir(parents=True, exist_ok=True)
        ledger = _read_ledger(logdir)
        _finish_rewrite(logdir, ledger)
        repeat = key in ledger.counts
        ledger.counts[key] = ledger.counts.get(key, 0) + 1
        if repeat:
            replace_step(logdir, ledger, step, (SCALAR_PREFIX, f"{IMAGE_PREFIX}{tag}"), summaries)
        else:
            _write_ledger(logdir, ledger)  # before the values: a restart then knows they may be there
            writer = _writer(logdir)
            file_writer = writer._get_file_writer()
            for summary in summaries:
                file_writer.add_summary(summary, step)
            writer.flush()


def remove_leftover_temp_files(logdir: Path | Trial) -> int:
    """Clean a trial's logs/evaluator/ (``logdir``, or a ``Trial``) after a killed evaluator: finish a
    rewrite of the event files that ``logged.json`` records as committed, then delete every ``.*.tmp`` left
    there (a rewrite that was not committed, a ``.logged.json.<random>.tmp``). Returns how many temp files
    were deleted. For the daemon at start, holding the trial's lock; a missing folder is 0."""
    if isinstance(logdir, Trial):
        logdir = logdir.logs_dir / "evaluator"
    logdir = Path(logdir)
    if not logdir.is_dir():
        return 0
    with _lock:
        _finish_rewrite(logdir, _read_ledger(logdir))
        return remove_temp_files(logdir)


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


def _summaries(metrics: Metrics, tag: str, grid: EncodedGrid) -> list:
    """The summaries of one scoring, as ``SummaryWriter.add_scalar`` and ``add_image`` would make them."""
    from tensorboard.compat.proto.summary_pb2 import Summary

    out = [Summary(value=[Summary.Value(tag=f"{SCALAR_PREFIX}{name}", simple_value=float(value))])
           for name, value in metrics.model_dump().items() if value is not None]
    image = Summary.Image(height=grid.height, width=grid.width, colorspace=3, encoded_image_string=grid.png)
    out.append(Summary(value=[Summary.Value(tag=f"{IMAGE_PREFIX}{tag}", image=image)]))
    return out


@dataclass
class _Ledger:
    """``logged.json``: how often each ``tag@step`` was (begun to be) logged, and a rewrite under way."""

    counts: dict[str, int] = field(default_factory=dict)
    rewrite: dict | None = None  # {"tmp": name, "file": event file name, "replaces": [event file names]}


def _plain_name(name: object, prefix: str) -> bool:
    return isinstance(name, str) and name.startswith(prefix) and "/" not in name and "\\" not in name


def _read_ledger(logdir: Path) -> _Ledger:
    try:
        data = json.loads((logdir / LEDGER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return _Ledger()
    if not isinstance(data, dict):
        return _Ledger()
    rewrite = data.pop(REWRITE, None)
    counts = {}
    for k, v in data.items():
        try:
            counts[str(k)] = int(v)
        except (TypeError, ValueError):
            continue
    if not (isinstance(rewrite, dict) and _plain_name(rewrite.get("tmp"), REWRITE_TMP_PREFIX)
            and _plain_name(rewrite.get("file"), EVENTS_PREFIX) and isinstance(rewrite.get("replaces"), list)
            and all(_plain_name(n, EVENTS_PREFIX) for n in rewrite["replaces"])):
        rewrite = None
    return _Ledger(counts, rewrite)


def _write_ledger(logdir: Path, ledger: _Ledger) -> None:
    data: dict[str, object] = dict(ledger.counts)
    if ledger.rewrite is not None:
        data[REWRITE] = ledger.rewrite
    atomic_write_text(logdir / LEDGER, json.dumps(data, indent=1, sort_keys=True) + "\n")


def _finish_rewrite(logdir: Path, ledger: _Ledger) -> None:
    """Complete the rewrite ``ledger`` records as committed (its file was whole before the record was
    written): put the file in place, delete the files it replaces, drop the record. Idempotent."""
    rewrite = ledger.rewrite
    if rewrite is None:
        return
    tmp, final = logdir / rewrite["tmp"], logdir / rewrite["file"]
    if tmp.exists():
        os.replace(tmp, final)
    if final.exists():  # else the rewrite is gone (not by us): keep the files it was to replace
        for name in rewrite["replaces"]:
            if name != rewrite["file"]:
                (logdir / name).unlink(missing_ok=True)
    ledger.rewrite = None
    _write_ledger(logdir, ledger)


def _event_files(logdir: Path) -> list[Path]:
    return sorted(p for p in logdir.iterdir() if p.is_file() and p.name.startswith(EVENTS_PREFIX))


def replace_step(logdir: Path, ledger: _Ledger, step: int, prefixes: tuple[str, ...], summaries: list) -> int:
    """Rewrite every event file in ``logdir`` as one: values at ``step`` whose tag starts with one of
    ``prefixes`` are dropped and ``summaries`` are added at ``step`` in their place; summaries are put in
    step order. Other steps, tags and wall times are kept. ``ledger`` (with its counts as they are to be
    saved) records the rewrite as the commit point. Returns how many values were dropped."""
    from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
    from tensorboard.compat.proto import event_pb2
    from tensorboard.summary.writer.record_writer import RecordWriter

    from evaluator import tensorboard_crc

    tensorboard_crc.install()
    _close(logdir)
    files = _event_files(logdir)
    kept, dropped = [], 0
    for f in files:
        for raw in RawEventFileLoader(str(f)).Load():
            ev = event_pb2.Event.FromString(raw)
            if ev.HasField("file_version"):
                continue
            if ev.HasField("summary") and ev.step == step:
                values = [v for v in ev.summary.value if not v.tag.startswith(prefixes)]
                if len(values) != len(ev.summary.value):
                    dropped += len(ev.summary.value) - len(values)
                    if not values:
                        continue
                    del ev.summary.value[:]
                    ev.summary.value.extend(values)
            kept.append(ev)
    now = time.time()
    kept.extend(event_pb2.Event(wall_time=now, step=step, summary=s) for s in summaries)
    kept.sort(key=lambda e: (e.HasField("summary"), e.step if e.HasField("summary") else 0))  # stable
    # TensorBoard reads event files in name order. A writer names its file by second, host, pid and a
    # per-process counter, which sorts "10" before "9"; "0" in the pid's place puts this file before every
    # file a writer opens here in the same second, all of which come after it (it replaces every file there is).
    name = f"{EVENTS_PREFIX}{int(now):010d}.{socket.gethostname()}.0.rewritten"
    fd, tmp = tempfile.mkstemp(prefix=REWRITE_TMP_PREFIX, suffix=".tmp", dir=logdir)
    committed = False
    try:
        with os.fdopen(fd, "wb") as fh:
            records = RecordWriter(fh)
            records.write(event_pb2.Event(wall_time=now, file_version="brain.Event:2").SerializeToString())
            for ev in kept:
                records.write(ev.SerializeToString())
            fh.flush()
            os.fsync(fh.fileno())
        ledger.rewrite = {"tmp": Path(tmp).name, "file": name, "replaces": [f.name for f in files]}
        _write_ledger(logdir, ledger)  # the commit: from here on a restart finishes this rewrite
        committed = True
    finally:
        if not committed:
            ledger.rewrite = None
            Path(tmp).unlink(missing_ok=True)
    _finish_rewrite(logdir, ledger)
    return dropped
