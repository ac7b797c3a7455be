"""Charts as inline SVG, drawn on the server.

Why not a JavaScript chart library: the Content-Security-Policy forbids inline
scripts, the pages must work without JavaScript, and the chart shapes
(stacked bars over time, rates per parameter bin with confidence whiskers,
window entries per guest-second per bin) are a few dozen lines of SVG.
Colours come from CSS classes (``s-<series>``), so the SVG carries no style
attributes for the CSP to refuse. Every label is escaped: parameter values and
verdict names end up here.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

from markupsafe import Markup, escape

WIDTH = 720
HEIGHT = 220
_LEFT, _RIGHT, _TOP, _BOTTOM = 52, 8, 10, 34
_SERIES_NAME = re.compile(r"^[a-z][a-z0-9-]{0,40}$")


def series_class(name: str) -> str:
    """The CSS class colouring a series; unknown or odd names share one colour."""
    return f"s-{name}" if _SERIES_NAME.match(name) else "s-other"


def _nice_max(value: float) -> float:
    """The smallest 1/2/5 x 10^k at or above ``value`` (axis top)."""
    if value <= 0:
        return 1.0
    exp = math.floor(math.log10(value))
    for step in (1, 2, 5, 10):
        top = step * 10**exp
        if top >= value:
            return float(top)
    return float(10 ** (exp + 1))


def _fmt(value: float, percent: bool) -> str:
    if percent:
        return f"{value * 100:.3g}%"
    if value >= 10_000:
        return f"{value / 1000:.0f}k"
    return f"{value:.4g}"


def _frame(title: str, top: float, percent: bool, width: int, height: int) -> list[str]:
    """The SVG's opening, its title, gridlines and y-axis labels."""
    plot_h = height - _TOP - _BOTTOM
    out = [
        f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg">',
        f"<title>{escape(title)}</title>",
    ]
    for frac in (0.0, 0.5, 1.0):
        y = _TOP + plot_h * (1 - frac)
        out.append(
            f'<line class="grid" x1="{_LEFT}" x2="{width - _RIGHT}" y1="{y:.1f}" y2="{y:.1f}"/>'
        )
        out.append(
            f'<text class="tick" x="{_LEFT - 4}" y="{y + 4:.1f}" text-anchor="end">'
            f"{escape(_fmt(top * frac, percent))}</text>"
        )
    return out


def _x_labels(labels: Sequence[str], step: float, height: int, most: int = 8) -> list[str]:
    widest = max((len(label) for label in labels), default=1) * 6.2  # px at the 10px font
    every = max(1, math.ceil(len(labels) / most), math.ceil(widest / step))
    y = height - _BOTTOM + 14
    return [
        f'<text class="tick" x="{_LEFT + step * (i + 0.5):.1f}" y="{y}" text-anchor="middle">'
        f"{escape(label)}</text>"
        for i, label in enumerate(labels)
        if i % every == 0
    ]


def stacked_bars(
    labels: Sequence[str],
    series: Sequence[tuple[str, Sequence[int]]],
    *,
    title: str,
    height: int = HEIGHT,
) -> Markup:
    """Bars per label, stacked by series (e.g. trials per hour by verdict)."""
    if not labels:
        return Markup('<p class="empty">no data yet</p>')
    totals = [sum(values[i] for _, values in series) for i in range(len(labels))]
    top = _nice_max(max(totals))
    plot_h = height - _TOP - _BOTTOM
    step = (WIDTH - _LEFT - _RIGHT) / len(labels)
    bar_w = max(1.0, step * 0.85)
    out = _frame(title, top, False, WIDTH, height)
    for i, label in enumerate(labels):
        x = _LEFT + step * i + (step - bar_w) / 2
        base = 0
        parts = [f"{name} {values[i]}" for name, values in series if values[i]]
        tip = escape(f"{label}: {totals[i]} ({', '.join(parts)})" if parts else f"{label}: 0")
        for name, values in series:
            value = values[i]
            if not value:
                continue
            y0 = _TOP + plot_h * (1 - base / top)
            y1 = _TOP + plot_h * (1 - (base + value) / top)
            out.append(
                f'<rect class="bar {series_class(name)}" x="{x:.1f}" y="{y1:.1f}" '
                f'width="{bar_w:.1f}" height="{max(y0 - y1, 0.5):.1f}"><title>{tip}</title></rect>'
            )
            base += value
    out += _x_labels(labels, step, height)
    out.append("</svg>")
    return Markup("".join(out))


