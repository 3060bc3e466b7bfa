"""report.html for one trial: prompts x checkpoints grid, metric curves, parameters and status.

Self-contained (inline CSS and SVG), relative image links, and every piece of user text escaped:
prompts, names and paths are user input.
"""

from __future__ import annotations

from html import escape
from pathlib import Path

from evaluator.report.curves import metric_curves
from evaluator.report.files import TrialFiles, read_trial
from shared.jsonio import atomic_write_text
from shared.trial import BASELINE, Trial

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:24px;color:#111827;background:#fff}
h1{font-size:22px;margin:0 0 4px} h2{font-size:17px;margin:28px 0 8px} .muted{color:#6b7280}
table{border-collapse:collapse;font-size:13px} th,td{border:1px solid #e5e7eb;padding:4px 8px;text-align:left}
th{background:#f9fafb} .grid td{padding:3px;vertical-align:top} .grid img{width:160px;height:auto;display:block;
image-rendering:pixelated;border-radius:3px} .best{outline:3px solid #f59e0b;background:#fffbeb}
.prompt{max-width:260px;font-size:12px} .failed{opacity:.35} .chips span{display:inline-block;background:#f3f4f6;
border-radius:10px;padding:2px 10px;margin:2px;font-size:12px} .state-finished{color:#047857}
.state-failed{color:#b91c1c} .state-running{color:#2563eb} .state-complete{color:#047857}
.state-pruned,.state-stopped-early,.state-stopped_early,.state-stopped{color:#b45309}
.missing{width:160px;height:60px;display:flex;align-items:center;justify-content:center;background:#f3f4f6;
color:#9ca3af;font-size:11px} .curves svg{max-width:100%;height:auto}
"""

KEY_METRICS = ("score", "clip_t", "clip_i", "cmmd", "color_swd_lab", "color_delta_e2000_mean", "ssim_prev",
               "ssim_base", "diversity", "max_ref_sim", "brightness", "contrast_rms", "saturation",
               "clipped_fraction", "failure_rate")


def _fmt(v) -> str:
    """A cell value: 4 decimals for floats, a dash for missing, everything escaped."""
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.4f}"
    return escape(str(v))


def _params_rows(f: TrialFiles) -> list[tuple[str, str]]:
    """The config values that tell trials apart, plus a sweep's sampled values (unescaped)."""
    if f.params is None:
        return []
    c = f.params.config
    rows = [("backend", f.params.backend), ("base model", c.model.base), ("train data", c.dataset.train_dir or "–"),
            ("resolution", c.dataset.resolution), ("network dim / alpha", f"{c.network.dim} / {c.network.alpha}"),
            ("learning rate", c.training.learning_rate), ("epochs", c.training.max_train_epochs),
            ("batch size", c.training.train_batch_size), ("seed", c.training.seed),
            ("evaluation", f"{c.evaluation.num_samples} samples, {c.evaluation.steps} steps, "
                           f"guidance {c.evaluation.guidance_scale}, CLIP {c.evaluation.clip_model}")]
    if f.params.sweep:
        rows += [(f"sweep: {k}", v) for k, v in f.params.sweep.params.items()]
    return [(k, str(v)) for k, v in rows]


def render_trial(trial: Trial, f: TrialFiles) -> str:
    """The page as one string: grid, curves, metrics table, failures, parameters, unreadable files."""
    s = f.summary
    entries = s.ordered() if s else []
    best = s.best.checkpoint if s and s.best else None
    columns = ([(BASELINE, "baseline", None)] if f.baseline else []) + [
        (e.checkpoint, e.checkpoint, e) for e in entries]
    status = f.status
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>{escape(trial.name)} · epochscope</title>",
           f"<style>{CSS}</style></head><body>",
           f"<h1>{escape(trial.name)}</h1><div class='muted'>{escape(str(trial.root))}</div>"]
    if status:
        out.append(f"<p>Trainer: <b class='state-{escape(status.state)}'>{escape(status.state)}</b> · epoch "
                   f"{status.epoch}/{status.total_epochs or '?'} · step {status.step}/{status.total_steps or '?'}"
                   f" · {escape(status.message)}</p>")
    if s and s.best:
        out.append(f"<p>Best checkpoint: <b>★ {escape(s.best.checkpoint)}</b> (score {s.best.score:.4f}, epoch "
                   f"{_fmt(s.best.epoch)}) <span class='muted'>— {escape(s.best.rule)}</span></p>")
    out.append("<h2>Samples: prompts × checkpoints</h2>")
    samples = f.metrics.get(BASELINE) or next(iter(f.metrics.values()), None)
    if not columns or samples is None:
        out.append("<p class='muted'>No checkpoint has been scored yet.</p>")
    else:
        out.append("<table class='grid'><tr><th>prompt · seed</th>")
        for name, label, e in columns:
            cls = " class='best'" if name == best else ""
            sub = f"<br><span class='muted'>epoch {_fmt(e.epoch)} · {_fmt(e.metrics.score)}</span>" if e else ""
            star = "★ " if name == best else ""
            out.append(f"<th{cls}>{star}{escape(label)}{sub}</th>")
        out.append("</tr>")
        for i, sample in enumerate(samples.samples):
            out.append(f"<tr><td class='prompt'>{escape(sample.prompt)}<br><span class='muted'>seed {sample.seed}"
                       "</span></td>")
            for name, _, _ in columns:
                m = f.metrics.get(name)
                cls = " class='best'" if name == best else ""
                if m is None or i >= len(m.samples):
                    out.append(f"<td{cls}></td>")
                    continue
                smp = m.samples[i]
                src = escape(f"{name}/{smp.file}", quote=True)
                if not (trial.evaluations_dir / name / smp.file).is_file():
                    out.append(f"<td{cls}><div class='missing'>image missing</div></td>")
                    continue
                img_cls = " class='failed'" if smp.failed else ""
                title = escape(f"{name} · {smp.prompt} · seed {smp.seed}" + (f" · failed: {smp.failed}" if smp.failed
                                                                                 else ""), quote=True)
                out.append(f"<td{cls}><a href='{src}'><img{img_cls} src='{src}' alt='{title}' title='{title}' "
                           "loading='eager'></a></td>")
            out.append("</tr>")
        out.append("</table>")
    out.append("<h2>Metric curves</h2>")
    x_is_epoch = all(e.epoch is not None for e in entries)
    points = [((e.epoch if x_is_epoch else (e.step or 0)), e.metrics.model_dump()) for e in entries]
    svg = metric_curves(points, s.baseline.metrics.model_dump() if s and s.baseline else None,
                        "epoch" if x_is_epoch else "step") if entries else ""
    out.append(f"<div class='curves'>{svg}</div>" if svg else "<p class='muted'>No curves yet.</p>")
    if entries or (s and s.baseline):
        out.append("<h2>All metrics</h2><table><tr><th>checkpoint</th><th>epoch</th><th>step</th>"
                   + "".join(f"<th>{k}</th>" for k in KEY_METRICS) + "</tr>")
        rows = ([s.baseline] if s and s.baseline else []) + entries
        for e in rows:
            cls = " class='best'" if e.checkpoint == best else ""
            md = e.metrics.model_dump()
            out.append(f"<tr{cls}><td>{escape(e.checkpoint)}</td><td>{_fmt(e.epoch)}</td><td>{_fmt(e.step)}</td>"
                       + "".join(f"<td>{_fmt(md.get(k))}</td>" for k in KEY_METRICS) + "</tr>")
        out.append("</table>")
    if s and s.failed:
        out.append("<h2>Failed</h2><ul>" + "".join(f"<li><b>{escape(k)}</b>: {escape(v)}</li>"
                                                   for k, v in s.failed.items()) + "</ul>")
    rows = _params_rows(f)
    if rows:
        out.append("<h2>Parameters</h2><table>" + "".join(f"<tr><th>{escape(k)}</th><td>{escape(v)}</td></tr>"
                                                          for k, v in rows) + "</table>")
    if f.problems:
        out.append("<h2>Unreadable files</h2><ul>" + "".join(f"<li>{escape(p)}</li>" for p in f.problems) + "</ul>")
    updated = s.last_update.strftime("%Y-%m-%d %H:%M:%S UTC") if s else "–"
    out.append(f"<p class='muted'>Updated {escape(updated)} · epochscope</p></body></html>")
    return "\n".join(out)


def write_trial_report(trial: Trial) -> Path:
    """Rewrite the trial's report.html atomically from whatever files exist now."""
    html = render_trial(trial, read_trial(trial))
    atomic_write_text(trial.report_path, html)
    return trial.report_path
