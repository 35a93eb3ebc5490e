"""The spend chart, drawn on the server: inline SVG whose bars are rectangles with a category's
class (colours in static/dashboard/dashboard.css). The CSP allows no inline script and no style
attribute; SVG geometry attributes are neither, so the chart needs no script at all."""

from __future__ import annotations

from dataclasses import dataclass

from credits.models import USAGE_CATEGORIES, Category
from credits.money import credits_text
from credits.selectors import SpendHistory

WIDTH = 640
HEIGHT = 180
AXIS = 18  # room under the bars for the day labels
SLOT_GAP = 0.25  # of each day's slot, left empty between bars


@dataclass(frozen=True, slots=True)
class Bar:
    category: str
    x: float
    y: float
    width: float
    height: float
    title: str


@dataclass(frozen=True, slots=True)
class DayLabel:
    x: float
    text: str
    anchor: str  # "start", "middle" or "end": the first and last labels stay inside the chart


@dataclass(frozen=True, slots=True)
class SpendChart:
    width: int
    height: int
    baseline: float
    bars: list[Bar]
    labels: list[DayLabel]
    peak: str  # the tallest day, in credits (the top of the scale)
    legend: list[tuple[str, str]]  # (category, label), only categories with spend


def spend_chart(history: SpendHistory, *, width: int = WIDTH, height: int = HEIGHT) -> SpendChart:
    """Stacked bars, one per day (oldest left), one segment per usage category, scaled to the
    day with the most spend; every segment carries its figures as a tooltip (<title>)."""
    days = history.days
    slot = width / max(len(days), 1)
    bar_width = round(slot * (1 - SLOT_GAP), 2)
    baseline = float(height - AXIS)
    peak = max((day.total for day in days), default=0)
    scale = (baseline - 4) / peak if peak else 0.0
    bars: list[Bar] = []
    labels: list[DayLabel] = []
    for index, day in enumerate(days):
        x = round(index * slot + (slot - bar_width) / 2, 2)
        top = baseline
        for category in USAGE_CATEGORIES:
            spent = day.by_category[str(category)]
            if spent <= 0:
                continue
            size = max(round(spent * scale, 2), 1.0)  # a tiny spend still shows
            top -= size
            bars.append(
                Bar(
                    category=str(category),
                    x=x,
                    y=round(top, 2),
                    width=bar_width,
                    height=size,
                    title=f"{day.day:%-d %b}: {category.label} {credits_text(spent)} credits",
                )
            )
        if index == 0:
            labels.append(DayLabel(x=round(x, 2), text=f"{day.day:%-d %b}", anchor="start"))
        elif index == len(days) - 1:
            labels.append(DayLabel(x=round(x + bar_width, 2), text=f"{day.day:%-d %b}", anchor="end"))
        elif index % 7 == 0 and index < len(days) - 4:
            labels.append(DayLabel(x=round(index * slot + slot / 2, 2), text=f"{day.day:%-d %b}", anchor="middle"))
    spent_categories = history.by_category
    return SpendChart(
        width=width,
        height=height,
        baseline=baseline,
        bars=bars,
        labels=labels,
        peak=credits_text(peak),
        legend=[(str(c), Category(c).label) for c in USAGE_CATEGORIES if spent_categories[str(c)] > 0],
    )
