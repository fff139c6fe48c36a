"""Small statistics helpers (no numpy in the hot paths)."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable


def percentile(values: Iterable[float], p: float) -> float | None:
    """The ``p``-th percentile (0-100) by linear interpolation; None for no values."""
    data = sorted(values)
    if not data:
        return None
    if len(data) == 1:
        return data[0]
    rank = (len(data) - 1) * p / 100
    low = math.floor(rank)
    high = min(low + 1, len(data) - 1)
    return data[low] + (data[high] - data[low]) * (rank - low)


def summary(values: Iterable[float], *, scale: float = 1.0) -> dict[str, float | int | None]:
    """count, mean, p50, p95, p99 and max of ``values`` times ``scale`` (1000: seconds to ms)."""
    data = [v * scale for v in values if v is not None]
    if not data:
        return {"count": 0, "mean": None, "p50": None, "p95": None, "p99": None, "max": None}
    return {
        "count": len(data),
        "mean": sum(data) / len(data),
        "p50": percentile(data, 50),
        "p95": percentile(data, 95),
        "p99": percentile(data, 99),
        "max": max(data),
    }


def epoch(moment: dt.datetime | str | None) -> float | None:
    """Seconds since the epoch of an aware datetime or an ISO string (``...Z`` accepted)."""
    if moment is None:
        return None
    if isinstance(moment, str):
        moment = dt.datetime.fromisoformat(moment.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.timezone.utc)
    return moment.timestamp()


def fmt(value: float | None, digits: int = 1) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"
