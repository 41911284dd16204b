"""Percentiles and spreads every benchmark reports, in one place.

Two percentile rules on purpose: `percentile` (nearest rank) for the engine replays, whose
samples are small and whose figures are compared run to run, and `linear_percentile` for the
bot under load (thousands of samples, where the rule makes no visible difference).
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["linear_percentile", "percentile", "spread"]


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (no interpolation: small samples stay honest)."""
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered), math.ceil(q / 100 * len(ordered))) - 1)]


def linear_percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile (0-100), linear between closest ranks; None without values."""
    if not values:
        return None
    data = sorted(values)
    k = (len(data) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (k - lo)


def spread(values: list[float]) -> dict[str, Any]:
    """Count, p50, p95, p99 and max (`linear_percentile`); None figures without values."""
    return {
        "n": len(values),
        "p50": linear_percentile(values, 50),
        "p95": linear_percentile(values, 95),
        "p99": linear_percentile(values, 99),
        "max": max(values) if values else None,
    }
