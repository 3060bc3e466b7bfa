"""`trainer run` refuses without changing anything, requires its inputs, and leaves nothing behind: a
refused start keeps the previous run's status and files (audit 1, 5), a config names its base model and
training images (2), training.log is on disk line by line (3), a killed trainer takes its worker with it
(4), and the smaller messages and flags (6). Real runs of the built-in trainer on the tiny demo model."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO_ROOT, copy_trial, run_cli, write_demo_config
from shared.config import load_config
from shared.errors import ConfigError
from shared.jsonio import read_model, write_model
from shared.records import TrainerStatus
from shared.trial import Trial


def _snapshot(root: Path) -> dict[str, tuple[int, bytes | None]]:
    """Every path under ``root`` with its mtime and bytes (None for a folder); the trainer's lock file
    is left out (taking the lock is how a refusal starts)."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.name == ".trainer.lock":
            continue
        st = p.lstat()
        out[str(p.relative_to(root))] = (st.st_mtime_ns, None if p.is_dir() else p.read_bytes())
    return out


@pytest.fixture(scope="module")
def finished(tmp_path_factory, demo_assets):
    """A finished real run: lora-000001, lora (2 epochs of 4 steps), with states."""
    root = tmp_path_factory.mktemp("finished")
    cfg = write_demo_config(root / "c.toml", root / "trial", epochs=2, samples=1, steps=1)
    run_cli("trainer", "run", "--config", str(cfg), "--new")
    t = Trial(root / "trial")
    assert read_model(t.status_path, TrainerStatus).state == "finished"
    return cfg, t


@pytest.fixture
def rerun(finished, tmp_path):
    """A copy of the finished run (every file, states included) and a config for it."""
    _, src = finished
    dest = tmp_path / "trial"
    shutil.copytree(src.root, dest, symlinks=True, copy_function=shutil.copy2)
    cfg = write_demo_config(tmp_path / "c.toml", dest, epochs=2, samples=1, steps=1)
    return cfg, Trial(dest)


# ---------------------------------------------------------------- 1. a refused start changes nothing


@pytest.mark.parametrize("flags, says", [
    ((), "pass --continue to resume or --new"),
    (("--new", "--set", 'model.base="/nope/model.safetensors"'), "not found"),  # the backend's check
    (("--continue", "--set", 'dataset.train_dir="/nope/train"'), "/nope/train"),
])
def test_a_refused_rerun_changes_nothing(rerun, flags, says):
    cfg, t = rerun
    before = _snapshot(t.root)
    status = json.loads(t.status_path.read_text())
    assert status["state"] == "finished" and status["exit_code"] == 0
    out = run_cli("trainer", "run", "--config", str(cfg), *flags, check=False)
    assert out.returncode == 2, out.stderr
    assert says in out.stderr and out.stderr.count("error:") == 1 and "Traceback" not in out.stderr
    assert _snapshot(t.root) == before  # the finished status, params, checkpoints, logs: all as they were
    assert not t.backup_dir.exists()


def test_continue_with_no_state_changes_nothing(finished, tmp_path):
    cfg, src = finished
    t = copy_trial(src, tmp_path / "trial")  # checkpoints, params and the finished status; no states
    cfg = write_demo_config(tmp_path / "c.toml", t.root, epochs=2, samples=1, steps=1)
    before = _snapshot(t.root)
    out = run_cli("trainer", "run", "--config", str(cfg), "--continue", check=False)
    assert out.returncode == 2 and "no complete training state" in out.stderr, out.stderr
    assert _snapshot(t.root) == before
    assert read_model(t.status_path, TrainerStatus).state == "finished"


def test_a_fresh_folder_records_why_its_start_failed(tmp_path, demo_assets):
    """No previous status to keep: the sweep and run_pair read the reason from the failed status."""
    cfg = write_demo_config(tmp_path / "c.toml", tmp_path / "trial", samples=1, steps=1)
    out = run_cli("trainer", "run", "--config", str(cfg), "--set", 'model.base="/nope/model.safetensors"',
                  check=False)
    assert out.returncode == 2, out.stderr
    st = read_model(Trial(tmp_path / "trial").status_path, TrainerStatus)
    assert st.state == "failed" and st.exit_code == 2 and "/nope/model.safetensors" in (st.message or "")


# ---------------------------------------------------------------- 5. another output name needs --new


