"""Which tensors of a .safetensors file hold NaN or infinity, read straight from the file's bytes.

One NaN in a LoRA weight makes every output of its layer NaN, so every later gradient and step is NaN
too: a network file with one is a run that has diverged for good, and generating samples from it only
yields black images. The check reads each float tensor as raw integers through a memory map and tests
the exponent bits (all ones means NaN or infinity), so it needs no torch, handles bfloat16 (which numpy
cannot hold), and never unpickles anything.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# safetensors dtype -> (unsigned integer type of the same width, exponent mask)
_EXPONENT_BITS: dict[str, tuple[type, int]] = {
    "F64": (np.uint64, 0x7FF0_0000_0000_0000),
    "F32": (np.uint32, 0x7F80_0000),
    "F16": (np.uint16, 0x7C00),
    "BF16": (np.uint16, 0x7F80),
}


@dataclass(frozen=True)
class NonFinite:
    values: int  # NaN or infinite values in the file
    total: int  # floating-point values in the file
    tensors: tuple[str, ...]  # the tensors that hold them, in file order

    def __bool__(self) -> bool:
        return self.values > 0

    def describe(self, path: Path | str) -> str:
        where = (f"in {self.tensors[0]}" if len(self.tensors) == 1
                 else f"in {len(self.tensors)} tensors, the first {self.tensors[0]}")
        return f"{Path(path).name} holds {self.values} NaN or infinite values of {self.total} ({where})"


def nonfinite_values(path: Path | str) -> NonFinite:
    """NaN and infinite values in a complete .safetensors file. Raises OSError or ValueError for a file
    that cannot be read or whose header is not safetensors'."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
        header.pop("__metadata__", None)
        data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + n) if path.stat().st_size > 8 + n else None
        values = total = 0
        tensors = []
        for name, entry in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
            kind = _EXPONENT_BITS.get(entry["dtype"])
            begin, end = entry["data_offsets"]
            if kind is None or data is None or end <= begin:
                continue
            uint, mask = kind
            raw = data[begin:end].view(uint)
            bad = int(np.count_nonzero((raw & uint(mask)) == uint(mask)))
            total += raw.size
            if bad:
                values += bad
                tensors.append(name)
    except (struct.error, KeyError, TypeError, AttributeError, IndexError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a readable safetensors file ({e})") from e
    return NonFinite(values, total, tuple(tensors))
