"""The `/usage` chart: images per day as a bar chart PNG, drawn with Pillow.

Pillow only (no plotting library): a chart of at most 90 bars needs nothing more. Every day
of the period gets a bar, including days without images, so gaps are visible.
"""

from __future__ import annotations

import io
from datetime import timedelta

from PIL import Image, ImageDraw, ImageFont

from ..ledger import UsageSummary

__all__ = ["usage_chart"]

WIDTH, HEIGHT = 800, 360
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 56, 16, 40, 44
BACKGROUND = (47, 49, 54)
GRID = (79, 84, 92)
TEXT = (220, 221, 222)
BAR = (88, 101, 242)


def _nice_max(value: int) -> int:
    """The top of the y axis: `value` rounded up to 1, 2 or 5 times a power of ten."""
    if value <= 5:
        return 5
    magnitude = 10 ** (len(str(value)) - 1)
    for step in (1, 2, 5, 10):
        if value <= step * magnitude:
            return step * magnitude
    return value


def usage_chart(summary: UsageSummary, days: int) -> bytes:
    """A PNG bar chart of images per UTC day from `summary.since` for `days` days."""
    first = summary.since.date()
    dates = [first + timedelta(days=i) for i in range(days)]
    per_day = {d.day: d.images for d in summary.days}
    values = [per_day.get(d, 0) for d in dates]
    top = _nice_max(max(values, default=0))

    image = Image.new("RGB", (WIDTH, HEIGHT), BACKGROUND)
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    draw.text(
        (MARGIN_LEFT, 12),
        f"Images per day (UTC), last {days} day(s): {sum(values)} in total",
        fill=TEXT,
        font=font,
    )
    plot_w = WIDTH - MARGIN_LEFT - MARGIN_RIGHT
    plot_h = HEIGHT - MARGIN_TOP - MARGIN_BOTTOM
    base_y = MARGIN_TOP + plot_h
    for i in range(5):  # horizontal grid with labels
        value = top * i // 4
        y = base_y - plot_h * i / 4
        draw.line([(MARGIN_LEFT, y), (WIDTH - MARGIN_RIGHT, y)], fill=GRID)
        draw.text((8, y - 6), str(value), fill=TEXT, font=font)
    slot = plot_w / days
    bar_w = max(1.0, slot * 0.7)
    label_every = max(1, round(days / 10))
    for i, (day, value) in enumerate(zip(dates, values, strict=True)):
        x0 = MARGIN_LEFT + i * slot + (slot - bar_w) / 2
        if value:
            y0 = base_y - plot_h * value / top
            draw.rectangle([(x0, y0), (x0 + bar_w, base_y)], fill=BAR)
        if i % label_every == 0 or i == days - 1:
            draw.text((x0, base_y + 8), day.strftime("%m-%d"), fill=TEXT, font=font)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()
