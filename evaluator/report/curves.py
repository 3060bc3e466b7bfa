"""Metric curves as inline SVG, drawn directly (no plotting library): no files to lose, nothing external
to load, and a few milliseconds a report instead of matplotlib's ~0.4 s (the report is redrawn after every
scored checkpoint).

Readable at 30+ checkpoints: every panel shares one x-range with whole-number ticks; shares
(``failure_rate``, ``copy_rate``) are drawn on 0..1; any other metric whose values spread less than a
meaningful amount (``MIN_SPAN``) is drawn on a window of that size and its title says "small range", so
0.598..0.610 no longer fills the panel like a big swing. Text stays text in the SVG (small, searchable).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape

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


def y_ticks(low: float, high: float, most: int = 6) -> tuple[list[float], int]:
    """Evenly spaced round ticks inside ``low..high`` (steps of 1, 2 or 5 times a power of ten), and how
    many decimals their labels need."""
    if not high > low:
        return [low], 2
    raw = (high - low) / max(1, most - 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw * (1 - 1e-9))
    first = math.ceil(low / step - 1e-9)
    ticks = [round(k * step, 12) for k in range(first, math.floor(high / step + 1e-9) + 1)]
    decimals = max(0, -math.floor(math.log10(step) + 1e-9))
    return ticks, max(decimals, 1)


def _num(v: float) -> str:
    return f"{v:.1f}"


class _Panel:
    """One plot area at (x, y) of size (w, h) on the page, mapping data to page coordinates."""

    def __init__(self, x: float, y: float, w: float, h: float, xr: tuple[float, float], yr: tuple[float, float]):
        self.x, self.y, self.w, self.h, self.xr, self.yr = x, y, w, h, xr, yr

    def px(self, v: float) -> float:
        return self.x + (v - self.xr[0]) / ((self.xr[1] - self.xr[0]) or 1) * self.w

    def py(self, v: float) -> float:
        return self.y + self.h - (v - self.yr[0]) / ((self.yr[1] - self.yr[0]) or 1) * self.h

    def frame(self, out: list[str], xticks: list[int], yticks: list[float], decimals: int, xlabel: str,
              ylabel: str | None = None, size: int = 7) -> None:
        """Grid, box, tick labels and axis labels."""
        x0, y0, x1, y1 = self.x, self.y, self.x + self.w, self.y + self.h
        for t in xticks:
            X = self.px(t)
            out.append(f'<path d="M{_num(X)} {_num(y0)}V{_num(y1)}" style="stroke: #e5e7eb; stroke-width: 0.8"/>')
            out.append(f'<text style="font-size: {size}px; text-anchor: middle; fill: #374151" x="{_num(X)}" '
                       f'y="{_num(y1 + size + 3)}">{t}</text>')
        for t in yticks:
            Y = self.py(t)
            out.append(f'<path d="M{_num(x0)} {_num(Y)}H{_num(x1)}" style="stroke: #e5e7eb; stroke-width: 0.8"/>')
            out.append(f'<text style="font-size: {size}px; text-anchor: end; fill: #374151" x="{_num(x0 - 3)}" '
                       f'y="{_num(Y + size / 3)}">{t:.{decimals}f}</text>')
        out.append(f'<rect x="{_num(x0)}" y="{_num(y0)}" width="{_num(self.w)}" height="{_num(self.h)}" '
                   'style="fill: none; stroke: #9ca3af; stroke-width: 0.8"/>')
        out.append(f'<text style="font-size: {size + 1}px; text-anchor: start; fill: #374151" '
                   f'x="{_num((x0 + x1) / 2 - len(xlabel) * (size + 1) * 0.3)}" y="{_num(y1 + 2 * size + 8)}">'
                   f'{escape(xlabel)}</text>')
        if ylabel:
            out.append(f'<text style="font-size: {size + 1}px; text-anchor: middle; fill: #374151" '
                       f'transform="translate({_num(x0 - 34)} {_num((y0 + y1) / 2)}) rotate(-90)">'
                       f'{escape(ylabel)}</text>')

    def line(self, out: list[str], xs: Sequence[float], ys: Sequence[float], color: str, marker: float,
             width: float = 1.5, dash: str | None = None) -> None:
        if not xs:
            return
        d = "".join(f"{'M' if i == 0 else 'L'}{_num(self.px(x))} {_num(self.py(y))}"
                    for i, (x, y) in enumerate(zip(xs, ys)))
        style = f"fill: none; stroke: {color}; stroke-width: {width}" + (f"; stroke-dasharray: {dash}" if dash else "")
        out.append(f'<path d="{d}" style="{style}"/>')
        for x, y in zip(xs, ys) if marker else ():
            out.append(f'<circle cx="{_num(self.px(x))}" cy="{_num(self.py(y))}" r="{marker}" style="fill: {color}"/>')


def _svg(width: float, height: float, body: list[str]) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{_num(width)}pt" height="{_num(height)}pt" '
            f'viewBox="0 0 {_num(width)} {_num(height)}" style="font-family: system-ui, sans-serif">'
            + "".join(body) + "</svg>")


def _clamp(values: list[float], low: float, high: float) -> list[float]:
    """Values drawn inside the panel: a point outside the window sits on its edge."""
    return [min(high, max(low, v)) for v in values]


def metric_curves(points: list[tuple[float, dict]], baseline: dict | None, xlabel: str) -> str:
    """Small multiples of each metric against epoch (or step), baseline as a dashed line."""
    names = [n for n in CURVE_METRICS if any(m.get(n) is not None for _, m in points)
             or (baseline and baseline.get(n) is not None)]
    if not names:
        return ""
    xs_all = [x for x, _ in points]
    ticks = x_ticks(xs_all)
    x_lo, x_hi = (min(xs_all), max(xs_all)) if xs_all else (0, 1)
    pad = max(0.5, 0.03 * (x_hi - x_lo))
    cols, pw, ph = 4, 230.0, 180.0  # a panel: 3.2 x 2.5 inches at 72 points an inch
    rows = (len(names) + cols - 1) // cols
    out: list[str] = []
    for k, name in enumerate(names):
        r, c = divmod(k, cols)
        xs = [x for x, m in points if m.get(name) is not None]
        ys = [m[name] for _, m in points if m.get(name) is not None]
        values = list(ys) + ([baseline[name]] if baseline and baseline.get(name) is not None else [])
        low, high, small = y_window(name, values)
        p = _Panel(c * pw + 44, r * ph + 18, pw - 56, ph - 52, (x_lo - pad, x_hi + pad), (low, high))
        yt, decimals = y_ticks(low, high)
        p.frame(out, ticks, yt, decimals, xlabel)
        spread = (max(values) - min(values)) if values else 0.0
        title = f"{name} · small range (spread {spread:.3g})" if small else name
        out.append(f'<text style="font-size: 9px; text-anchor: middle; fill: {"#6b7280" if small else "#111827"}" '
                   f'x="{_num(p.x + p.w / 2)}" y="{_num(p.y - 6)}">{escape(title)}</text>')
        if baseline and baseline.get(name) is not None:
            b = min(high, max(low, baseline[name]))
            p.line(out, [x_lo - pad, x_hi + pad], [b, b], "#9ca3af", 0, 1, "4 3")
        p.line(out, xs, _clamp(ys, low, high), "#2563eb", 1.5 if len(xs) > 15 else 2)
        if k == 0:  # the legend, in the first panel's top right corner
            lx, ly = p.x + p.w - 62, p.y + 8
            out.append(f'<path d="M{_num(lx)} {_num(ly)}h12" style="stroke: #2563eb; stroke-width: 1.5"/>'
                       f'<text style="font-size: 7px; text-anchor: start" x="{_num(lx + 15)}" y="{_num(ly + 2.5)}">'
                       "checkpoints</text>")
            if baseline:
                out.append(f'<path d="M{_num(lx)} {_num(ly + 10)}h12" style="stroke: #9ca3af; stroke-width: 1; '
                           f'stroke-dasharray: 4 3"/><text style="font-size: 7px; text-anchor: start" '
                           f'x="{_num(lx + 15)}" y="{_num(ly + 12.5)}">baseline</text>')
    return _svg(cols * pw, rows * ph, out)


PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf")


def score_curves(series: dict[str, list[tuple[float, float]]]) -> str:
    """Score against epoch for every trial of a sweep, one line each, whole-number epoch ticks."""
    if not any(series.values()):
        return ""
    xs = [p[0] for pts in series.values() for p in pts]
    ys = [p[1] for pts in series.values() for p in pts]
    pad_x = max(0.5, 0.03 * (max(xs) - min(xs)))
    spread = max(ys) - min(ys)
    pad_y = 0.08 * spread if spread else 0.05
    legend = sorted(name for name, pts in series.items() if pts)
    width, height = 504.0, 260.0
    p = _Panel(50, 12, width - 60 - 110, height - 50, (min(xs) - pad_x, max(xs) + pad_x),
               (min(ys) - pad_y, max(ys) + pad_y))
    out: list[str] = []
    yt, decimals = y_ticks(*p.yr)
    p.frame(out, x_ticks(xs), yt, decimals, "epoch", "score", size=8)
    for i, name in enumerate(legend):
        color = PALETTE[i % len(PALETTE)]
        pts = series[name]
        p.line(out, [q[0] for q in pts], [q[1] for q in pts], color, 2, 1.2)
        ly = p.y + 6 + 12 * i
        out.append(f'<path d="M{_num(p.x + p.w + 10)} {_num(ly)}h14" style="stroke: {color}; stroke-width: 1.5"/>'
                   f'<text style="font-size: 8px; text-anchor: start" x="{_num(p.x + p.w + 28)}" '
                   f'y="{_num(ly + 3)}">{escape(name)}</text>')
    return _svg(width, height, out)
