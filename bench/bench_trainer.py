"""Steps per second of the built-in backend, measured from the worker's own progress events.

  python bench/bench_trainer.py            # the CPU demo model (64 px, batch 4)
  python bench/bench_trainer.py --sd15     # SD-1.5-architecture UNet, random weights, 512 px, bf16, batch 1 (GPU)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))


def run(config: Path) -> tuple[float, float, int]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    t0 = time.monotonic()
    subprocess.run([sys.executable, "-m", "trainer", "run", "--config", str(config), "--new"], cwd=REPO, env=env,
                   check=True, capture_output=True)
    wall = time.monotonic() - t0
    from shared.config import load_config

    log = (Path(load_config(config).output.dir) / "training.log").read_text().splitlines()
    events = [json.loads(x.split(" ", 1)[1]) for x in log if x.startswith("@@epochscope ")]
    prog = [e for e in events if e["event"] == "progress"]
    first, last = prog[min(2, len(prog) - 2)], prog[-1]  # skip warm-up steps
    rate = (last["step"] - first["step"]) / (last["elapsed"] - first["elapsed"])
    return rate, wall, last["step"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sd15", action="store_true")
    ap.add_argument("--epochs", type=int, default=6)
    args = ap.parse_args()
    from conftest import write_demo_config

    tmp = Path(tempfile.mkdtemp(prefix="bench-trainer-"))
    cfg = write_demo_config(tmp / "c.toml", tmp / "t", epochs=args.epochs)
    if args.sd15:
        import torch

        if not torch.cuda.is_available():
            print("sd15: no CUDA device here; skipped (run on a GPU machine)")
            return 0
        from _sd_scripts_helpers import build_sd15_random

        model = build_sd15_random(REPO / ".cache" / "sd15-random")
        text = cfg.read_text().replace('base = "demo:tiny"', f'base = "{model}"').replace("resolution = 64", "resolution = 512")
        text = text.replace("train_batch_size = 4", "train_batch_size = 1").replace(
            "seed = 42", 'seed = 42\nmixed_precision = "bf16"\ndevice = "cuda"')
        cfg.write_text(text.replace(f"max_train_epochs = {args.epochs}", "max_train_epochs = 1"))
    rate, wall, steps = run(cfg)
    label = "SD-1.5 arch, 512 px, bf16, batch 1" if args.sd15 else "demo model, 64 px, batch 4, CPU"
    print(f"builtin backend ({label}): {rate:.2f} steps/s ({1 / rate:.3f} s/step) over {steps} steps; "
          f"whole run incl. model load {wall:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
