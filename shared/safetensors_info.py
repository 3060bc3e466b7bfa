"""Inspect a .safetensors file from its header alone: never loads tensors, never unpickles.

Layout: 8-byte little-endian header length N, N bytes of JSON, then the tensor data. The JSON maps
tensor names to ``{dtype, shape, data_offsets: [begin, end]}`` plus optional ``__metadata__``
(string to string). A complete file is exactly ``8 + N + max(end)`` bytes long, which is how we tell a
file that sd-scripts is still writing in place from a finished one.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

MAX_HEADER_BYTES = 100 * 1024 * 1024  # the safetensors library's own limit


class Completeness(str, Enum):
    COMPLETE = "complete"
    INCOMPLETE = "incomplete"  # still being written, or truncated: wait and look again
    CORRUPT = "corrupt"  # can never become complete: header is garbage or the file is too long


@dataclass(frozen=True)
class SafetensorsInfo:
    path: Path
    size: int
    header_length: int | None = None
    expected_size: int | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    tensor_names: tuple[str, ...] = ()
    completeness: Completeness = Completeness.INCOMPLETE
    reason: str = ""

    @property
    def is_complete(self) -> bool:
        return self.completeness is Completeness.COMPLETE

    def metadata_int(self, key: str) -> int | None:
        """An integer ``ss_*`` metadata value, or None when absent or not a number."""
        value = self.metadata.get(key)
        try:
            return int(str(value).strip()) if value is not None else None
        except ValueError:
            return None


def inspect(path: Path | str) -> SafetensorsInfo:
    """Read only the header. Never raises for bad content: the verdict is in ``completeness``."""
    path = Path(path)
    try:
        size = os.stat(path).st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return SafetensorsInfo(path, size, reason=f"only {size} bytes, header length not written yet")
            (n,) = struct.unpack("<Q", head)
            if n == 0 or n > MAX_HEADER_BYTES:
                return SafetensorsInfo(path, size, n, completeness=Completeness.CORRUPT,
                                       reason=f"header length {n} is not plausible")
            raw = f.read(n)
    except FileNotFoundError:
        return SafetensorsInfo(path, 0, reason="file does not exist (yet)")
    except OSError as e:
        return SafetensorsInfo(path, 0, reason=f"cannot read: {e.strerror}")
    if len(raw) < n:
        return SafetensorsInfo(path, size, n, reason=f"header is {n} bytes but only {len(raw)} are written")
    try:
        header = json.loads(raw)
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
        metadata = header.pop("__metadata__", None) or {}
        if not isinstance(metadata, dict):
            raise ValueError("__metadata__ is not an object")
        end = 0
        for name, entry in header.items():
            begin, stop = entry["data_offsets"]
            if not (isinstance(begin, int) and isinstance(stop, int) and 0 <= begin <= stop):
                raise ValueError(f"tensor {name!r} has invalid data_offsets")
            end = max(end, stop)
    except (ValueError, KeyError, TypeError) as e:
        return SafetensorsInfo(path, size, n, completeness=Completeness.CORRUPT,
                               reason=f"invalid header: {e}")
    expected = 8 + n + end
    info = dict(path=path, size=size, header_length=n, expected_size=expected,
                metadata={str(k): str(v) for k, v in metadata.items()}, tensor_names=tuple(header))
    if size == expected:
        return SafetensorsInfo(**info, completeness=Completeness.COMPLETE)
    if size < expected:
        return SafetensorsInfo(**info, completeness=Completeness.INCOMPLETE,
                               reason=f"{size} of {expected} bytes written")
    return SafetensorsInfo(**info, completeness=Completeness.CORRUPT,
                           reason=f"{size} bytes but the header accounts for {expected}")


def is_complete(path: Path | str) -> bool:
    return inspect(path).is_complete
