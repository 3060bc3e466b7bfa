"""Room on disk for the tests that write multi-gigabyte models: a machine short of space skips them with the
numbers, rather than failing half way through a 6.5 GB write (and leaving the rest of the suite short too)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

MARGIN_GB = 1.0  # what the rest of the suite (logs, samples, TensorBoard) writes beside the big model

# A test that builds, writes or loads a full-size model (up to 10 GB of memory, 6.5 GB of disk) runs on one
# pytest-xdist worker with every other such test, so that two never run at once (scripts/run_tests.sh runs
# the suite on several workers). Without xdist the mark does nothing.
FULL_SIZE_MODEL = pytest.mark.xdist_group("full_size_model")


def skip_unless_free_disk(where: Path, need_gb: float, what: str) -> None:
    """Skip the calling test unless the file system holding ``where`` has ``need_gb`` + a margin free."""
    probe = Path(where).resolve()
    while not probe.exists():
        probe = probe.parent
    free_gb = shutil.disk_usage(probe).free / 2**30
    if free_gb < need_gb + MARGIN_GB:
        pytest.skip(f"{what} needs {need_gb:.1f} GB free on disk (+{MARGIN_GB:.0f} GB margin) at {probe}; "
                    f"{free_gb:.1f} GB free")
