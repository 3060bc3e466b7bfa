"""The evaluator daemon against the seed's design, measured side by side in one run on the CPU demo.

1. Detection latency: checkpoint complete -> evaluation starts, for the watchdog daemon, against a 30 s
   polling loop given the same completion times (its latency is the wait until its next tick).
2. Per-checkpoint time: the daemon (models loaded once) against a fresh process per checkpoint
   (`python -m evaluator run` for each new file: loads the pipeline and CLIP every time).

  python bench/bench_evaluator.py [--checkpoints 4]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}
POLL_PERIOD_S = 30.0


def wait_for(cond, timeout=300):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.02)
    raise TimeoutError


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoints", type=int, default=4)
    args = ap.parse_args()
    from conftest import write_demo_config

    from shared.jsonio import read_model, write_model
    from shared.records import EvaluationState, TrainerStatus
    from shared.trial import Trial

    tmp = Path(tempfile.mkdtemp(prefix="bench-eval-"))
    n = args.checkpoints
    cfg = write_demo_config(tmp / "c.toml", tmp / "src", epochs=n, samples=8, steps=25)
    subprocess.run([sys.executable, "-m", "trainer", "run", "--config", str(cfg), "--new"], cwd=REPO, env=ENV,
                   check=True, capture_output=True)
    src = Trial(tmp / "src")
    ckpts = [c.path for c in src.checkpoints("lora")]

    def fresh_trial(name: str) -> Trial:
        t = Trial(tmp / name)
        t.root.mkdir()
        shutil.copy2(src.params_path, t.params_path)
        st = read_model(src.status_path, TrainerStatus)
        st.state = "running"
        write_model(t.status_path, st)
        return t

    # 1 + 2a: the daemon, files landing one by one (written to a temp name, then renamed: complete at once)
    t = fresh_trial("daemon")
    proc = subprocess.Popen([sys.executable, "-m", "evaluator", "watch", "--dir", str(t.root), "--device", "cpu"],
                            cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = lambda: read_model(t.evaluation_state_path, EvaluationState) if t.evaluation_state_path.exists() else None  # noqa: E731
    wait_for(lambda: (s := state()) is not None and any(e.name == "baseline" and e.status == "done" for e in s.entries.values()))
    started = time.time()
    complete_at = {}
    for path in ckpts:
        time.sleep(2.0)
        tmp_path = t.root / f".{path.name}.part"
        shutil.copy2(path, tmp_path)
        complete_at[path.stem] = time.time()
        os.replace(tmp_path, t.root / path.name)
        wait_for(lambda: any(e.name == path.stem and e.status == "done" for e in state().entries.values()))
    proc.terminate()
    proc.wait(timeout=60)
    entries = {e.name: e for e in state().entries.values()}
    latency = [entries[k].started_at.timestamp() - v for k, v in complete_at.items()]
    polled = [POLL_PERIOD_S - ((v - started) % POLL_PERIOD_S) for v in complete_at.values()]
    daemon_each = [entries[k].duration_s for k in complete_at]

    # 2b: a fresh process per checkpoint (baseline scored first, not counted)
    t2 = fresh_trial("per-process")
    subprocess.run([sys.executable, "-m", "evaluator", "run", "--dir", str(t2.root), "--device", "cpu"], cwd=REPO,
                   env=ENV, check=True, capture_output=True)
    process_each = []
    for path in ckpts:
        shutil.copy2(path, t2.root / path.name)
        t0 = time.monotonic()
        subprocess.run([sys.executable, "-m", "evaluator", "run", "--dir", str(t2.root), "--device", "cpu"], cwd=REPO,
                       env=ENV, check=True, capture_output=True)
        process_each.append(time.monotonic() - t0)

    med = statistics.median
    print(f"{n} checkpoints, 8 samples x 25 DDIM steps at 64 px, CPU ({os.cpu_count()} cores)")
    print(f"detection latency: daemon median {med(latency) * 1000:.0f} ms (max {max(latency) * 1000:.0f} ms); "
          f"30 s polling loop median {med(polled):.1f} s -> {med(polled) / med(latency):.0f}x faster")
    print(f"per checkpoint: daemon median {med(daemon_each):.2f} s; fresh process per checkpoint median "
          f"{med(process_each):.2f} s -> {med(process_each) / med(daemon_each):.1f}x faster")
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
