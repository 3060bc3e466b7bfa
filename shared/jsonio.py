"""Atomic JSON files: a reader never sees half a file, and every read goes through a pydantic model.
Also atomic folders (``build_folder``): a model folder appears whole or not at all."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from collections.abc import Callable
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from shared.errors import FileFormatError

M = TypeVar("M", bound=BaseModel)

_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write_bytes(path: Path | str, data: bytes) -> None:
    """Write to a temp file in the same folder, flush, fsync, then rename over the target."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(e, OSError) and e.filename is None:
            e.filename = str(path)  # "No space left on device" says which file
        raise
    _fsync_dir(path.parent)


TEMP_GLOB = ".*.tmp"  # what atomic_write_bytes (and writers named like it) leave behind when killed


def remove_temp_files(folder: Path | str, recursive: bool = False) -> int:
    """Delete the temp files killed atomic writers left in ``folder`` (and below, with ``recursive``);
    only for a folder whose writers are known to be stopped. Returns how many were deleted."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    removed = 0
    for p in (folder.rglob if recursive else folder.glob)(TEMP_GLOB):
        if p.is_file():
            p.unlink(missing_ok=True)
            removed += 1
    return removed


def _fsync_dir(folder: Path) -> None:
    # The rename itself must survive a power cut; not every OS lets us open a directory.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_text(path: Path | str, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_model(path: Path | str, model: BaseModel) -> None:
    """Atomically write a contract model as indented JSON."""
    atomic_write_text(path, model.model_dump_json(indent=2) + "\n")


def _first_error_field(err: ValidationError) -> tuple[str | None, str]:
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first.get("loc", ())) or None
    return loc, f"{first.get('msg', 'invalid value')} ({err.error_count()} problem(s))"


def parse_model(path: Path | str, raw: bytes | str, model: type[M]) -> M:
    """Validate ``raw`` JSON as ``model``; errors name the file and the first bad field."""
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise FileFormatError(path, f"not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise FileFormatError(path, "expected a JSON object at the top level")
    expected = model.model_fields.get("schema_version")
    if expected is not None and "schema_version" in data:
        want = expected.default
        if data["schema_version"] != want:
            raise FileFormatError(
                path,
                f"schema_version {data['schema_version']!r} is not supported (this version reads {want}); "
                "upgrade epochscope or regenerate the file",
                field="schema_version",
            )
    try:
        return model.model_validate(data)
    except ValidationError as e:
        field, problem = _first_error_field(e)
        raise FileFormatError(path, problem, field=field) from None


def read_bytes(path: Path, error: type[FileFormatError] = FileFormatError) -> bytes:
    """A file's bytes; a missing or unreadable file raises ``error`` naming it."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise error(path, "file not found") from None
    except OSError as e:
        raise error(path, f"cannot read ({e.strerror})") from None


def read_model(path: Path | str, model: type[M]) -> M:
    """Read and validate a contract file; a missing or malformed file raises FileFormatError."""
    path = Path(path)
    return parse_model(path, read_bytes(path), model)


def read_model_or_none(path: Path | str, model: type[M]) -> M | None:
    """Like read_model, but a file that does not exist yet is ``None`` (malformed still raises)."""
    path = Path(path)
    if not path.exists():
        return None
    return read_model(path, model)


def build_folder(dest: Path | str, build: Callable[[Path], None], done_marker: str = "model_index.json") -> Path:
    """Build a folder in a temporary sibling with ``build(tmp)`` and rename it to ``dest``, so a reader
    (or a build killed half way) never leaves a half-built folder under the final name. Built once:
    a ``dest`` holding ``done_marker`` is returned as it is, also when another process finished first."""
    import shutil

    dest = Path(dest)
    if (dest / done_marker).exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        build(tmp)
        if dest.exists() and not (dest / done_marker).exists():
            shutil.rmtree(dest)  # what a killed build left before this function existed
        try:
            os.rename(tmp, dest)
        except OSError:  # another process renamed its copy first (dest exists and is not empty): use theirs
            if not (dest / done_marker).exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest
