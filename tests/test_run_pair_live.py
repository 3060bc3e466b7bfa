"""The trainer's live progress line under run_pair.sh: on a terminal its status is redrawn in place on the
bottom line and every other line (the evaluator's) is printed whole above it; plain lines elsewhere."""

from __future__ import annotations

import io
import os
import pty
import re
import select
import subprocess
import time
from pathlib import Path

import pytest

from _report_helpers import REPO_ROOT
from shared.records import TrainerStatus
from trainer.reporting import STATUS_MARK, Console, live_status


def screen(raw: str) -> list[str]:
    """What a terminal shows after ``raw``: carriage return, erase-to-end-of-line and newline honoured."""
    lines, cur, col = [], [], 0
    i = 0
    while i < len(raw):
        if raw.startswith("\x1b[K", i):
            del cur[col:]
            i += 3
            continue
        ch = raw[i]
        if ch == "\r":
            col = 0
        elif ch == "\n":
            lines.append("".join(cur))
            cur, col = [], 0
        else:
            if col < len(cur):
                cur[col] = ch
            else:
                cur.append(ch)
            col += 1
        i += 1
    if cur:
        lines.append("".join(cur))
    return lines


def test_status_stays_on_the_bottom_line_and_other_lines_stay_whole():
    feed = [f"[trainer] {STATUS_MARK}step 1/8\n", "[evaluator] scoring lora-000001 (0 more waiting)\n",
            f"[trainer] {STATUS_MARK}step 2/8\n", f"[trainer] {STATUS_MARK}step 3/8\n",
            "[trainer] checkpoint saved: lora-000002.safetensors\n", "[evaluator] lora-000001 epoch 1: score 0.61\n"]
    out = io.StringIO()
    shown: list[list[str]] = []

    class Tap(io.StringIO):
        def flush(self) -> None:  # what the terminal shows after each write
            shown.append(screen(out.getvalue()))

    tap = Tap()
    tap.write = out.write  # type: ignore[method-assign]
    live_status(iter(feed), tap, columns=lambda: 80)
    assert shown[0] == ["[trainer] step 1/8"]
    assert shown[1] == ["[evaluator] scoring lora-000001 (0 more waiting)", "[trainer] step 1/8"]
    assert shown[3] == ["[evaluator] scoring lora-000001 (0 more waiting)", "[trainer] step 3/8"]  # in place
    assert screen(out.getvalue()) == [
        "[evaluator] scoring lora-000001 (0 more waiting)", "[trainer] checkpoint saved: lora-000002.safetensors",
        "[evaluator] lora-000001 epoch 1: score 0.61", "[trainer] step 3/8"]  # the last status stays, as a line
    assert out.getvalue().endswith("\n")


def test_a_status_wider_than_the_terminal_is_cut_to_one_line():
    out = io.StringIO()
    live_status(iter([f"[trainer] {STATUS_MARK}" + "x" * 200 + "\n", "[evaluator] a line\n"]), out,
                columns=lambda: 40)
    drawn = [s for s in out.getvalue().split("\r\x1b[K") if s.startswith("[trainer]") and not s.endswith("\n")]
    assert drawn and all(len(s) <= 39 for s in drawn)


def _status(step: int, total: int = 100) -> TrainerStatus:
    return TrainerStatus(state="running", step=step, total_steps=total, epoch=1, total_epochs=4)


def test_console_live_mode_shows_a_status_four_times_a_second_and_plain_mode_every_five():
    now = [0.0]
    live_out, plain_out = io.StringIO(), io.StringIO()
    live = Console(live_out, live=True, clock=lambda: now[0])
    plain = Console(plain_out, live=False, clock=lambda: now[0])
    for step in range(1, 101):  # 10 steps a second for 10 s
        now[0] = step / 10
        live.show(_status(step))
        plain.show(_status(step))
    live_lines, plain_lines = live_out.getvalue().splitlines(), plain_out.getvalue().splitlines()
    assert all(line.startswith(STATUS_MARK) for line in live_lines) and 30 <= len(live_lines) <= 41
    assert live_lines[-1].endswith("step 100/100 epoch 1/4") and "[####################] " in live_lines[-1]
    assert not any(STATUS_MARK in line for line in plain_lines) and 2 <= len(plain_lines) <= 4


def test_live_mode_follows_run_pairs_variable_and_never_applies_to_a_terminal(monkeypatch):
    monkeypatch.setenv("EPOCHSCOPE_LIVE_STATUS", "1")
    out = io.StringIO()
    Console(out).show(_status(1))
    assert out.getvalue().startswith(STATUS_MARK)
    monkeypatch.setenv("EPOCHSCOPE_LIVE_STATUS", "0")
    out = io.StringIO()
    Console(out).show(_status(1))
    assert out.getvalue().startswith("step 1/100")


@pytest.mark.slow
def test_run_pair_on_a_terminal_shows_the_trainer_live_without_cutting_evaluator_lines(tmp_path):
    from test_run_pair import demo_config_into

    cfg = demo_config_into(tmp_path)
    text = cfg.read_text()
    assert "max_train_epochs = 4" in text
    cfg.write_text(text.replace("max_train_epochs = 4", "max_train_epochs = 12"))  # 48 steps: 2 to 5 s here
    master, slave = pty.openpty()
    env = {**os.environ, "COLUMNS": "200"}
    env.pop("EPOCHSCOPE_LIVE_STATUS", None)
    proc = subprocess.Popen([str(REPO_ROOT / "run_pair.sh"), str(cfg)], cwd=REPO_ROOT, stdin=subprocess.DEVNULL,
                            stdout=slave, stderr=slave, env=env, start_new_session=True)
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + 600
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1.0)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # the terminal closed: everyone exited
                    break
                if not data:
                    break
                chunks.append(data)
            elif proc.poll() is not None:
                break
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
        os.close(master)
    raw = b"".join(chunks).decode("utf-8", "replace").replace("\r\n", "\n")  # the pty's newline translation
    assert proc.returncode == 0, raw[-3000:]
    lines = screen(raw)
    redraws = re.findall(r"\r\x1b\[K(\[trainer\] \[[#-]{20}\] step \d+/\d+[^\r\n]*)", raw)
    steps = {int(re.search(r"step (\d+)/", r).group(1)) for r in redraws}
    print(f"{len(redraws)} status redraws, steps shown: {sorted(steps)}")
    # 48 steps in 2 to 5 s: plain lines (one in 5 s) would show the first and the last step only.
    assert len(steps) >= 6, "the trainer's progress was not shown live"
    evaluator_lines = [line for line in lines if "[evaluator]" in line]
    assert any("scoring" in line for line in evaluator_lines)
    assert all(line.startswith("[evaluator] ") and "step " not in line.split("] ", 1)[1][:5]
               for line in evaluator_lines), "an evaluator line was cut by the trainer's status"
    assert not any("[trainer] [" in line and "[evaluator]" in line for line in lines)
    final = [line for line in lines if re.fullmatch(r"\[trainer\] \[#{20}\] step 48/48.*", line)]
    assert final, "the last status is not left on screen as a line"
    assert any(line.startswith("run_pair: report: ") for line in lines)
    assert Path(tmp_path / "trial_0001" / "realtime_evaluations" / "report.html").is_file()
