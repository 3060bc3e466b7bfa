"""Shared fixtures. Everything runs offline: no weights or hubs are reachable in CI."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS_DIR = REPO_ROOT / "test-artifacts"


@pytest.fixture(scope="session")
def demo_assets():
    """The cached offline demo assets (built on first use)."""
    from shared.demo_assets import ensure_demo_assets

    return ensure_demo_assets()


@pytest.fixture(scope="session")
def python_exe() -> str:
    return sys.executable


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    ARTIFACTS_DIR.mkdir(exist_ok=True)
    return ARTIFACTS_DIR


DEMO_TOML = """
[model]
base = "demo:tiny"
[dataset]
train_dir = "demo:dataset/train"
validation_dir = "demo:dataset/validation"
resolution = 64
[network]
dim = 4
alpha = 4.0
[training]
max_train_epochs = {epochs}
save_every_n_epochs = 1
train_batch_size = 4
learning_rate = {lr}
seed = 42
[output]
dir = "{out}"
name = "lora"
[evaluation]
prompts = ["a red circle on a blue background, sks style", "a yellow square on a green background, sks style"]
num_samples = {samples}
steps = {steps}
clip_model = "demo:tiny-clip"
"""


def write_demo_config(path: Path, out: Path, epochs: int = 3, lr: float = 5e-3, samples: int = 4,
                      steps: int = 4, extra: str = "") -> Path:
    """A small demo config: 4 optimizer steps per epoch at 64 px."""
    path.write_text(DEMO_TOML.format(epochs=epochs, lr=lr, out=out, samples=samples, steps=steps) + extra)
    return path


def run_cli(module: str, *args: str, timeout: float = 600, check: bool = True, **kw):
    """Run ``python -m trainer|evaluator ...`` for real, as a user would."""
    import subprocess

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    out = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO_ROOT, env=env, capture_output=True,
                         text=True, timeout=timeout, **kw)
    if check and out.returncode != 0:
        raise AssertionError(f"{module} {' '.join(args)} exited {out.returncode}\n{out.stdout}\n{out.stderr}")
    return out


@pytest.fixture(scope="session")
def trained_trial(tmp_path_factory, demo_assets):
    """A trial folder written by the real built-in trainer: lora-000001, lora-000002, lora (3 epochs)."""
    from shared.trial import Trial

    root = tmp_path_factory.mktemp("trained")
    cfg = write_demo_config(root / "demo.toml", root / "trial_0001")
    run_cli("trainer", "run", "--config", str(cfg), "--new")
    return Trial(root / "trial_0001")


def copy_trial(src, dest: Path, with_status: bool = True):
    """A fresh copy of a trained trial's trainer outputs (no evaluations)."""
    import shutil

    from shared.trial import Trial

    dest.mkdir(parents=True, exist_ok=True)
    for p in src.root.iterdir():
        if p.suffix == ".safetensors" or p.name == "params.json" or (with_status and p.name == "trainer_status.json"):
            shutil.copy2(p, dest / p.name)
    return Trial(dest)


@pytest.fixture
def small_disk(tmp_path):
    """A 24 MB tmpfs (a real file system that fills up), mounted for the test; root only. ``resize_disk``
    changes its size, ``fill_disk`` fills it."""
    import subprocess

    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small file system to fill needs root")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(disk)], capture_output=True,
                             text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.strip()}")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


def resize_disk(disk: Path, megabytes: int) -> None:
    import subprocess

    subprocess.run(["mount", "-o", f"remount,size={megabytes}m", str(disk)], check=True, capture_output=True)


def fill_disk(disk: Path, leave_kb: int) -> Path:
    """Fill ``disk`` up to ``leave_kb`` KiB free with one file; returns it (delete it to free the space)."""
    import shutil

    filler = disk / "filler"
    free_kb = shutil.disk_usage(disk).free // 1024
    with open(filler, "wb") as f:
        f.write(b"\0" * max(0, free_kb - leave_kb) * 1024)
    return filler


def proc_state(pid: int) -> str:
    """A process's state letter from /proc (``T`` stopped, ``Z`` zombie, ...), or "gone"."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0].decode()
    except OSError:
        return "gone"


def as_a_terminal_starts_it() -> None:
    """``preexec_fn`` for a child that a test stops with Ctrl-C. A shell at a terminal starts a command with
    SIGINT at its default. A test run started as a background job of a non-interactive shell (``make test
    &``) inherits SIGINT *ignored*: bash cannot trap a signal that was ignored when it started, and Python
    then raises no KeyboardInterrupt, so Ctrl-C would be tested as if it never came."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGQUIT, signal.SIG_DFL)
