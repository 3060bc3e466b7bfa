"""What wakes the daemon, with a real observer on a real folder: a checkpoint written, renamed into place or
deleted does; reading one (which the daemon's own scan does, to check the header) does not."""

from __future__ import annotations

import os
import threading
import time

import torch
from safetensors.torch import save_file

from evaluator.detect import start_observer
from shared.safetensors_info import inspect


def _observer(root):
    wake = threading.Event()
    observer = start_observer(root, wake, polling=False)
    time.sleep(0.3)  # the watch is in place
    wake.clear()
    return observer, wake


def test_reading_a_checkpoint_does_not_wake_the_daemon(tmp_path):
    path = tmp_path / "lora-000001.safetensors"
    save_file({"w": torch.zeros(4)}, str(path))
    observer, wake = _observer(tmp_path)
    try:
        for _ in range(20):
            inspect(path)
            path.read_bytes()
        assert not wake.wait(1.0), "reading a checkpoint woke the daemon: its own scan would wake it for ever"
    finally:
        observer.stop()
        observer.join(timeout=5)


def test_a_checkpoint_renamed_into_place_written_or_deleted_wakes_it(tmp_path):
    observer, wake = _observer(tmp_path)
    try:
        tmp = tmp_path / ".lora-000001.safetensors.tmp"
        save_file({"w": torch.zeros(4)}, str(tmp))
        wake.clear()  # the temporary name is not a checkpoint; its rename is what counts
        os.replace(tmp, tmp_path / "lora-000001.safetensors")
        assert wake.wait(5.0), "a checkpoint renamed into place did not wake the daemon"
        wake.clear()
        save_file({"w": torch.ones(4)}, str(tmp_path / "lora-000002.safetensors"))  # written in place
        assert wake.wait(5.0), "a checkpoint written in place did not wake the daemon"
        time.sleep(0.3)
        wake.clear()
        (tmp_path / "lora-000001.safetensors").unlink()
        assert wake.wait(5.0), "a deleted checkpoint did not wake the daemon"
    finally:
        observer.stop()
        observer.join(timeout=5)