def wilson(hits: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a rate: honest for rare events and small bins."""
    if n <= 0:
        return 0.0, 1.0
    p = hits / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def _bar(cls: str, x: float, y: float, bar_w: float, plot_h: float, tip: str, count: str) -> str:
    """One bar with its tooltip and its count at the foot (escaped text in, SVG out)."""
    inside = _TOP + plot_h - y >= 14  # white in a tall bar, grey above a short one
    return (
        f'<rect class="bar {cls}" x="{x:.1f}" y="{y:.1f}" width="{bar_w:.1f}" '
        f'height="{max(_TOP + plot_h - y, 0.5):.1f}"><title>{tip}</title></rect>'
        f'<text class="n{"" if inside else " out"}" x="{x + bar_w / 2:.1f}" '
        f'y="{_TOP + plot_h - 3:.1f}" text-anchor="middle">{count}</text>'
    )


def rate_bars(
    bins: Sequence[tuple[str, int, int]], *, title: str, width: int = 400, height: int = 170
) -> Markup:
    """Anomaly rate per parameter bin (label, hits, trials), with 95% Wilson whiskers."""
    if not bins:
        return Markup('<p class="empty">no data yet</p>')
    intervals = [wilson(hits, n) for _, hits, n in bins]
    rates = [hits / n if n else 0.0 for _, hits, n in bins]
    # the axis follows the rates, not the whiskers: one tiny bin must not flatten the rest
    top = _nice_max(max(max(rates), min(1.0, max(hi for _, hi in intervals) * 0.5), 1e-4))
    plot_h = height - _TOP - _BOTTOM
    step = (width - _LEFT - _RIGHT) / len(bins)
    bar_w = max(1.0, step * 0.7)
    out = _frame(title, top, True, width, height)
    for i, ((label, hits, n), rate, (lo, hi)) in enumerate(
        zip(bins, rates, intervals, strict=True)
    ):
        x = _LEFT + step * i + (step - bar_w) / 2
        cx = x + bar_w / 2
        y_rate = _TOP + plot_h * (1 - min(rate, top) / top)
        tip = escape(
            f"{label}: {hits}/{n} anomalous = {rate * 100:.3g}% "
            f"(95% CI {lo * 100:.3g}-{hi * 100:.3g}%)"
        )
        out.append(_bar("s-anomaly", x, y_rate, bar_w, plot_h, tip, str(n)))
        y_lo = _TOP + plot_h * (1 - min(lo, top) / top)
        y_hi = _TOP + plot_h * (1 - min(hi, top) / top)
        out.append(
            f'<line class="whisker" x1="{cx:.1f}" x2="{cx:.1f}" y1="{y_lo:.1f}" y2="{y_hi:.1f}"/>'
        )
    out += _x_labels([label for label, _, _ in bins], step, height, most=16)
    out.append("</svg>")
    return Markup("".join(out))


def window_bars(
    bins: Sequence[tuple[str, int, float]], *, title: str, width: int = 400, height: int = 170
) -> Markup:
    """Window entries per guest-second per parameter bin (label, entries, guest-seconds).

    The search's objective (docs/search.md), so a knob's chart shows where it
    looks; the number in each bar is its window entries.
    """
    if not bins:
        return Markup('<p class="empty">no data yet</p>')
    rates = [entries / seconds if seconds > 0 else 0.0 for _, entries, seconds in bins]
    top = _nice_max(max(rates))
    plot_h = height - _TOP - _BOTTOM
    step = (width - _LEFT - _RIGHT) / len(bins)
    bar_w = max(1.0, step * 0.7)
    out = _frame(title, top, False, width, height)
    for i, ((label, entries, seconds), rate) in enumerate(zip(bins, rates, strict=True)):
        x = _LEFT + step * i + (step - bar_w) / 2
        y_rate = _TOP + plot_h * (1 - rate / top)
        tip = escape(f"{label}: {entries} window entries in {seconds:.4g} guest-s = {rate:.4g}/s")
        out.append(_bar("s-window", x, y_rate, bar_w, plot_h, tip, escape(_fmt(entries, False))))
    out += _x_labels([label for label, _, _ in bins], step, height, most=16)
    out.append("</svg>")
    return Markup("".join(out))
