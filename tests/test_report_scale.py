"""The report at 30 checkpoints x 8 prompts: the grid scrolls in its own box with fixed prompt column and
header row, curves share integer epoch ticks and honest y-ranges, failed and copied samples say why, weak
evidence is visible; rendered in headless Chromium (no sideways page overflow, load time recorded)."""

from __future__ import annotations

import html as htmllib
import json
import re
import time

import pytest
from _report_helpers import write_evaluation, write_params, write_status
from test_report import CHROMIUM, chromium

from evaluator.report import write_trial_report
from evaluator.report.curves import metric_curves, x_ticks, y_window
from shared.jsonio import write_model
from shared.records import BestCheckpoint, EvaluationSummary, Metrics
from shared.trial import BASELINE, Trial

PROMPTS = tuple(f"prompt {k}: a {c} thing on a {b} background, sks style" for k, (c, b) in enumerate(
    [("red", "blue"), ("yellow", "green"), ("white", "black"), ("purple", "orange"), ("grey", "pink"),
     ("brown", "cyan"), ("golden", "silver"), ("teal", "magenta")]))
N_CHECKPOINTS = 30


def _metrics(score: float, failure_rate: float = 0.0) -> Metrics:
    return Metrics(score=score, clip_t=0.33 + (score - 0.6) / 10, clip_i=0.88, color_swd_lab=20.4 + (score - 0.6),
                   ssim_prev=0.92, diversity=0.1, copy_rate=0.0, failure_rate=failure_rate)


def write_big_trial(trial: Trial, n: int = N_CHECKPOINTS, prompts=PROMPTS, num_references: int = 4,
                    notes: list[str] | None = None) -> EvaluationSummary:
    """30 checkpoints whose scores wander between 0.598 and 0.610 (a small range), one failed sample with
    its reason and one copied sample."""
    write_params(trial, prompts)
    write_status(trial, "finished", epoch=n)
    base = write_evaluation(trial, BASELINE, 0.5977, None, prompts, samples_per_prompt=1, colour=(90, 90, 90),
                            num_references=num_references, metrics=_metrics(0.5977))
    entries = {}
    for epoch in range(1, n + 1):
        name = f"lora-{epoch:06d}"
        score = 0.598 + 0.012 * ((epoch * 7) % 11) / 10
        entries[name] = write_evaluation(
            trial, name, score, epoch, prompts, samples_per_prompt=1, num_references=num_references,
            failures={3: "noise"} if epoch == 12 else None, copies={5: "training image 10_x/img_3.png"}
            if epoch == 20 else None, metrics=_metrics(score, 0.125 if epoch == 12 else 0.0), notes=notes)
    best = max(entries.values(), key=lambda e: e.metrics.score)
    summary = EvaluationSummary(trial_name=trial.name, checkpoints=entries, baseline=base,
                                best=BestCheckpoint(checkpoint=best.checkpoint, score=best.metrics.score,
                                                    epoch=best.epoch, rule="highest score"),
                                total_checkpoints_evaluated=n, notes=notes or [])
    write_model(trial.evaluation_summary_path, summary)
    return summary


@pytest.fixture(scope="module")
def big_trial(tmp_path_factory) -> Trial:
    t = Trial(tmp_path_factory.mktemp("scale") / "trial_0001")
    write_big_trial(t)
    return t


def test_x_ticks_are_whole_numbers():
    assert x_ticks([1, 2, 3, 4]) == [1, 2, 3, 4]
    ticks = x_ticks(range(1, 31))
    assert all(isinstance(t, int) for t in ticks) and 3 <= len(ticks) <= 10 and ticks[0] >= 1 and ticks[-1] <= 30
    assert len(set(b - a for a, b in zip(ticks, ticks[1:]))) == 1  # an even step
    assert x_ticks([500, 1000, 1500]) == [500, 1000, 1500] and x_ticks([]) == []


def test_y_windows_are_honest():
    assert y_window("failure_rate", [0.0, 0.0]) == (-0.02, 1.02, False)  # not -0.04..0.04
    assert y_window("copy_rate", [0.0]) == (-0.02, 1.02, False)
    low, high, small = y_window("score", [0.598, 0.610])
    assert small and high - low == pytest.approx(0.1) and low < 0.598 and high > 0.610
    low, high, small = y_window("score", [0.2, 0.7])
    assert not small and low < 0.2 and high > 0.7
    low, high, small = y_window("ssim_prev", [0.995, 0.999])
    assert small and high == 1 and low == pytest.approx(0.9)  # kept inside the metric's bounds
    low, high, small = y_window("color_swd_lab", [20.3, 20.6])
    assert small and high - low == pytest.approx(2.0)


