"""index.html at a sweep root: trials sorted by best score, their state and sampled parameters, and
score against epoch for all trials."""

from __future__ import annotations

from html import escape
from pathlib import Path
from urllib.parse import quote

from evaluator.report.curves import score_curves
from evaluator.report.files import read_trial, trial_state
from evaluator.report.trial_page import CSS
from shared.jsonio import atomic_write_text
from shared.trial import SweepRoot


def write_sweep_index(root: Path) -> Path:
    """Rewrite ``index.html`` at a sweep root atomically from whatever its trials hold now."""
    sweep = SweepRoot(root)
    rows, series = [], {}
    for trial in sweep.trials():
        f = read_trial(trial)
        s = f.summary
        best = s.best if s else None
        params = f.params.sweep.params if f.params and f.params.sweep else {}
        series[trial.name] = [(e.epoch, e.metrics.score) for e in (s.ordered() if s else [])
                              if e.epoch is not None and e.metrics.score is not None]
        rows.append((best.score if best else float("-inf"), trial, f, best, params, len(s.checkpoints) if s else 0))
    rows.sort(key=lambda r: r[0], reverse=True)
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>sweep · {escape(sweep.root.name)}</title>",
           f"<style>{CSS}</style></head><body><h1>Sweep {escape(sweep.root.name)}</h1>",
           f"<div class='muted'>{escape(str(sweep.root))} · {len(rows)} trials</div>",
           "<h2>Trials by best score</h2><table><tr><th>trial</th><th>state</th><th>best score</th>"
           "<th>best checkpoint</th><th>scored</th><th>parameters</th></tr>"]
    for score, trial, f, best, params, n in rows:
        link = escape(quote(f"{trial.name}/realtime_evaluations/report.html"), quote=True)
        state = trial_state(f)
        css_state = escape(state.replace(" ", "-"), quote=True)
        ptext = ", ".join(f"{k} = {v:.3g}" if isinstance(v, float) else f"{k} = {v}" for k, v in params.items())
        out.append(f"<tr><td><a href='{link}'>{escape(trial.name)}</a></td><td class='state-{css_state}'>"
                   f"{escape(state)}</td><td>{'–' if best is None else f'{score:.4f}'}</td>"
                   f"<td>{escape(best.checkpoint) if best else '–'}</td><td>{n}</td><td>{escape(ptext)}</td></tr>")
    out.append("</table><h2>Score against epoch</h2>")
    svg = score_curves(series)
    out.append(f"<div class='curves'>{svg}</div>" if svg else "<p class='muted'>No scores yet.</p>")
    out.append("</body></html>")
    atomic_write_text(sweep.index_path, "\n".join(out))
    return sweep.index_path
