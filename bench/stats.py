"""Summaries of repeated measurements and the Markdown they are printed as."""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Sequence
from typing import Any

import numpy as np


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


_NOT_WORD = re.compile(r"[^\w']+")


def words(text: str) -> list[str]:
    """Lowercase words without punctuation (apostrophes inside a word kept): what the word error rate compares."""
    return [w.strip("'") for w in _NOT_WORD.sub(" ", text.lower()).split() if w.strip("'")]


def word_errors(ref: list[str], hyp: list[str]) -> int:
    """Substitutions + deletions + insertions that turn ``ref`` into ``hyp`` (Levenshtein over words,
    one numpy row per reference word: the insertion chain is a running minimum)."""
    if not ref or not hyp:
        return max(len(ref), len(hyp))
    ids: dict[str, int] = {}
    h = np.array([ids.setdefault(w, len(ids)) for w in hyp])
    cols = np.arange(len(hyp) + 1)
    prev = cols.copy()
    for i, word in enumerate(ref, start=1):
        cost = (h != ids.get(word, -1)).astype(np.int64)
        best = np.empty_like(prev)
        best[0] = i
        best[1:] = np.minimum(prev[1:] + 1, prev[:-1] + cost)  # deletion, substitution/match
        prev = np.minimum.accumulate(best - cols) + cols  # insertion: best[j] = min_k best[k] + (j - k)
    return int(prev[-1])


def wer(reference: str, hypothesis: str) -> dict[str, Any]:
    """Word error rate of ``hypothesis`` against ``reference`` on normalised words (jiwer when installed)."""
    ref, hyp = words(reference), words(hypothesis)
    try:
        import jiwer

        rate = float(jiwer.wer(" ".join(ref), " ".join(hyp))) if ref else math.nan
        tool = f"jiwer {getattr(jiwer, '__version__', '')}".strip()
    except ImportError:
        rate = word_errors(ref, hyp) / len(ref) if ref else math.nan
        tool = "edit distance (bench.stats)"
    return {"wer": rate, "ref_words": len(ref), "hyp_words": len(hyp), "tool": tool}
