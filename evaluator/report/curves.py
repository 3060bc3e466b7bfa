"""Metric curves as inline SVG (matplotlib, Agg): no files to lose, nothing external to load.

Readable at 30+ checkpoints: every panel shares one x-range with whole-number ticks; shares
(``failure_rate``, ``copy_rate``) are drawn on 0..1; any other metric whose values spread less than a
meaningful amount (``MIN_SPAN``) is drawn on a window of that size and its title says "small range", so
0.598..0.610 no longer fills the panel like a big swing. Text stays text in the SVG (small, searchable).
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

CURVE_METRICS = ("score", "clip_t", "clip_i", "dino", "cmmd", "color_swd_lab", "color_delta_e2000_mean", "ssim_prev",
                 "diversity", "max_train_sim", "copy_rate", "failure_rate")
SHARES = ("failure_rate", "copy_rate")  # always 0..1
# The smallest y-window per metric: differences below it are within noise / below what a person notices.
MIN_SPAN = {"score": 0.1, "clip_t": 0.05, "clip_i": 0.05, "dino": 0.05, "cmmd": 1.0, "color_swd_lab": 2.0,
            "color_delta_e2000_mean": 2.3, "ssim_prev": 0.1, "ssim_base": 0.1, "diversity": 0.05,
            "max_train_sim": 0.05, "max_ref_sim": 0.05}
BOUNDS = {"clip_t": (-1, 1), "clip_i": (-1, 1), "dino": (-1, 1), "ssim_prev": (-1, 1), "ssim_base": (-1, 1),
          "max_train_sim": (-1, 1), "max_ref_sim": (-1, 1), "diversity": (0, 2), "cmmd": (0, math.inf),
          "color_swd_lab": (0, math.inf), "color_delta_e2000_mean": (0, math.inf), "score": (-1, 1)}


def x_ticks(xs: Sequence[float], most: int = 10) -> list[int]:
    """Whole-number ticks over the x values: every value when there are few, else an even integer step."""
    values = sorted({int(round(x)) for x in xs})
    if not values:
        return []
    if len(values) <= most:
        return values
    lo, hi = values[0], values[-1]
    step = max(1, math.ceil((hi - lo) / (most - 1)))
    for nice in (1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000):
        if nice >= step:
            step = nice
            break
    start = (lo // step) * step
    return [t for t in range(start, hi + step, step) if lo <= t <= hi] or values


def y_window(name: str, values: Sequence[float]) -> tuple[float, float, bool]:
    """(low, high, small) for one panel: 0..1 for shares; at least MIN_SPAN wide (inside the metric's
    bounds) otherwise, with ``small`` True when the data spread less than that."""
    if name in SHARES:
        return -0.02, 1.02, False
    if not values:
        return 0.0, 1.0, False
    lo, hi = min(values), max(values)
    span = MIN_SPAN.get(name, 0.0)
    if hi - lo >= span:
        pad = 0.08 * (hi - lo)
        return lo - pad, hi + pad, False
    mid = (lo + hi) / 2
    low, high = mid - span / 2, mid + span / 2
    b_lo, b_hi = BOUNDS.get(name, (-math.inf, math.inf))
    if low < b_lo:
        low, high = b_lo, b_lo + span
    if high > b_hi:
        low, high = b_hi - span, b_hi
    return low, high, True


def _svg(fig) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    text = buf.getvalue()
    return text[text.index("<svg"):]  # drop the XML prolog and doctype: we inline it


def metric_curves(points: list[tuple[float, dict]], baseline: dict | None, xlabel: str) -> str:
    """Small multiples of each metric against epoch (or step), baseline as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in CURVE_METRICS if any(m.get(n) is not None for _, m in points)
             or (baseline and baseline.get(n) is not None)]
    if not names:
        return ""
    xs_all = [x for x, _ in points]
    ticks = x_ticks(xs_all)
    x_lo, x_hi = (min(xs_all), max(xs_all)) if xs_all else (0, 1)
    pad = max(0.5, 0.03 * (x_hi - x_lo))
    cols = 4
    rows = (len(names) + cols - 1) // cols
    with plt.rc_context({"svg.fonttype": "none", "font.size": 8}):
        fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.5 * rows), squeeze=False)
        for ax, name in zip(axes.flat, names):
            xs = [x for x, m in points if m.get(name) is not None]
            ys = [m[name] for _, m in points if m.get(name) is not None]
            ax.plot(xs, ys, marker="o", color="#2563eb", linewidth=1.5, markersize=3 if len(xs) > 15 else 4,
                    label="checkpoints")
            values = list(ys)
            if baseline and baseline.get(name) is not None:
                ax.axhline(baseline[name], color="#9ca3af", linestyle="--", linewidth=1, label="baseline")
                values.append(baseline[name])
            low, high, small = y_window(name, values)
            ax.set_ylim(low, high)
            ax.set_xlim(x_lo - pad, x_hi + pad)
            ax.set_xticks(ticks)
            spread = (max(values) - min(values)) if values else 0.0
            ax.set_title(f"{name} · small range (spread {spread:.3g})" if small else name, fontsize=9,
                         color="#6b7280" if small else "#111827")
            ax.set_xlabel(xlabel, fontsize=8)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
        for ax in list(axes.flat)[len(names):]:
            ax.axis("off")
        axes.flat[0].legend(fontsize=7)
        fig.tight_layout()
        svg = _svg(fig)
        plt.close(fig)
    return svg


def score_curves(series: dict[str, list[tuple[float, float]]]) -> str:
    """Score against epoch for every trial of a sweep, one line each, whole-number epoch ticks."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not any(series.values()):
        return ""
    with plt.rc_context({"svg.fonttype": "none"}):
        fig, ax = plt.subplots(figsize=(7, 3.6))
        for name, pts in sorted(series.items()):
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", markersize=3, linewidth=1.2, label=name)
        ax.set_xticks(x_ticks([p[0] for pts in series.values() for p in pts]))
        ax.set_xlabel("epoch")
        ax.set_ylabel("score")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        svg = _svg(fig)
        plt.close(fig)
    return svg
