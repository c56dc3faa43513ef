"""The charts, drawn on the server as SVG: nothing to download, readable on a phone (they scale to the width),
and as fast as the query behind them.
"""

from __future__ import annotations

from collections import defaultdict
from html import escape

# Colour-blind-safe (Okabe-Ito), then grey for the rest.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")
OTHER = "#999999"
MAX_SERIES = len(PALETTE)


def per_day_svg(rows: list[tuple[str, str, int]], days: list[str]) -> tuple[str, list[tuple[str, str]]]:
    """Visits per species per day as stacked bars, oldest day on the left: (svg, legend of (species, colour)).
    `rows` are (day, species, visits); the species with most visits get a colour each, the rest are "other"."""
    totals: dict[str, int] = defaultdict(int)
    for _, species, n in rows:
        totals[species] += n
    top = sorted(totals, key=lambda s: (-totals[s], s))[:MAX_SERIES]
    colour = {s: PALETTE[i] for i, s in enumerate(top)}
    stacks: dict[str, dict[str, int]] = {day: defaultdict(int) for day in days}
    for day, species, n in rows:
        if day in stacks:
            stacks[day][species if species in colour else "other"] += n
    width, height, left, bottom = 600, 240, 28, 22
    peak = max((sum(s.values()) for s in stacks.values()), default=0) or 1
    step = (width - left) / max(1, len(days))
    bars = []
    for i, day in enumerate(days):
        y = float(height - bottom)
        for species in [*top, "other"]:
            n = stacks[day].get(species, 0)
            if not n:
                continue
            h = n / peak * (height - bottom - 10)
            y -= h
            fill = colour.get(species, OTHER)
            bars.append(
                f'<rect x="{left + i * step + 1:.1f}" y="{y:.1f}" width="{max(1.0, step - 2):.1f}" height="{h:.1f}"'
                f' fill="{fill}"><title>{escape(day)}: {escape(species)} {n}</title></rect>'
            )
    labels = [
        f'<text x="{left + i * step + step / 2:.1f}" y="{height - 6}" text-anchor="middle">{day[8:]}</text>'
        for i, day in enumerate(days)
        if i % max(1, len(days) // 10) == 0
    ]
    axis = _axis(peak, left, height - bottom, height - bottom - 10)
    svg = _svg(width, height, "Visits per species per day", [*axis, *bars, *labels])
    legend = [(s, colour[s]) for s in top] + ([("other", OTHER)] if len(totals) > len(top) else [])
    return svg, legend


def by_hour_svg(hours: list[int]) -> str:
    """Visits by hour of the day, 0 to 23."""
    width, height, left, bottom = 600, 200, 28, 22
    peak = max(hours, default=0) or 1
    step = (width - left) / 24
    bars = []
    for hour, n in enumerate(hours):
        h = n / peak * (height - bottom - 10)
        bars.append(
            f'<rect x="{left + hour * step + 1:.1f}" y="{height - bottom - h:.1f}" width="{step - 2:.1f}"'
            f' height="{h:.1f}" fill="{PALETTE[0]}"><title>{hour:02d}:00: {n}</title></rect>'
        )
    labels = [
        f'<text x="{left + h * step + step / 2:.1f}" y="{height - 6}" text-anchor="middle">{h:02d}</text>'
        for h in range(0, 24, 3)
    ]
    axis = _axis(peak, left, height - bottom, height - bottom - 10)
    return _svg(width, height, "Visits by hour of the day", [*axis, *bars, *labels])


def _axis(peak: int, left: int, base: float, span: float) -> list[str]:
    return [
        f'<line x1="{left}" y1="{base}" x2="100%" y2="{base}" stroke="#888"/>',
        f'<text x="{left - 4}" y="{base - span + 4:.1f}" text-anchor="end">{peak}</text>',
        f'<text x="{left - 4}" y="{base:.1f}" text-anchor="end">0</text>',
    ]


def _svg(width: int, height: int, title: str, parts: list[str]) -> str:
    body = "".join(parts)
    return (
        f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}"'
        f' xmlns="http://www.w3.org/2000/svg" font-size="11"><title>{escape(title)}</title>{body}</svg>'
    )
