"""Print pip constraints that pin every dependency in pyproject.toml to its declared floor (``>=X`` -> ``==X``).

``make test-floors`` installs with them, so the floors we declare are floors we have run. torch and
torchvision are left to constraints.txt: the builds on the machine's disk (their floors would mean a
multi-GB download of an old CUDA build).
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

SKIP = {"torch", "torchvision"}


def floor_pins(pyproject: Path) -> list[str]:
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    requirements = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        requirements += extra
    pins = {}
    for requirement in requirements:
        match = re.fullmatch(r"\s*([A-Za-z0-9_.\-]+)\s*>=\s*([0-9][A-Za-z0-9.]*)\s*", requirement.split(";")[0])
        if not match:
            raise SystemExit(f"{pyproject}: {requirement!r} has no plain '>=' floor to pin")
        name = re.sub(r"[-_.]+", "-", match.group(1)).lower()
        if name not in SKIP:
            pins[name] = f"{name}=={match.group(2)}"
    return sorted(pins.values())


if __name__ == "__main__":
    root = Path(__file__).resolve().parent.parent
    sys.stdout.write("".join(f"{pin}\n" for pin in floor_pins(root / "pyproject.toml")))