def test_another_output_name_is_refused_without_new(rerun):
    cfg, t = rerun
    before = _snapshot(t.root)
    for flags in ((), ("--continue",)):
        out = run_cli("trainer", "run", "--config", str(cfg), "--set", 'output.name="other"', *flags, check=False)
        assert out.returncode == 2, out.stderr
        assert "another run ('lora'" in out.stderr and "params.json" in out.stderr and "--new" in out.stderr
        assert "lora-000001.safetensors" in out.stderr
        assert _snapshot(t.root) == before  # params.json keeps lora's history; no log mixed in
    assert json.loads(t.params_path.read_text())["config"]["output"]["name"] == "lora"


def test_new_moves_another_output_names_run_aside(rerun):
    from trainer.outputs import back_up_previous_run, has_run_files

    _, t = rerun
    old = {p.name for p in t.root.iterdir() if p.name != ".trainer.lock"}
    dest = back_up_previous_run(t, "other")
    assert dest is not None
    assert {"params.json", "lora.safetensors", "lora-000001.safetensors", "lora-state", "training.log",
            "trainer_status.json"} <= {p.name for p in dest.iterdir()}
    assert {p.name for p in dest.iterdir()} == old  # everything of the previous run, nothing lost
    assert not has_run_files(t)


# ---------------------------------------------------------------- 2. a config names its base and its images


def test_a_config_without_model_base_is_refused(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[dataset]\ntrain_dir = "demo:dataset/train"\n')
    with pytest.raises(ConfigError) as e:
        load_config(cfg)
    assert str(cfg) in str(e.value) and "model.base" in str(e.value) and 'model.base = "demo:tiny"' in str(e.value)
    out = run_cli("trainer", "run", "--config", str(cfg), "--output-dir", str(tmp_path / "t"), check=False)
    assert out.returncode == 2 and "model.base" in out.stderr and out.stderr.count("error:") == 1, out.stderr
    assert not (tmp_path / "t").exists()


def test_training_without_train_dir_is_refused(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[model]\nbase = "demo:tiny"\n')
    assert load_config(cfg).dataset.train_dir is None  # evaluating a folder needs no training images
    for extra in ((), ("--dry-run",)):
        out = run_cli("trainer", "run", "--config", str(cfg), "--output-dir", str(tmp_path / "t"), *extra,
                      check=False)
        assert out.returncode == 2, out.stderr
        assert str(cfg) in out.stderr and "dataset.train_dir" in out.stderr and '"demo:dataset/train"' in out.stderr
    assert not (tmp_path / "t").exists()


def test_caption_extension_without_a_dot(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[model]\nbase = "demo:tiny"\n[dataset]\ncaption_extension = "txt"\n')
    assert load_config(cfg).dataset.caption_extension == ".txt"
    cfg.write_text('[model]\nbase = "demo:tiny"\n[dataset]\ncaption_extension = ".caption"\n')
    assert load_config(cfg).dataset.caption_extension == ".caption"


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO_ROOT / "configs").glob("*.toml")))
def test_every_shipped_config_names_its_base(name):
    load_config(REPO_ROOT / "configs" / name)


