"""report.html from real evaluator output: grid, curves, escaping; rendered by headless Chromium."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import copy_trial, run_cli
from evaluator.report import write_sweep_index, write_trial_report
from shared.trial import SweepRoot, Trial

pytestmark = pytest.mark.slow
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
XSS = "<script>window.__xss = 1</script> & \"quotes\""


@pytest.fixture(scope="module")
def scored_trial(tmp_path_factory, trained_trial) -> Trial:
    """A copy of the trained trial, scored by the real evaluator, with a hostile prompt."""
    t = copy_trial(trained_trial, tmp_path_factory.mktemp("report") / "trial_0001")
    params = json.loads(t.params_path.read_text())
    params["config"]["evaluation"]["prompts"] = [XSS, "a yellow square on a green background, sks style"]
    t.params_path.write_text(json.dumps(params))
    run_cli("evaluator", "run", "--dir", str(t.root), "--device", "cpu")
    return t


def chromium(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    profile = Path(subprocess.check_output(["mktemp", "-d"], text=True).strip())
    try:
        return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                               "--disable-component-update", "--no-first-run", "--disable-sync",
                               f"--user-data-dir={profile}", *args], capture_output=True, text=True, timeout=timeout)
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def test_report_contents_and_escaping(scored_trial):
    page = write_trial_report(scored_trial).read_text()
    assert "<script>" not in page, "user text must never become markup"
    assert "&lt;script&gt;window.__xss = 1&lt;/script&gt;" in page
    for name in ("baseline", "lora-000001", "lora-000002", "lora"):  # per-version folders: name@sha256 prefix
        assert re.search(rf"src='{name}(@[0-9a-f]+)?/sample_00.png'", page), name
    assert page.count("<svg") >= 1 and "★" in page and "class='best'" in page
    cols = re.findall(r"<th(?: class='best')?>(?:★ )?([\w-]+)<br>", page)
    assert cols == ["lora-000001", "lora-000002", "lora"], "checkpoints in epoch order"


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (make system-deps installs it)")
def test_browser_renders_every_image_and_the_curves(scored_trial, artifacts_dir):
    report = write_trial_report(scored_trial)
    probe = report.with_name("report_probe.html")
    probe.write_text(report.read_text().replace("</body>", """<script>
window.addEventListener('load', () => {
  const imgs = [...document.querySelectorAll('table.grid img')];
  const out = document.createElement('pre'); out.id = 'probe';
  out.textContent = JSON.stringify({images: imgs.length, loaded: imgs.filter(i => i.complete && i.naturalWidth > 0).length,
    svgs: document.querySelectorAll('.curves svg path, .curves svg use').length, xss: window.__xss || 0,
    prompt: document.querySelector('table.grid td.prompt').firstChild.textContent});
  document.body.appendChild(out);
});</script></body>"""))
    dom = chromium("--virtual-time-budget=5000", "--dump-dom", probe.as_uri()).stdout
    result = json.loads(html.unescape(re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S).group(1)))
    assert result["images"] == 4 * 4 and result["loaded"] == result["images"], result
    assert result["svgs"] > 0 and result["xss"] == 0
    assert result["prompt"] == XSS, "the prompt is shown as the text the user wrote"
    shot = artifacts_dir / "report.png"
    shot.unlink(missing_ok=True)
    chromium("--window-size=1400,1200", f"--screenshot={shot}", report.as_uri())
    assert shot.exists() and shot.stat().st_size > 10_000


def test_sweep_index_lists_trials_by_score(tmp_path, scored_trial):
    root = SweepRoot(tmp_path / "sweep")
    for n in (1, 2):
        shutil.copytree(scored_trial.root, root.trial(n).root)
    page = write_sweep_index(root.root).read_text()
    assert "trial_0001/realtime_evaluations/report.html" in page and "trial_0002" in page
    assert "<svg" in page and "complete" in page



def test_a_rescore_with_fewer_samples_cleans_up_and_the_page_says_what_was_used(tmp_path, trained_trial):
    """evaluator run, then run --force --num-samples 2: no stale sample_02/03.png, the parameters table shows
    2 samples, TensorBoard has one point per step; DINO on (demo) and memorisation against the training set."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from evaluator.report.files import read_trial

    t = copy_trial(trained_trial, tmp_path / "trial_0001")
    params = json.loads(t.params_path.read_text())
    params["config"]["evaluation"]["dino_model"] = "demo:tiny-dino"
    t.params_path.write_text(json.dumps(params))
    run_cli("evaluator", "run", "--dir", str(t.root), "--device", "cpu")
    first = read_trial(t)
    assert all(len(m.samples) == 4 for m in first.metrics.values())
    run_cli("evaluator", "run", "--dir", str(t.root), "--device", "cpu", "--force", "--num-samples", "2")
    f = read_trial(t)
    assert set(f.metrics) == set(first.metrics) and len(f.metrics) == 4
    for name, m in f.metrics.items():
        assert sorted(p.name for p in f.folders[name].glob("sample_*.png")) == ["sample_00.png", "sample_01.png"], name
        assert m.num_samples == 2 and m.num_training_images == 8 and m.num_references == 4 and m.notes == []
        assert m.metrics.dino is not None and m.metrics.dino_train is not None
        assert m.metrics.max_train_sim is not None and m.metrics.copy_rate == 0.0
        assert m.metrics.cmmd is not None and m.metrics.cmmd >= 0
        assert m.generation["dtype"] == m.generation["clip_dtype"] == "float32"  # CLIP in the pipeline's dtype
    page = write_trial_report(t).read_text()
    scored = re.findall(r"<tr><th>evaluation \(as scored\)</th><td>([^<]*)</td></tr>", page)
    assert len(scored) == 1 and scored[0].startswith("2 samples") and ", float32, CLIP demo:tiny-clip, " in scored[0], scored
    acc = EventAccumulator(str(t.logs_dir / "evaluator"), size_guidance={"scalars": 0})
    acc.Reload()
    steps = [e.step for e in acc.Scalars("eval/score")]
    assert len(steps) == len(set(steps)) == 4, steps  # baseline at 0 + three checkpoints, once each
