"""Optuna sweeps for real: the planted bad trial is pruned, a killed sweep resumes, and two workers
share one study on a real PostgreSQL server."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from conftest import REPO_ROOT
from shared.jsonio import read_model
from shared.records import EvaluationSummary, Params, TrainerStatus
from shared.trial import SweepRoot

pytestmark = pytest.mark.slow
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def sweep_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "trainer", "sweep", *args]


def kill_everything_under(folder: Path) -> None:
    """What a crashed machine does to a sweep: every process working in its folder dies."""
    out = subprocess.run(["ps", "-ww", "-eo", "pid,args"], capture_output=True, text=True).stdout
    for line in out.splitlines():
        if str(folder) in line and "python" in line:
            try:
                os.kill(int(line.split()[0]), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass


def load_study(root: SweepRoot, name: str = "demo"):
    import optuna

    return optuna.load_study(study_name=name, storage=root.default_storage)


def test_demo_sweep_prunes_the_planted_trial_and_resumes_after_a_kill(tmp_path):
    import optuna

    root = SweepRoot(tmp_path / "sweep")
    cmd = sweep_cmd("--config", str(REPO_ROOT / "configs" / "demo-sweep.toml"), "--root", str(root.root))
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 480
        while not root.trial(4).params_path.exists():  # the planted trial (3) is over when 4 starts
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read() if proc.poll() else ""
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        kill_everything_under(root.root)
    out = subprocess.run(cmd, cwd=REPO_ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    kill_everything_under(root.root)

    study = load_study(root)
    S = optuna.trial.TrialState
    states = {t.number + 1: t.state for t in study.trials}
    assert states == {1: S.COMPLETE, 2: S.COMPLETE, 3: S.PRUNED, 4: S.FAIL, 5: S.COMPLETE}, states
    assert "died" in study.trials[3].user_attrs["fail_reason"]
    folders = sorted(t.root.name for t in root.trials())
    assert folders == [f"trial_{n:04d}" for n in range(1, 6)], "one folder per trial number, none reused"

    planted = root.trial(3)
    st = read_model(planted.status_path, TrainerStatus)
    assert st.state == "stopped_early" and "pruned" in st.message and st.epoch < 6
    assert read_model(planted.params_path, Params).sweep.params == {"training.learning_rate": 5000.0}
    for t in study.trials:
        folder = root.trial(t.number + 1)
        assert read_model(folder.params_path, Params).sweep.trial_number == t.number + 1
        if t.state == S.COMPLETE:
            summary = read_model(folder.evaluation_summary_path, EvaluationSummary)
            assert t.value == pytest.approx(summary.best.score)
            assert read_model(folder.status_path, TrainerStatus).state == "finished"
    assert root.index_path.exists() and "pruned" in root.index_path.read_text()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def postgres():
    """A throwaway PostgreSQL server on a loopback port (Debian's postgresql package)."""
    bins = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not bins:
        pytest.skip("PostgreSQL is not installed (make system-deps installs Debian's postgresql)")
    bindir = bins[-1].parent
    as_user = [] if os.geteuid() != 0 else ["runuser", "-u", "postgres", "--"]
    if as_user and shutil.which("runuser") is None:
        pytest.skip("running as root without runuser: cannot start PostgreSQL as an ordinary user")
    base = Path(tempfile.mkdtemp(prefix="epochscope-pg-"))
    if as_user:
        shutil.chown(base, "postgres")
    port = _free_port()
    data = base / "data"
    try:
        subprocess.run([*as_user, str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"],
                       check=True, capture_output=True, timeout=120)
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-l", str(base / "log"), "-w", "-o",
                        f"-p {port} -k {base} -c listen_addresses=127.0.0.1", "start"],
                       check=True, capture_output=True, timeout=120)
        subprocess.run([*as_user, str(bindir.parent / "bin" / "createdb") if (bindir / "createdb").exists()
                        else "createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "optuna"],
                       check=True, capture_output=True, timeout=60)
    except (subprocess.CalledProcessError, FileNotFoundError) as e:
        shutil.rmtree(base, ignore_errors=True)
        pytest.skip(f"could not start PostgreSQL here: {e}")
    yield f"postgresql://postgres@127.0.0.1:{port}/optuna"
    subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                   capture_output=True, timeout=60)
    shutil.rmtree(base, ignore_errors=True)


def test_two_workers_share_one_postgres_study(tmp_path, postgres):
    import optuna

    cfg = tmp_path / "sweep.toml"
    text = (REPO_ROOT / "configs" / "demo-sweep.toml").read_text()
    text = text.replace("max_train_epochs = 6", "max_train_epochs = 2").split("# Run first")[0]
    cfg.write_text(text.replace('type = "median"', 'type = "none"'))
    workers = []
    for name in ("a", "b"):  # each machine: its own folder and its own evaluator
        workers.append(subprocess.Popen(
            sweep_cmd("--config", str(cfg), "--root", str(tmp_path / name), "--storage", postgres,
                      "--study", "shared", "--n-trials", "3"),
            cwd=REPO_ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True))
        time.sleep(1.0)
    try:
        outs = [w.communicate(timeout=600)[0] for w in workers]
    finally:
        for w in workers:
            if w.poll() is None:
                os.killpg(w.pid, signal.SIGKILL)
        kill_everything_under(tmp_path)
    assert all(w.returncode == 0 for w in workers), outs
    from trainer.sweep.driver import with_driver

    study = optuna.load_study(study_name="shared", storage=with_driver(postgres))
    numbers = [t.number for t in study.trials]
    assert len(numbers) == len(set(numbers)) == 3
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    folders = [p.name for name in ("a", "b") for p in (tmp_path / name).glob("trial_*")]
    assert sorted(folders) == ["trial_0001", "trial_0002", "trial_0003"], "each trial ran once, on one machine"
    assert all((tmp_path / "a").glob("trial_*")) and list((tmp_path / "b").glob("trial_*")), "both workers worked"
