"""report.html and index.html from files written through the shared models: order, best column, states,
escaping, and pages for trials that are half-way or broken (no training needed: fast)."""

from __future__ import annotations

import re

from _report_helpers import write_params, write_scored_trial, write_status
from evaluator.cli import main
from evaluator.report import write_sweep_index, write_trial_report
from shared.jsonio import atomic_write_text
from shared.trial import SweepRoot, Trial

HOSTILE = "<script>alert(1)</script> & 'quotes' \"too\""


def grid_columns(html: str) -> list[str]:
    header = re.search(r"<table class='grid'><tr>(.*?)</tr>", html, re.S).group(1)
    return re.findall(r"<th(?: class='best')?>(?:★ )?([\w-]+)", header)  # the prompt corner has its own class


def test_grid_is_prompts_by_checkpoints_in_epoch_order_with_the_best_starred(tmp_path):
    t = Trial(tmp_path / "trial_0001")
    # Written out of order on purpose: the page follows epochs, not insertion or name order.
    write_scored_trial(t, {"lora-000001": 0.60, "lora-000002": 0.64, "lora-000010": 0.61, "lora": 0.62})
    html = write_trial_report(t).read_text()
    assert grid_columns(html) == ["baseline", "lora-000001", "lora-000002", "lora-000010", "lora"]
    assert "<th class='best'>★ lora-000002" in html
    assert html.count("<img") == 5 * 4  # 5 columns x (2 prompts x 2 seeds)
    rows = re.findall(r"<td class='prompt'>(.*?)<br><span class='muted'>seed (\d+)", html)
    assert rows == [("a red circle on a blue background, sks style", "1000"),
                    ("a yellow square on a green background, sks style", "1001"),
                    ("a red circle on a blue background, sks style", "1002"),
                    ("a yellow square on a green background, sks style", "1003")]
    for src in re.findall(r"<img[^>]* src='([^']+)'", html):  # relative links that resolve from the page
        assert not src.startswith(("/", "file:", "http")) and (t.evaluations_dir / src).is_file(), src
    assert html.count("<svg") == 1 and "score" in html and "baseline" in html
    assert not re.search(r"<(script|link)\b|@import|url\(|https?://", html.split("<svg")[0])  # self-contained


def test_user_text_is_escaped_everywhere(tmp_path):
    t = Trial(tmp_path / "odd <marquee>folder" / "trial_0003")
    write_scored_trial(t, {"lora-000001": 0.6}, prompts=(HOSTILE, "plain"), sweep_params={"x<y>": "<blink>v"})
    html = write_trial_report(t).read_text()
    assert "<script" not in html and "<marquee" not in html and "<blink" not in html and "<y>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; &#x27;quotes&#x27; &quot;too&quot;" in html
    assert "odd &lt;marquee&gt;folder" in html and "&lt;blink&gt;v" in html


def test_a_trial_without_evaluations_still_gets_a_page(tmp_path):
    t = Trial(tmp_path / "trial_0001")
    t.root.mkdir()
    assert "No checkpoint has been scored yet" in write_trial_report(t).read_text()
    write_params(t)
    write_status(t, "running", epoch=1)
    html = write_trial_report(t).read_text()
    assert "running" in html and "No curves yet" in html and "demo:tiny" in html


def test_missing_and_malformed_files_are_shown_not_raised(tmp_path):
    t = Trial(tmp_path / "trial_0001")
    write_scored_trial(t, {"lora-000001": 0.6, "lora-000002": 0.7})
    (t.checkpoint_eval_dir("lora-000001") / "sample_01.png").unlink()
    atomic_write_text(t.checkpoint_eval_dir("lora-000002") / "metrics.json", "{not json")
    atomic_write_text(t.status_path, '{"state": "exploded"}')
    html = write_trial_report(t).read_text()
    assert "image missing" in html
    assert "Unreadable files" in html and "metrics.json" in html and "trainer_status.json" in html
    assert grid_columns(html) == ["baseline", "lora-000001", "lora-000002"]  # the summary still lists it


def test_sweep_index_sorts_by_best_score_and_derives_states_from_files(tmp_path):
    root = SweepRoot(tmp_path / "sweep")
    write_scored_trial(root.trial(1), {"lora-000001": 0.61, "lora": 0.63}, sweep_params={"training.learning_rate": 0.002})
    write_scored_trial(root.trial(2), {"lora-000001": 0.40}, state="stopped_early", stop_reason="pruned",
                       sweep_params={"training.learning_rate": 5000.0})
    write_scored_trial(root.trial(3), {"lora-000001": 0.66, "lora-000002": 0.65}, state="stopped_early",
                       stop_reason="early_stop", sweep_params={"training.learning_rate": 0.01})
    write_scored_trial(root.trial(4), {}, state="failed", sweep_params={"training.learning_rate": 0.1})
    write_params(root.trial(5), sweep_params={"training.learning_rate": 0.02})
    write_status(root.trial(5), "running", epoch=1)
    html = write_sweep_index(root.root).read_text()
    rows = re.findall(r"<tr><td><a href='(trial_\d+)/realtime_evaluations/report.html'>trial_\d+</a></td>"
                      r"<td class='state-[\w-]+'>([\w ]+)</td><td>([\d.–]+)</td><td>[^<]*</td><td>(\d+)</td>"
                      r"<td>([^<]*)</td>", html)
    assert [(r[0], r[1], r[2], r[3]) for r in rows] == [
        ("trial_0003", "stopped early", "0.6600", "2"), ("trial_0001", "complete", "0.6300", "2"),
        ("trial_0002", "pruned", "0.4000", "1"), ("trial_0004", "failed", "–", "0"),
        ("trial_0005", "running", "–", "0")]
    assert rows[2][4] == "training.learning_rate = 5e+03"
    assert "<svg" in html and "trial_0001" in html.split("<svg")[1]  # one line per trial in the plot


def test_report_command_on_a_sweep_root_writes_every_page_and_prints_the_table(tmp_path, capsys):
    # In-process main(): the same code path as `python -m evaluator report`, without a second torch import.
    root = SweepRoot(tmp_path / "sweep")
    for n in (1, 2):
        write_scored_trial(root.trial(n), {"lora-000001": 0.6 + n / 100, "lora": 0.6})
    assert main(["report", "--dir", str(root.root), "--table"]) == 0
    out = capsys.readouterr().out
    assert root.index_path.is_file() and all(t.report_path.is_file() for t in root.trials())
    assert f"index:  {root.index_path}" in out and f"report: {root.trial(2).report_path}" in out
    best_rows = [line for line in out.splitlines() if "★" in line]
    assert len(best_rows) == 2 and all("lora-000001" in line for line in best_rows)
    assert main(["report", "--dir", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert "is not a folder" in err and "Traceback" not in err
