"""Values computed from a file, kept until the file changes: a daemon that rescans its folders every few
seconds (and on every trainer status write) must not reread or reparse files that have not changed."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Generic, TypeVar

T = TypeVar("T")


class StatCache(Generic[T]):
    """``compute(path)`` once per version of the file, told by (inode, size, mtime_ns). The file is stat'ed
    before it is read, so a change while it is read leaves an older key with the newer value, and the next
    call computes again: never a stale value, at worst one read too many."""

    def __init__(self) -> None:
        self._cache: dict[Path, tuple[tuple[int, int, int], T]] = {}

    def get(self, path: Path, compute: Callable[[Path], T], keep: Callable[[T], bool] = lambda value: True) -> T:
        """The value for the file now; raises FileNotFoundError when it is gone. ``keep``: whether a value
        may be reused (a file still being written is read again each time)."""
        st = os.stat(path)
        key = (st.st_ino, st.st_size, st.st_mtime_ns)
        hit = self._cache.get(path)
        if hit is not None and hit[0] == key:
            return hit[1]
        value = compute(path)
        if keep(value):
            self._cache[path] = (key, value)
        else:
            self._cache.pop(path, None)
        return value
