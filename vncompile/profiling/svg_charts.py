"""Line charts as inline SVG for the self-contained report: no plotting library, no script, nothing fetched.

A chart is drawn from zero on the value axis (memory and latency compared honestly), with
axis labels carrying units, a legend below the plot (a row per series, in the series'
colour) and each point's own tooltip as an SVG ``<title>``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from html import escape

# Tableau 10: distinct on white and for most colour-blind readers; a model keeps its colour across the page.
PALETTE = ("#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f",
           "#bab0ac")
LEFT, RIGHT, TOP, BOTTOM = 64, 16, 28, 44  # margins around the plot area (axis labels and ticks)
LEGEND_ROW = 18


@dataclass(frozen=True)
class Series:
    label: str
    colour: str
    points: list[tuple[float, float]]
    tips: list[str] = field(default_factory=list)  # one tooltip per point, or none
    marked: int | None = None  # a point drawn large and ringed (a peak), named by ``note`` in the legend
    note: str = ""  # after the label in the legend


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values covering ``low..high`` (steps of 1, 2, 2.5 or 5 times a power of ten)."""
    if not math.isfinite(high - low) or high <= low:
        high = low + (abs(low) or 1.0)
    raw = (high - low) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.floor(low / step + 1e-9) * step
    ticks = [first]
    while ticks[-1] < high - 1e-9 * step:
        ticks.append(first + len(ticks) * step)
    return ticks


def tick_text(value: float, step: float) -> str:
    """A tick value with as many decimals as its step needs, thousands separated."""
    decimals = max(0, -math.floor(math.log10(step) + 1e-9)) if step < 1 else (1 if step % 1 else 0)
    return f"{value:,.{decimals}f}"


def line_chart(title: str, series: list[Series], x_label: str, y_label: str, *, x_ticks: list[float] | None = None,
               width: int = 460, height: int = 260) -> str:
    """One chart: a line and its points per series, axes from the data (values from zero), the legend below."""
    points = [p for s in series for p in s.points]
    xs = [x for x, _ in points] or [0.0]
    x_ticks = x_ticks or nice_ticks(min(xs), max(xs))
    x_low, x_high = min(x_ticks[0], min(xs)), max(x_ticks[-1], max(xs))
    if x_high == x_low:  # one size: centre it
        x_low, x_high = x_low - 1, x_high + 1
    y_ticks = nice_ticks(0.0, max((y for _, y in points), default=1.0) or 1.0)
    y_high = y_ticks[-1]
    plot_w, plot_h = width - LEFT - RIGHT, height - TOP - BOTTOM

    def px(x: float) -> float:
        return LEFT + (x - x_low) / (x_high - x_low) * plot_w

    def py(y: float) -> float:
        return TOP + plot_h - y / y_high * plot_h

    total_h = height + LEGEND_ROW * len(series) + 6
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="{width}" height="{total_h}" '
           f'viewBox="0 0 {width} {total_h}" role="img" aria-label="{escape(title)}">',
           f'<text class="title" x="{width / 2:.0f}" y="16" text-anchor="middle">{escape(title)}</text>']
    y_step = y_ticks[1] - y_ticks[0] if len(y_ticks) > 1 else 1.0
    for tick in y_ticks:
        y = py(tick)
        out.append(f'<line class="grid" x1="{LEFT}" x2="{LEFT + plot_w}" y1="{y:.1f}" y2="{y:.1f}"/>'
                   f'<text class="tick" x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">'
                   f'{tick_text(tick, y_step)}</text>')
    x_step = min((b - a for a, b in zip(x_ticks, x_ticks[1:], strict=False)), default=1.0)
    for tick in x_ticks:
        x = px(tick)
        out.append(f'<line class="axis" x1="{x:.1f}" x2="{x:.1f}" y1="{TOP + plot_h}" y2="{TOP + plot_h + 4}"/>'
                   f'<text class="tick" x="{x:.1f}" y="{TOP + plot_h + 16}" text-anchor="middle">'
                   f'{tick_text(tick, x_step)}</text>')
    out += [f'<line class="axis" x1="{LEFT}" x2="{LEFT + plot_w}" y1="{TOP + plot_h}" y2="{TOP + plot_h}"/>',
            f'<line class="axis" x1="{LEFT}" x2="{LEFT}" y1="{TOP}" y2="{TOP + plot_h}"/>',
            f'<text class="label" x="{LEFT + plot_w / 2:.0f}" y="{TOP + plot_h + 34}" text-anchor="middle">'
            f'{escape(x_label)}</text>',
            f'<text class="label" transform="translate(14 {TOP + plot_h / 2:.0f}) rotate(-90)" '
            f'text-anchor="middle">{escape(y_label)}</text>']
    for s in series:
        coords = [(px(x), py(y)) for x, y in s.points]
        if len(coords) > 1:
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y in coords)
            out.append(f'<polyline fill="none" stroke="{s.colour}" stroke-width="2" points="{path}"/>')
        for i, (x, y) in enumerate(coords):
            tip = f"<title>{escape(s.tips[i])}</title>" if s.tips else ""
            radius = 3 if len(coords) <= 40 else 1.5
            out.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{radius}" fill="{s.colour}">{tip}</circle>')
        if s.marked is not None:
            x, y = coords[s.marked]
            tip = f"<title>{escape(s.label)}: {escape(s.note)}</title>"
            out.append(f'<circle class="peak" cx="{x:.1f}" cy="{y:.1f}" r="6" fill="{s.colour}" stroke="#222" '
                       f'stroke-width="1.5">{tip}</circle>')
    for i, s in enumerate(series):
        y = height + 4 + LEGEND_ROW * i
        label = escape(s.label) + (f' <tspan class="note">{escape(s.note)}</tspan>' if s.note else "")
        ring = ' r="5" stroke="#222"' if s.marked is not None else ' r="3"'
        out.append(f'<line x1="{LEFT}" x2="{LEFT + 22}" y1="{y}" y2="{y}" stroke="{s.colour}" stroke-width="3"/>'
                   f'<circle cx="{LEFT + 11}" cy="{y}"{ring} fill="{s.colour}"/>'
                   f'<text class="legend" x="{LEFT + 30}" y="{y + 4}">{label}</text>')
    out.append("</svg>")
    return "\n".join(out)
