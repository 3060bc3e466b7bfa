"""Metric curves as inline SVG (matplotlib, Agg): no files to lose, nothing external to load."""

from __future__ import annotations

import io

CURVE_METRICS = ("score", "clip_t", "clip_i", "color_swd_lab", "color_delta_e2000_mean", "ssim_prev", "diversity",
                 "failure_rate")


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
    from matplotlib.ticker import MaxNLocator

    names = [n for n in CURVE_METRICS if any(m.get(n) is not None for _, m in points)
             or (baseline and baseline.get(n) is not None)]
    if not names:
        return ""
    cols = 4
    rows = (len(names) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.4 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        xs = [x for x, m in points if m.get(name) is not None]
        ys = [m[name] for _, m in points if m.get(name) is not None]
        ax.plot(xs, ys, marker="o", color="#2563eb", linewidth=1.5, markersize=4, label="checkpoints")
        if baseline and baseline.get(name) is not None:
            ax.axhline(baseline[name], color="#9ca3af", linestyle="--", linewidth=1, label="baseline")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs and steps are whole numbers
        ax.set_title(name, fontsize=10)
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
    """Score against epoch for every trial of a sweep, one line each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    if not any(series.values()):
        return ""
    fig, ax = plt.subplots(figsize=(7, 3.6))
    for name, pts in sorted(series.items()):
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", markersize=3, linewidth=1.2, label=name)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("score")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    svg = _svg(fig)
    plt.close(fig)
    return svg
