"""Inline SVG charts for the report: line charts with interval bands, forest plots, bars.

Python computes the geometry (pixel coordinates, ticks, labels); the markup is
in ``templates/chart_*.svg.j2``, rendered with autoescaping. The charts need no
script and no network.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from markupsafe import Markup

from ekt.evaluation.stats import Interval
from ekt.report.tables import pct_interval, pp_interval
from ekt.report.templating import render


@dataclass
class Series:
    name: str
    xs: list[float]
    ys: list[float]
    color: str
    lo: list[float] | None = None
    hi: list[float] | None = None
    tips: list[str] | None = None


@dataclass(frozen=True)
class Axes:
    """What a chart's frame says: its title, the labels of its axes, and the id of its
    element in the page ("": none)."""

    title: str
    xlabel: str
    ylabel: str
    chart_id: str = ""


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    if hi <= lo:
        hi = lo + 1
    raw = (hi - lo) / count
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    ticks = []
    t = first
    while t <= hi + 1e-9 * step:
        ticks.append(round(t, 12))
        t += step
    return ticks


def fmt_tick(v: float, pct: bool) -> str:
    if pct:
        s = f"{100 * v:.1f}".rstrip("0").rstrip(".")
        return s + "%"
    if abs(v) >= 1000 or v == int(v):
        return f"{v:.0f}"
    return f"{v:.3g}"


def _points(pairs) -> str:
    return " ".join(f"{x:.1f},{y:.1f}" for x, y in pairs)


def line_chart(
    series: Sequence[Series],
    axes: Axes,
    *,
    log_x: bool = False,
    pct: bool = False,
    y_zero: bool = True,
    width: int = 560,
    height: int = 300,
) -> Markup:
    """A line chart with optional shaded interval bands and point tooltips."""
    pts = [(x, y) for s in series for x, y in zip(s.xs, s.ys)]
    if not pts:
        return Markup(render("chart_empty.html.j2", title=axes.title))
    ml, mr, mt, mb = 58, 14, 26, 42
    pw, ph = width - ml - mr, height - mt - mb
    xs = [x for x, _ in pts]
    ys = [y for _, y in pts]
    for s in series:
        ys += [v for v in (s.lo or []) + (s.hi or [])]
    x0, x1 = min(xs), max(xs)
    if log_x:
        x0, x1 = max(x0, 1e-9), max(x1, 1e-9)
    if x1 == x0:  # one x: centred, the axis not running past it (a 1-step training log)
        half = x0 * 0.5 if log_x else 0.5
        x0, x1 = x0 - half, x1 + half
    y0 = 0.0 if y_zero else min(ys)
    y1 = max(ys)
    if pct:
        y1 = min(1.0, max(y1 * 1.1, 0.05))
    else:
        pad = (y1 - y0) * 0.08 or max(abs(y1), 1.0) * 0.1
        y1 += pad
        y0 = y0 if y_zero else y0 - pad

    def fx(x: float) -> float:
        if log_x:
            return ml + pw * (math.log10(x) - math.log10(x0)) / (math.log10(x1) - math.log10(x0))
        return ml + pw * (x - x0) / (x1 - x0)

    def fy(y: float) -> float:
        return mt + ph * (1 - (y - y0) / (y1 - y0))

    yticks = [
        (fy(t), fmt_tick(t, pct)) for t in nice_ticks(y0, y1) if y0 - 1e-12 <= t <= y1 + 1e-12
    ]
    if log_x:
        xt = [
            m * 10**e for e in range(0, 7) for m in (1, 2, 5) if x0 - 1e-9 <= m * 10**e <= x1 + 1e-9
        ]
    else:
        xt = [t for t in nice_ticks(x0, x1, 6) if x0 - 1e-9 <= t <= x1 + 1e-9]
        if all(float(x).is_integer() for x in xs):  # steps, k: no ticks between integers
            xt = [t for t in xt if float(t).is_integer()] or [x0, x1]
    bands = [
        (
            s.color,
            _points(zip(map(fx, s.xs), map(fy, s.hi)))
            + " "
            + _points(zip(map(fx, s.xs[::-1]), map(fy, s.lo[::-1]))),
        )
        for s in series
        if s.lo and s.hi and len(s.xs) > 1
    ]
    lines = []
    for s in series:
        r = 3 if len(s.xs) <= 40 else 0.1
        dots = [
            (fx(x), fy(y), r, s.tips[i] if s.tips else f"{s.name}: {fmt_tick(y, pct)} at {x:g}")
            for i, (x, y) in enumerate(zip(s.xs, s.ys))
        ]
        path = _points(zip(map(fx, s.xs), map(fy, s.ys))) if len(s.xs) > 1 else ""
        lines.append({"series": s, "path": path, "dots": dots})
    return Markup(
        render(
            "chart_line.svg.j2",
            id=axes.chart_id,
            title=axes.title,
            xlabel=axes.xlabel,
            ylabel=axes.ylabel,
            width=width,
            height=height,
            ml=ml,
            mt=mt,
            pw=pw,
            ph=ph,
            yticks=yticks,
            xticks=[(fx(t), fmt_tick(t, False)) for t in xt],
            bands=bands,
            lines=lines,
            series=series,
        )
    )


def interval_chart(
    items: Sequence[tuple[str, Interval, str]],
    title: str,
    diff: bool = False,
    width: int = 560,
    chart_id: str = "",
) -> Markup:
    """Forest plot: one row per (label, interval, color); a zero line for differences."""
    if not items:
        return Markup("")
    lw, mr, mt, mb, rh = 190, 16, 26, 30, 22
    height = mt + mb + rh * len(items)
    pw = width - lw - mr
    lo = min(iv.low for _, iv, _ in items)
    hi = max(iv.high for _, iv, _ in items)
    if diff:
        span = max(abs(lo), abs(hi), 0.01) * 1.1
        x0, x1 = -span, span
    else:
        x0, x1 = 0.0, min(1.0, max(hi * 1.1, 0.05))

    def fx(x: float) -> float:
        return lw + pw * (x - x0) / (x1 - x0)

    base = mt + rh * len(items)
    ticks = []
    for t in nice_ticks(x0, x1, 6):
        if x0 - 1e-12 <= t <= x1 + 1e-12:
            label = fmt_tick(t, True)
            if diff and t > 0:
                label = "+" + label
            cls = "zero" if diff and abs(t) < 1e-12 else "grid"
            ticks.append((fx(t), cls, label.replace("%", " pp" if diff else "%")))
    rows = []
    for i, (label, iv, c) in enumerate(items):
        tip = f"{label}: {pp_interval(iv.as_dict()) if diff else pct_interval(iv.as_dict())}"
        rows.append(
            {
                "y": mt + rh * i + rh / 2,
                "label": label,
                "short": label if len(label) <= 30 else label[:29] + "…",
                "x_lo": fx(iv.low),
                "x_hi": fx(iv.high),
                "x_est": fx(iv.estimate),
                "color": c,
                "tip": tip,
            }
        )
    return Markup(
        render(
            "chart_interval.svg.j2",
            id=chart_id,
            title=title,
            width=width,
            height=height,
            lw=lw,
            mt=mt,
            base=base,
            ticks=ticks,
            rows=rows,
        )
    )


def bar_chart(
    values: Sequence[tuple[str, float]],
    axes: Axes,
    *,
    color: str = "#1f5fbf",
    width: int = 560,
    height: int = 220,
) -> Markup:
    if not values:
        return Markup("")
    ml, mr, mt, mb = 50, 10, 26, 40
    pw, ph = width - ml - mr, height - mt - mb
    top = max(v for _, v in values) or 1
    ticks = nice_ticks(0, top, 4)
    if ticks[-1] < top:  # one more tick above the tallest bar
        ticks.append(ticks[-1] + (ticks[1] - ticks[0] if len(ticks) > 1 else top))
    top = ticks[-1]
    bw = pw / len(values)
    every = max(1, math.ceil(len(values) / 20))
    bars = []
    for i, (label, v) in enumerate(values):
        h = ph * v / top
        x = ml + i * bw
        bars.append(
            {
                "x": x + bw * 0.1,
                "y": mt + ph - h,
                "w": bw * 0.8,
                "h": h,
                "tip": f"{label}: {v:g}",
                "label": label if i % every == 0 else None,
                "lx": x + bw / 2,
            }
        )
    return Markup(
        render(
            "chart_bar.svg.j2",
            id=axes.chart_id,
            title=axes.title,
            xlabel=axes.xlabel,
            ylabel=axes.ylabel,
            width=width,
            height=height,
            ml=ml,
            mt=mt,
            pw=pw,
            ph=ph,
            color=color,
            bars=bars,
            ticks=[(mt + ph * (1 - t / top), f"{t:g}") for t in ticks],
        )
    )
