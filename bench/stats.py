"""Summaries of repeated measurements and the Markdown they are printed as."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any


def summary(samples: Sequence[float]) -> dict[str, Any]:
    """Median, min, max, p95 and the samples themselves (JSON-friendly)."""
    xs = sorted(float(x) for x in samples)
    if not xs:
        return {"n": 0, "median": math.nan, "min": math.nan, "max": math.nan, "p95": math.nan, "samples": []}
    return {"n": len(xs), "median": statistics.median(xs), "min": xs[0], "max": xs[-1],
            "p95": percentile(xs, 95), "samples": [round(x, 6) for x in samples]}


def percentile(samples: Sequence[float], q: float) -> float:
    """The q-th percentile by linear interpolation (numpy's default), NaN when empty."""
    xs = sorted(samples)
    if not xs:
        return math.nan
    pos = (len(xs) - 1) * q / 100
    low = math.floor(pos)
    high = min(low + 1, len(xs) - 1)
    return xs[low] + (xs[high] - xs[low]) * (pos - low)


def num(value: float | None, digits: int = 1) -> str:
    """A number for a table cell; NaN/None print as an em dash."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:,.{digits}f}"


def ms(stat: dict[str, Any] | None, digits: int = 1, scale: float = 1000.0) -> str:
    """'median [min–max]' of a summary in seconds, printed in milliseconds (or ``scale``)."""
    if not stat or not stat.get("n"):
        return "—"
    return (f"{num(stat['median'] * scale, digits)} "
            f"[{num(stat['min'] * scale, digits)}–{num(stat['max'] * scale, digits)}]")


def ratio(a: float | None, b: float | None, digits: int = 2) -> str:
    """a/b as '1.23x', or an em dash."""
    if a is None or b is None or not b or math.isnan(a) or math.isnan(b):
        return "—"
    return f"{a / b:.{digits}f}x"


def safe_div(a: float | None, b: float | None) -> float:
    """a/b, NaN when either is missing or b is zero."""
    if a is None or b is None or not b:
        return math.nan
    return a / b


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub Markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def verdict(ok: bool | None) -> str:
    """Met / MISSED / not measured."""
    if ok is None:
        return "not measured"
    return "met" if ok else "**MISSED**"
