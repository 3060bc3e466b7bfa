"""The benchmarks still run, end to end, on the smallest settings: the GPU measurements are taken in short
sessions on a lent machine (bench/gpu_bench.sh), where a bench broken by a change here costs the whole
session. Nothing here is timed: the lines are checked to be printed and well-formed, not their numbers."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from conftest import REPO_ROOT

pytestmark = pytest.mark.slow
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def _run(*cmd: str, timeout: float = 600) -> str:
    out = subprocess.run(list(cmd), cwd=REPO_ROOT, env=ENV, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"{' '.join(cmd)} exited {out.returncode}\n{out.stdout}\n{out.stderr[-4000:]}"
    return out.stdout


def test_bench_evaluator_on_the_sdxl_demo_prints_every_side_by_side_line(demo_assets):
    out = _run(sys.executable, "bench/bench_evaluator.py", "--model", "demo-sdxl", "--checkpoints", "2",
               "--samples", "2", "--steps", "2", "--train-epochs", "0")
    assert out.startswith("tiny SDXL-layout demo model: 2 checkpoints, 2 samples x 2 steps, 64 px")
    assert re.search(r"plain diffusers generation of the same images: median \d+\.\d\d s \(each: [\d.]+, [\d.]+\)", out)
    assert re.search(r"ratio daemon / plain generation, checkpoint by checkpoint: first \d+\.\d\dx, then median", out)
    assert re.search(r"fresh process per checkpoint: median \d+\.\d\d s -> \d+\.\dx the daemon", out)
    assert "detection latency: daemon median" in out


def test_bench_acceleration_prints_each_variant_against_eager(demo_assets):
    out = _run(sys.executable, "bench/bench_acceleration.py", "--samples", "2", "--steps", "2", "--repeats", "1",
               "--no-compile")
    assert out.startswith("demo model (SD 1.x layout): 2 samples x 2 steps, 64 px")
    assert re.search(r"eager +\d+\.\d{3} s +\(1\.00x eager", out)
    assert re.search(r"channels_last +\d+\.\d{3} s +\(\d+\.\d\dx eager", out)


def test_gpu_bench_script_sets_up_and_refuses_an_unknown_part(demo_assets, tmp_path):
    env = {**ENV, "PY": sys.executable, "OUT": str(tmp_path)}
    ok = subprocess.run(["bash", "bench/gpu_bench.sh", "check"], cwd=REPO_ROOT, env=env, capture_output=True,
                        text=True, timeout=300)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    setup = (tmp_path / "setup.log").read_text()
    assert re.search(r"torch \S+ \| cuda (True|False) \| diffusers \S+", setup) and "demo assets ready" in setup
    bad = subprocess.run(["bash", "bench/gpu_bench.sh", "nonsense"], cwd=REPO_ROOT, env=env, capture_output=True,
                         text=True, timeout=300)
    assert bad.returncode == 2 and "unknown part nonsense" in bad.stderr
