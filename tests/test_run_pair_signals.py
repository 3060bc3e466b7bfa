"""./run_pair.sh under Ctrl-C at random moments, from its first milliseconds on (issue 11, fault 8): each
time nothing it started is left running, and the trial folder says something true."""

from __future__ import annotations

import os
import random
import signal
import time

import pytest

from conftest import write_demo_config
from shared.jsonio import read_model
from shared.records import TrainerStatus
from shared.trial import Trial
from test_run_pair import assert_every_json_valid, processes_of, run_pair

pytestmark = pytest.mark.slow


def _delays(n: int = 20) -> list[float]:
    rng = random.Random(int(os.environ.get("EPOCHSCOPE_SIGINT_SEED", "11")))
    early = [0.0, 0.01, 0.05, 0.1, 0.3, 0.6, 1.0, 1.5, 2.0]  # before the trap, during setup, at the start
    return early + [round(rng.uniform(0.0, 15.0), 2) for _ in range(n - len(early))]


def test_sigint_at_random_moments_leaves_nothing_running(tmp_path):
    for i, delay in enumerate(_delays()):
        folder = tmp_path / f"try{i:02d}"
        folder.mkdir()
        cfg = write_demo_config(folder / "demo.toml", folder / "trial_0001", epochs=40)
        t = Trial(folder / "trial_0001")
        proc = run_pair(str(cfg))
        try:
            time.sleep(delay)
            os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
            out, _ = proc.communicate(timeout=240)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        where = f"try {i}, SIGINT after {delay} s:\n{out}"
        # -2: the signal came before bash had read the script's first line; nothing was started
        assert proc.returncode in (130, -signal.SIGINT), where
        deadline = time.monotonic() + 10  # processes end a moment after their parent saw them go
        while processes_of(folder) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not processes_of(folder), f"left running: {processes_of(folder)}\n{where}"
        if t.status_path.exists():
            status = read_model(t.status_path, TrainerStatus)
            assert status.state == "stopped" and status.exit_code == 130, f"{status}\n{where}"
            if status.last_checkpoint:
                assert (t.root / status.last_checkpoint).exists(), where
        if t.root.exists():
            assert_every_json_valid(t)
