"""report.html for one trial: prompts x checkpoints grid, metric curves, parameters and status.

Self-contained (inline CSS and SVG), relative image links, and every piece of user text escaped:
prompts, names and paths are user input. Built to read at 30+ checkpoints and 8+ prompts: the grid and
the metrics table scroll inside their own boxes (prompt column and header row stay in place), so the
page itself never scrolls sideways; failed and copied samples say why under the image.
"""

from __future__ import annotations

from html import escape
from pathlib import Path
from urllib.parse import quote

from evaluator.metrics.evidence import NO_REFERENCES, result_notes
from evaluator.report.curves import metric_curves
from evaluator.report.files import TrialFiles, read_trial
from shared.jsonio import atomic_write_text
from shared.trial import BASELINE, Trial

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:24px;color:#111827;background:#fff;
overflow-wrap:anywhere}
h1{font-size:22px;margin:0 0 4px} h2{font-size:17px;margin:28px 0 8px} .muted{color:#6b7280}
table{border-collapse:collapse;font-size:13px} th,td{border:1px solid #e5e7eb;padding:4px 8px;text-align:left}
th{background:#f9fafb} .best{outline:3px solid #f59e0b;outline-offset:-3px;background:#fffbeb}
.scroll{max-width:100%;overflow:auto;border:1px solid #e5e7eb;border-radius:4px}
.grid-box{max-height:85vh} .grid-box table,.table-box table{border-collapse:separate;border-spacing:0}
.grid-box th{position:sticky;top:0;z-index:2;white-space:nowrap;font-size:12px}
.grid-box td.prompt,.grid-box th.corner,.table-box td.name,.table-box th.corner{position:sticky;left:0;z-index:1;
background:#fff} .grid-box th.corner,.table-box th.corner{z-index:3;background:#f9fafb}
.table-box td,.table-box th{white-space:nowrap}
.grid td{padding:3px;vertical-align:top} .grid img{width:128px;height:auto;display:block;
image-rendering:pixelated;border-radius:3px} .prompt{min-width:160px;max-width:240px;font-size:12px}
.failed{opacity:.35} .why{font-size:11px;max-width:128px;line-height:1.2;margin-top:2px}
.why-failed{color:#b91c1c;font-weight:600} .why-copy{color:#b45309;font-weight:600}
.notes{border:1px solid #f59e0b;background:#fffbeb;border-radius:4px;padding:6px 12px;margin:12px 0}
.notes li{margin:2px 0} .chips span{display:inline-block;background:#f3f4f6;
border-radius:10px;padding:2px 10px;margin:2px;font-size:12px} .state-finished{color:#047857}
.state-failed{color:#b91c1c} .state-running{color:#2563eb} .state-complete{color:#047857}
.state-pruned,.state-stopped-early,.state-stopped_early,.state-stopped{color:#b45309}
.missing{width:128px;height:60px;display:flex;align-items:center;justify-content:center;background:#f3f4f6;
color:#9ca3af;font-size:11px} .curves svg{max-width:100%;height:auto}
"""

KEY_METRICS = ("score", "clip_t", "clip_i", "dino", "dino_train", "cmmd", "color_swd_lab", "color_delta_e2000_mean",
               "ssim_prev", "ssim_base", "diversity", "max_ref_sim", "max_train_sim", "copy_rate", "brightness",
               "contrast_rms", "saturation", "clipped_fraction", "failure_rate")


def _fmt(v) -> str:
    """A cell value: 4 decimals for floats, a dash for missing, everything escaped."""
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.4f}"
    return escape(str(v))


def _values(v) -> str:
    """One generation setting as text: a scalar, or the distinct values of a per-sample list."""
    if isinstance(v, (list, tuple)):
        distinct = list(dict.fromkeys(str(x) for x in v))
        return "/".join(distinct)
    return str(v)


def _scored_as(m) -> str:
    """What one metrics.json says was actually used: samples, steps, guidance, encoders, evidence."""
    g = m.generation or {}
    samples = g.get("samples") if isinstance(g.get("samples"), list) else None
    steps = g.get("steps", [x.get("steps") for x in samples if isinstance(x, dict)] if samples else None)
    guidance = g.get("guidance_scale",
                     [x.get("guidance_scale") for x in samples if isinstance(x, dict)] if samples else None)
    parts = [f"{m.num_samples} samples"]
    if steps not in (None, []):
        parts.append(f"{_values(steps)} steps")
    if guidance not in (None, []):
        parts.append(f"guidance {_values(guidance)}")
    if g.get("dtype"):
        parts.append(str(g["dtype"]))
    parts.append(f"CLIP {m.encoder}" + (f" ({g['clip_dtype']})" if g.get("clip_dtype") not in (None, g.get("dtype"))
                                        else ""))
    parts.append(f"{m.num_references} references, {m.num_training_images} training images")
    return ", ".join(parts)


def _params_rows(f: TrialFiles, scored: list[tuple[str, object]]) -> list[tuple[str, str]]:
    """The config values that tell trials apart, what scoring actually used (from metrics.json: a
    ``--num-samples 2`` re-score shows 2), plus a sweep's sampled values (unescaped)."""
    rows: list[tuple[str, object]] = []
    if f.params is not None:
        c = f.params.config
        ev = c.evaluation
        rows = [("backend", f.params.backend), ("base model", c.model.base),
                ("train data", c.dataset.train_dir or "–"), ("resolution", c.dataset.resolution),
                ("network dim / alpha", f"{c.network.dim} / {c.network.alpha}"),
                ("learning rate", c.training.learning_rate), ("epochs", c.training.max_train_epochs),
                ("batch size", c.training.train_batch_size), ("seed", c.training.seed),
                ("evaluation (config)", f"{ev.num_samples} samples, {ev.steps} steps, guidance {ev.guidance_scale}, "
                                        f"CLIP {ev.clip_model}, DINO {getattr(ev, 'dino_model', None) or 'off'}")]
    groups: dict[str, list[str]] = {}
    for name, m in scored:
        groups.setdefault(_scored_as(m), []).append(name)
    for text, names in groups.items():
        who = "" if len(groups) == 1 else " — " + ", ".join(names[:6]) + (f" and {len(names) - 6} more"
                                                                           if len(names) > 6 else "")
        rows.append(("evaluation (as scored)", text + who))
    if f.params is not None and f.params.sweep:
        rows += [(f"sweep: {k}", v) for k, v in f.params.sweep.params.items()]
    return [(k, str(v)) for k, v in rows]


def trial_notes(f: TrialFiles) -> list[str]:
    """Weak-evidence notes: the summary's, each scored checkpoint's, and "no references" whenever a
    metrics.json says it was scored without any (older files carry no notes)."""
    notes: list[str] = list(f.summary.notes) if f.summary else []
    for m in f.metrics.values():
        notes += m.notes
        if m.num_references == 0 and not any(n.startswith(NO_REFERENCES) for n in notes):
            notes += result_notes(0, 1)
    return list(dict.fromkeys(notes))


def _sample_src(trial: Trial, f: TrialFiles, name: str, file: str) -> tuple[str, Path]:
    """The image's URL relative to report.html (percent-encoded: a '#' or '?' in a checkpoint name is part
    of the path, not a fragment or a query), and its path on disk."""
    path = f.folders.get(name, trial.results_dir(None, name)) / file
    try:
        return quote(path.relative_to(trial.report_path.parent).as_posix(), safe="/@"), path
    except ValueError:
        return path.absolute().as_uri(), path


def _cell(trial: Trial, f: TrialFiles, name: str, smp, cls: str) -> str:
    src, path = _sample_src(trial, f, name, smp.file)
    if not path.is_file():
        return f"<td{cls}><div class='missing'>image missing</div></td>"
    why = ""
    if smp.failed:
        why = f"<div class='why why-failed'>failed: {escape(smp.failed)}</div>"
    elif getattr(smp, "copy_of", None):
        why = f"<div class='why why-copy'>copy of {escape(smp.copy_of)}</div>"
    extra = (f" · failed: {smp.failed}" if smp.failed else "") + (
        f" · copy of {smp.copy_of}" if getattr(smp, "copy_of", None) else "")
    title = escape(f"{name} · {smp.prompt} · seed {smp.seed}{extra}", quote=True)
    img_cls = " class='failed'" if smp.failed else ""
    src = escape(src, quote=True)
    return (f"<td{cls}><a href='{src}'><img{img_cls} src='{src}' alt='{title}' title='{title}' loading='eager'></a>"
            f"{why}</td>")


def render_trial(trial: Trial, f: TrialFiles) -> str:
    """The page as one string: notes, grid, curves, metrics table, failures, parameters, unreadable files."""
    s = f.summary
    entries = s.ordered() if s else []
    best = s.best.checkpoint if s and s.best else None
    columns = ([(BASELINE, "baseline", None)] if f.baseline else []) + [
        (e.checkpoint, e.checkpoint, e) for e in entries]
    status = f.status
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>{escape(trial.name)} · epochscope</title>",
           "<meta name='viewport' content='width=device-width, initial-scale=1'>",
           f"<style>{CSS}</style></head><body>",
           f"<h1>{escape(trial.name)}</h1><div class='muted'>{escape(str(trial.root))}</div>"]
    if status:
        out.append(f"<p>Trainer: <b class='state-{escape(status.state)}'>{escape(status.state)}</b> · epoch "
                   f"{status.epoch}/{status.total_epochs or '?'} · step {status.step}/{status.total_steps or '?'}"
                   f" · {escape(status.message)}</p>")
    if s and s.best:
        out.append(f"<p>Best checkpoint: <b>★ {escape(s.best.checkpoint)}</b> (score {s.best.score:.4f}, epoch "
                   f"{_fmt(s.best.epoch)}) <span class='muted'>— {escape(s.best.rule)}</span></p>")
    notes = trial_notes(f)
    if notes:
        out.append("<div class='notes'><b>Weak evidence</b><ul>" + "".join(f"<li>{escape(n)}</li>" for n in notes)
                   + "</ul></div>")
    out.append("<h2>Samples: prompts × checkpoints</h2>")
    scored = [(name, f.metrics[name]) for name, _, _ in columns if name in f.metrics]
    rows_from = max((m for _, m in scored), key=lambda m: len(m.samples), default=None)
    if not columns or rows_from is None:
        out.append("<p class='muted'>No checkpoint has been scored yet.</p>")
    else:
        out.append(f"<div class='scroll grid-box'><table class='grid'><tr><th class='corner'>prompt · seed "
                   f"<span class='muted'>({len(columns)} columns)</span></th>")
        for name, label, e in columns:
            cls = " class='best'" if name == best else ""
            sub = f"<br><span class='muted'>epoch {_fmt(e.epoch)} · {_fmt(e.metrics.score)}</span>" if e else ""
            star = "★ " if name == best else ""
            out.append(f"<th{cls}>{star}{escape(label)}{sub}</th>")
        out.append("</tr>")
        for i, sample in enumerate(rows_from.samples):
            out.append(f"<tr><td class='prompt'>{escape(sample.prompt)}<br><span class='muted'>seed {sample.seed}"
                       "</span></td>")
            for name, _, _ in columns:
                m = f.metrics.get(name)
                cls = " class='best'" if name == best else ""
                if m is None or i >= len(m.samples):
                    out.append(f"<td{cls}></td>")
                else:
                    out.append(_cell(trial, f, name, m.samples[i], cls))
            out.append("</tr>")
        out.append("</table></div>")
    out.append("<h2>Metric curves</h2>")
    x_is_epoch = all(e.epoch is not None for e in entries)
    points = [((e.epoch if x_is_epoch else (e.step or 0)), e.metrics.model_dump()) for e in entries]
    svg = metric_curves(points, s.baseline.metrics.model_dump() if s and s.baseline else None,
                        "epoch" if x_is_epoch else "step") if entries else ""
    out.append(f"<div class='curves'>{svg}</div>" if svg else "<p class='muted'>No curves yet.</p>")
    if entries or (s and s.baseline):
        rows = ([s.baseline] if s and s.baseline else []) + entries
        shown = [k for k in KEY_METRICS if any(getattr(e.metrics, k, None) is not None for e in rows)]
        out.append("<h2>All metrics</h2><div class='scroll table-box'><table><tr><th class='corner'>checkpoint</th>"
                   "<th>epoch</th><th>step</th>" + "".join(f"<th>{k}</th>" for k in shown) + "</tr>")
        for e in rows:
            cls = " class='best'" if e.checkpoint == best else ""
            md = e.metrics.model_dump()
            out.append(f"<tr{cls}><td class='name'>{escape(e.checkpoint)}</td><td>{_fmt(e.epoch)}</td>"
                       f"<td>{_fmt(e.step)}</td>" + "".join(f"<td>{_fmt(md.get(k))}</td>" for k in shown) + "</tr>")
        out.append("</table></div>")
        missing = [k for k in KEY_METRICS if k not in shown]
        if missing:
            out.append(f"<p class='muted'>Not measured in this trial: {escape(', '.join(missing))}.</p>")
    if s and s.failed:
        out.append("<h2>Failed</h2><ul>" + "".join(f"<li><b>{escape(k)}</b>: {escape(v)}</li>"
                                                   for k, v in s.failed.items()) + "</ul>")
    rows = _params_rows(f, scored)
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