def test_curves_share_an_integer_x_range_and_label_small_ranges():
    points = [(e, {"score": 0.598 + 0.001 * (e % 7), "failure_rate": 0.0, "clip_t": 0.33 + 0.1 * (e % 2)})
              for e in range(1, 31)]
    svg = metric_curves(points, {"score": 0.5977, "failure_rate": 0.0, "clip_t": 0.33}, "epoch")
    texts = re.findall(r'<text style="([^"]*)"[^>]*>([^<]*)</text>', svg)  # svg.fonttype none: real text
    titles = [t for style, t in texts if "font-size: 9px" in style]
    assert titles[0].startswith("score · small range (spread 0.0063)"), titles
    assert "failure_rate" in titles and "clip_t" in titles  # clip_t swings 0.1: not small
    x_labels = [t for style, t in texts if "font-size: 7px" in style and "text-anchor: middle" in style]
    assert x_labels and all(re.fullmatch(r"\d+", t) for t in x_labels), x_labels  # whole epochs only
    assert len(x_labels) == 3 * len(set(x_labels)), "every panel has the same x ticks (one shared x-range)"
    y_fail = [t for style, t in texts if "text-anchor: end" in style]
    assert "0.0" in y_fail and "1.0" in y_fail  # failure_rate on 0..1, not -0.04..0.04


def test_big_grid_scrolls_in_its_own_box_with_fixed_headers(big_trial):
    page = write_trial_report(big_trial).read_text()
    assert page.count("<img") == (N_CHECKPOINTS + 1) * 8
    assert "<div class='scroll grid-box'><table class='grid'>" in page
    assert "<div class='scroll table-box'><table>" in page
    css = page.split("</style>")[0]
    assert re.search(r"\.grid-box th\{position:sticky;top:0", css)
    assert re.search(r"\.grid-box td\.prompt,[^{]*\{position:sticky;left:0", css)
    assert "<div class='why why-failed'>failed: noise</div>" in page
    assert "<div class='why why-copy'>copy of training image 10_x/img_3.png</div>" in page


def test_notes_and_parameters_as_scored(tmp_path):
    t = Trial(tmp_path / "trial_0002")
    write_big_trial(t, n=3, prompts=PROMPTS[:2], num_references=0,
                    notes=["2 of 4 references are near-duplicates of training images: a.png ~ 10_x/a.png"])
    # a re-score of lora-000002 with 2 samples instead of 2 prompts x 1: the page shows what was used
    write_evaluation(t, "lora-000002", 0.6, 2, PROMPTS[:1], samples_per_prompt=2, num_references=0)
    page = write_trial_report(t).read_text()
    notes = re.search(r"<div class='notes'>(.*?)</div>", page, re.S).group(1)
    assert "no references: clip_i, colour, cmmd not measured" in notes and "a.png ~ 10_x/a.png" in notes
    rows = dict(re.findall(r"<tr><th>([^<]+)</th><td>([^<]*)</td></tr>", page))
    assert "2 samples, 25 steps" in page and "evaluation (as scored)" in rows
    assert "Not measured in this trial:" in page and "dino" in page.split("Not measured in this trial:")[1][:200]


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (make system-deps installs it)")
@pytest.mark.parametrize("width", [1280, 800])
def test_browser_30_checkpoints_by_8_prompts_no_page_overflow(big_trial, artifacts_dir, width):
    t0 = time.perf_counter()
    report = write_trial_report(big_trial)
    render_s = time.perf_counter() - t0
    probe = report.with_name(f"report_probe_{width}.html")
    probe.write_text(report.read_text().replace("</body>", """<script>
window.addEventListener('load', () => setTimeout(() => {
  const nav = performance.getEntriesByType('navigation')[0];
  const box = document.querySelector('.grid-box'), th = document.querySelector('.grid-box th:nth-child(2)');
  const prompt = document.querySelector('.grid-box td.prompt'), table = document.querySelector('.table-box');
  const imgs = [...document.querySelectorAll('table.grid img')];
  const out = document.createElement('pre'); out.id = 'probe';
  out.textContent = JSON.stringify({
    pageScrollWidth: document.scrollingElement.scrollWidth, innerWidth: window.innerWidth,
    boxScrolls: box.scrollWidth > box.clientWidth, boxWidth: box.clientWidth,
    tableScrolls: table.scrollWidth > table.clientWidth,
    thPosition: getComputedStyle(th).position, promptPosition: getComputedStyle(prompt).position,
    images: imgs.length, loaded: imgs.filter(i => i.complete && i.naturalWidth > 0).length,
    loadMs: nav.loadEventStart - nav.startTime, domMs: nav.domContentLoadedEventEnd - nav.startTime,
    bytes: document.documentElement.outerHTML.length});
  document.body.appendChild(out);
}, 0));</script></body>"""))
    dom = chromium(f"--window-size={width},1000", "--virtual-time-budget=10000", "--dump-dom", probe.as_uri()).stdout
    result = json.loads(htmllib.unescape(re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S).group(1)))
    assert result["pageScrollWidth"] <= result["innerWidth"], result  # no horizontal page overflow
    assert result["boxScrolls"], "the grid scrolls inside its own box (the metrics table does when it must)"
    assert result["thPosition"] == "sticky" and result["promptPosition"] == "sticky"
    assert result["images"] == (N_CHECKPOINTS + 1) * 8 and result["loaded"] == result["images"], result
    assert result["loadMs"] < 5000, result
    (artifacts_dir / f"report_30x8_{width}.json").write_text(json.dumps({**result, "render_s": round(render_s, 3)},
                                                                        indent=1))
    shot = artifacts_dir / f"report_30x8_{width}.png"
    shot.unlink(missing_ok=True)
    chromium(f"--window-size={width},1400", f"--screenshot={shot}", report.as_uri())
    assert shot.exists() and shot.stat().st_size > 10_000
