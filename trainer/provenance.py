"""What params.json records about the software that produced a run."""

from __future__ import annotations

import subprocess
from importlib import metadata
from pathlib import Path

PACKAGES = ("epochscope", "torch", "diffusers", "transformers", "peft", "accelerate", "safetensors", "open_clip_torch")


def package_versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


TRAINING_PACKAGES = ("torch", "diffusers", "transformers", "accelerate", "safetensors", "bitsandbytes", "xformers")


def venv_versions(python: str, packages: tuple[str, ...] = TRAINING_PACKAGES) -> dict[str, str]:
    """Package versions as another Python (sd-scripts' venv) sees them; {} if it cannot say."""
    import json

    code = ("import json, sys\nfrom importlib import metadata\nout = {}\nfor n in sys.argv[1:]:\n"
            "    try:\n        out[n] = metadata.version(n)\n    except metadata.PackageNotFoundError:\n"
            "        pass\nprint(json.dumps(out))")
    try:
        done = subprocess.run([python, "-c", code, *packages], capture_output=True, text=True, timeout=60)
        data = json.loads(done.stdout) if done.returncode == 0 else {}
    except (OSError, subprocess.TimeoutExpired, ValueError):
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def git_commit(folder: Path | str, root: bool = False) -> str | None:
    """HEAD of the git checkout containing ``folder``, or None (not a checkout, or no git). With
    ``root``, ``folder`` must be the checkout's top: a copied sd-scripts tree inside another repository
    (no .git of its own) must not report that repository's commit."""
    try:
        out = subprocess.run(["git", "-C", str(folder), "rev-parse", "HEAD", "--show-toplevel"], capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = out.stdout.split()
    if out.returncode != 0 or len(lines) != 2:
        return None
    if root and Path(lines[1]).resolve() != Path(folder).resolve():
        return None
    return lines[0]