# ---------------------------------------------------------------- 3, 4. the log while it runs; kill -9


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _start_long_run(tmp_path) -> tuple[subprocess.Popen, Trial, TrainerStatus]:
    """A real run well under way (status running at step 2 or later); its worker leads the group ``pgid``."""
    cfg = write_demo_config(tmp_path / "c.toml", tmp_path / "trial", epochs=200, samples=1, steps=1)
    t = Trial(tmp_path / "trial")
    proc = subprocess.Popen([sys.executable, "-m", "trainer", "run", "--config", str(cfg), "--new"], cwd=REPO_ROOT,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    st = None
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            st = read_model(t.status_path, TrainerStatus)
        except Exception:  # noqa: BLE001 - not written yet
            st = None
        if st is not None and st.state == "running" and st.step >= 2:
            break
        time.sleep(0.2)
    if st is None or st.step < 2 or not st.pgid:
        _end(proc, st.pgid if st else None)
        raise AssertionError(f"the run did not get going: {proc.poll()} {st}")
    return proc, t, st


def _end(proc: subprocess.Popen, group: int | None) -> None:
    proc.kill()
    proc.wait()
    if group:
        try:
            os.killpg(group, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_training_log_is_on_disk_while_it_runs(tmp_path, demo_assets):
    proc, t, st = _start_long_run(tmp_path)
    try:
        # the worker's lines up to the step the status shows are in training.log already
        lines = t.log_path.read_text().splitlines()
        steps = [json.loads(line.split(" ", 1)[1])["step"] for line in lines
                 if line.startswith("@@epochscope ") and '"event": "progress"' in line]
        assert steps and max(steps) >= 2, lines[-20:]
    finally:
        _end(proc, st.pgid)


def _pending(pid: int) -> int:
    """The signals pending for the process (its own and its threads' shared set)."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["ShdPnd"], 16) | int(fields["SigPnd"], 16)


def test_a_killed_trainer_takes_its_worker_with_it(tmp_path, demo_assets):
    """kill -9 of `trainer run` must reach the worker through the kernel (PR_SET_PDEATHSIG), not only
    through a broken pipe at its next line of output (a silent worker, loading or sampling, went on for
    minutes with the folder's lock free). The worker is held stopped while its trainer is killed, so it
    cannot write: SIGTERM must be pending for it all the same, and once let go it ends."""
    proc, t, st = _start_long_run(tmp_path)
    worker = st.pgid  # the worker leads its own group
    try:
        assert _alive(worker)
        os.killpg(worker, signal.SIGSTOP)
        proc.kill()  # kill -9 of `trainer run`
        proc.wait()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not _pending(worker) & (1 << (signal.SIGTERM - 1)):
            time.sleep(0.05)
        assert _pending(worker) & (1 << (signal.SIGTERM - 1)), "the worker was not told its trainer died"
        os.killpg(worker, signal.SIGCONT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and _alive(worker):
            time.sleep(0.1)
        assert not _alive(worker), "the worker outlived its killed trainer"
    finally:
        _end(proc, worker)


# ---------------------------------------------------------------- 6. messages and flags


def test_an_output_dir_that_is_a_file(tmp_path):
    cfg = write_demo_config(tmp_path / "c.toml", tmp_path / "trial")
    (tmp_path / "trial").write_text("mine")
    out = run_cli("trainer", "run", "--config", str(cfg), check=False)
    assert out.returncode == 2 and "is a file, not a folder" in out.stderr, out.stderr
    assert (tmp_path / "trial").read_text() == "mine"
    out = run_cli("trainer", "run", "--config", str(cfg), "--output-dir", str(tmp_path / "trial" / "t"), check=False)
    assert out.returncode == 2 and f"{tmp_path / 'trial'} is a file, not a folder" in out.stderr, out.stderr


def test_debug_after_the_subcommand(tmp_path):
    out = run_cli("trainer", "run", "--config", str(tmp_path / "missing.toml"), "--debug", check=False)
    assert out.returncode == 2 and "unrecognized" not in out.stderr and "missing.toml" in out.stderr, out.stderr
    from shared.cli_support import build_parser
    from trainer.cli import COMMANDS

    parser, _ = build_parser("trainer", "", COMMANDS)
    assert parser.parse_args(["--debug", "run", "--config", "x"]).debug
    assert parser.parse_args(["run", "--config", "x", "--debug"]).debug
    assert not parser.parse_args(["run", "--config", "x"]).debug


def test_the_debug_hint_only_without_debug(capsys):
    from shared.cli_support import run_command

    def crash(args):
        raise RuntimeError("boom")

    assert run_command(crash, argparse.Namespace(debug=False), "trainer") == 1
    assert "rerun with --debug" in capsys.readouterr().err
    assert run_command(crash, argparse.Namespace(debug=True), "trainer") == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "boom" in err and "rerun with --debug" not in err


def test_status_says_cpu_when_auto_finds_no_gpu(finished, monkeypatch):
    import torch

    from trainer import supervisor

    monkeypatch.setattr(supervisor, "_cuda_available", lambda: False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert supervisor.new_status("builtin", "r", "auto").gpus == "cpu"
    monkeypatch.setattr(supervisor, "_cuda_available", lambda: True)
    assert supervisor.new_status("builtin", "r", "auto").gpus == "all"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    assert supervisor.new_status("builtin", "r", "cuda").gpus == "1"
    assert supervisor.new_status("builtin", "r", "cpu").gpus == "cpu"
    if not torch.cuda.is_available():  # the real run's status on this machine
        assert read_model(finished[1].status_path, TrainerStatus).gpus == "cpu"


def test_a_full_disk_at_start_is_one_clear_line_not_an_internal_error(tmp_path, small_disk):
    """An output folder on a full file system: the first contract file cannot be written. One line naming
    the file and the cause, exit 2 (before: "internal error: OSError: [Errno 28] ...")."""
    from conftest import fill_disk, run_cli, write_demo_config

    fill_disk(small_disk, leave_kb=0)
    cfg = write_demo_config(tmp_path / "c.toml", small_disk / "t")
    out = run_cli("trainer", "run", "--config", str(cfg), "--new", check=False)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "internal error" not in out.stderr
    assert f"no space left on device writing {small_disk / 't'}" in out.stderr, out.stderr
