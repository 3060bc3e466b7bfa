"""./run_pair.sh --dry-run: which GPUs each process gets and the exact commands, for 0, 1, 2 and 4 GPUs
(a stand-in nvidia-smi on PATH lists them) and with the TRAIN_GPUS / EVAL_GPU overrides. Starts nothing."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from _report_helpers import REPO_ROOT

RUN_PAIR = REPO_ROOT / "run_pair.sh"


def fake_nvidia_smi(folder: Path, gpus: int) -> Path:
    """An ``nvidia-smi -L`` that lists ``gpus`` GPUs the way the real one does."""
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "nvidia-smi"
    lines = "".join(f'echo "GPU {i}: NVIDIA H100 80GB HBM3 (UUID: GPU-{i:08d})"\n' for i in range(gpus))
    script.write_text(f"#!/bin/sh\n{lines}")
    script.chmod(0o755)
    return folder


def plan(tmp_path: Path, *args: str, gpus: int | None = 0, cwd: Path = REPO_ROOT, **env: str) -> dict[str, str]:
    """{"placement": first line, "trainer"/"sweep"/"evaluator": that process's CUDA_VISIBLE_DEVICES and command}."""
    path = os.environ["PATH"]
    if gpus is not None:
        path = f"{fake_nvidia_smi(tmp_path / f'gpus{gpus}', gpus)}:{path}"
    run_env = {k: v for k, v in os.environ.items()
               if k not in ("TRAIN_GPUS", "EVAL_GPU", "OMP_NUM_THREADS", "CUDA_VISIBLE_DEVICES")}
    out = subprocess.run([str(RUN_PAIR), "--dry-run", *args], cwd=cwd, env={**run_env, "PATH": path, **env},
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    result = {"placement": lines[0]}
    for line in lines[1:]:
        m = re.match(r"run_pair: (trainer|sweep|evaluator): (.*)", line)
        if m:
            result[m.group(1)] = m.group(2)
    return result


@pytest.mark.parametrize("gpus, train, evaluate, sharing", [
    (0, "", "", None),
    (1, "0", "0", "concurrent"),
    (2, "0", "1", None),
    (4, "0,1,2", "3", None),
])
def test_gpu_placement_follows_the_gpu_count(tmp_path, gpus, train, evaluate, sharing):
    p = plan(tmp_path, gpus=gpus)
    assert p["trainer"].startswith(f"CUDA_VISIBLE_DEVICES={train} ")
    assert p["evaluator"].startswith(f"CUDA_VISIBLE_DEVICES={evaluate} ")
    assert ("--device cpu" if gpus == 0 else "--device cuda:0") in p["evaluator"]
    assert ("--gpu-sharing" in p["evaluator"]) == (sharing is not None)
    if sharing:
        assert f"--gpu-sharing {sharing}" in p["evaluator"]
    demo = REPO_ROOT / "configs" / "demo.toml"
    assert p["trainer"].endswith(f"-m trainer run --config {demo} --new")
    assert p["evaluator"].endswith(f"--dir {REPO_ROOT / 'runs/demo/trial_0001'} "
                                   + ("--device cpu" if gpus == 0 else "--device cuda:0")
                                   + (f" --gpu-sharing {sharing}" if sharing else "") + " --exit-when-done")


def test_one_gpu_shares_it_as_the_config_says(tmp_path):
    cfg = tmp_path / "paused.toml"
    cfg.write_text((REPO_ROOT / "configs/demo.toml").read_text()
                   .replace("[evaluation]\n", '[evaluation]\ngpu_sharing = "pause-trainer"\n')
                   .replace('dir = "../runs/demo/trial_0001"', f'dir = "{tmp_path}/trial_0007"'))
    p = plan(tmp_path, str(cfg), gpus=1)
    assert "--gpu-sharing pause-trainer" in p["evaluator"] and f"--dir {tmp_path}/trial_0007" in p["evaluator"]


@pytest.mark.parametrize("env, gpus, train, evaluate, shared", [
    ({"TRAIN_GPUS": "0,1", "EVAL_GPU": "2"}, 4, "0,1", "2", False),
    ({"EVAL_GPU": "0"}, 4, "1,2,3", "0", False),      # the trainer gets every other GPU
    ({"TRAIN_GPUS": "1"}, 4, "1", "3", False),        # the evaluator gets the last free one
    ({"TRAIN_GPUS": "0"}, 1, "0", "0", True),         # none free: it shares the trainer's
    ({"TRAIN_GPUS": "0,1", "EVAL_GPU": "1"}, 2, "0,1", "1", True),
    ({"EVAL_GPU": "cpu"}, 1, "0", "", False),         # a small GPU for training, scoring on the CPU
    ({"TRAIN_GPUS": "cpu"}, 1, "", "0", False),
])
def test_overrides(tmp_path, env, gpus, train, evaluate, shared):
    p = plan(tmp_path, gpus=gpus, **env)
    assert p["trainer"].startswith(f"CUDA_VISIBLE_DEVICES={train} ")
    assert p["evaluator"].startswith(f"CUDA_VISIBLE_DEVICES={evaluate} ")
    assert ("--device cpu" if evaluate == "" else "--device cuda:0") in p["evaluator"]
    assert ("--gpu-sharing" in p["evaluator"]) == shared


def test_without_nvidia_smi_everything_runs_on_the_cpu(tmp_path):
    p = plan(tmp_path, gpus=None, PATH="/usr/bin:/bin")
    assert "trainer GPUs: cpu | evaluator: cpu" in p["placement"]


def test_sweep_mode_passes_the_options_through_and_serves_the_root(tmp_path):
    p = plan(tmp_path, "--sweep", "configs/demo-sweep.toml", "--root", "my sweep", "--n-trials", "3",
             "--storage", "postgresql://u@h/db", "--study", "s1", gpus=2, cwd=REPO_ROOT)
    root = REPO_ROOT / "my sweep"  # relative to where the user ran it
    assert p["sweep"] == (f"CUDA_VISIBLE_DEVICES=0 {REPO_ROOT}/.venv/bin/python -m trainer sweep --config "
                          f"{REPO_ROOT}/configs/demo-sweep.toml --evaluator none --root {root} --n-trials 3 "
                          "--storage postgresql://u@h/db --study s1")
    assert p["evaluator"] == f"CUDA_VISIBLE_DEVICES=1 {REPO_ROOT}/.venv/bin/python -m evaluator watch --dir {root} --device cuda:0"


def test_paths_are_taken_from_where_the_user_runs_it_and_trainer_options_pass_through(tmp_path):
    cfg = tmp_path / "mine.toml"
    cfg.write_text((REPO_ROOT / "configs/demo.toml").read_text())
    p = plan(tmp_path, "mine.toml", "--continue", "--epochs", "2", cwd=tmp_path)
    assert p["trainer"].endswith(f"-m trainer run --config {cfg} --continue --epochs 2")  # no --new added
    assert f"--dir {(tmp_path / '../runs/demo/trial_0001').resolve()} " in p["evaluator"]


def test_a_bad_config_is_one_line_and_exit_2(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text((REPO_ROOT / "configs/demo.toml").read_text().replace("dim = 4", 'dim = "four"'))
    for args in (["--dry-run", str(bad)], ["--dry-run", str(tmp_path / "missing.toml")],
                 ["--dry-run", "--sweep", str(REPO_ROOT / "configs/demo.toml")]):
        out = subprocess.run([str(RUN_PAIR), *args], capture_output=True, text=True, timeout=120)
        assert out.returncode == 2, out
        assert out.stderr.startswith("run_pair: ") and len(out.stderr.strip().splitlines()) == 1, out.stderr
        assert "Traceback" not in out.stderr
    assert "network.dim" in subprocess.run([str(RUN_PAIR), "--dry-run", str(bad)], capture_output=True,
                                           text=True, timeout=120).stderr


def test_help(tmp_path):
    out = subprocess.run([str(RUN_PAIR), "--help"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and "TRAIN_GPUS" in out.stdout and "--sweep" in out.stdout


@pytest.mark.parametrize("visible, gpus, env, train, evaluate, shared", [
    ("2,3", 4, {}, "2", "3", False),              # issue 11: a set CUDA_VISIBLE_DEVICES was ignored
    ("5", 8, {}, "5", "5", True),                 # one visible GPU: shared
    ("", 4, {}, "", "", False),                   # none visible: the CPU
    ("1,2,3", 4, {"EVAL_GPU": "3"}, "1,2", "3", False),
])
def test_placement_honours_cuda_visible_devices(tmp_path, visible, gpus, env, train, evaluate, shared):
    p = plan(tmp_path, gpus=gpus, CUDA_VISIBLE_DEVICES=visible, **env)
    assert p["trainer"].startswith(f"CUDA_VISIBLE_DEVICES={train} ")
    assert p["evaluator"].startswith(f"CUDA_VISIBLE_DEVICES={evaluate} ")
    assert ("--gpu-sharing" in p["evaluator"]) == shared
    assert f"evaluator: {'GPU ' + evaluate if evaluate else 'cpu'}" in p["placement"]


def test_eval_gpu_alone_gives_the_trainer_every_other_gpu(tmp_path):
    p = plan(tmp_path, gpus=4, EVAL_GPU="3")
    assert p["trainer"].startswith("CUDA_VISIBLE_DEVICES=0,1,2 ") and "evaluator: GPU 3" in p["placement"]
