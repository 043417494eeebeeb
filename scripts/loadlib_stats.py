"""Latency histograms (integer milliseconds -> count) and their quantiles.
"""

from __future__ import annotations

# ---- statistics -----------------------------------------------------------------------------


def percentile(hist: dict[int, int], q: float) -> float | None:
    """The q-quantile (0..1) of a histogram of integer milliseconds."""
    total = sum(hist.values())
    if not total:
        return None
    rank = q * (total - 1)
    seen = 0
    for value in sorted(hist):
        seen += hist[value]
        if seen > rank:
            return float(value)
    return float(max(hist))


def merge_hist(into: dict[int, int], other: dict[int, int]) -> None:
    for k, v in other.items():
        into[k] = into.get(k, 0) + v



def summarize_hist(hist: dict[int, int]) -> dict[str, float | None]:
    return {
        "n": float(sum(hist.values())),
        "p50": percentile(hist, 0.50),
        "p95": percentile(hist, 0.95),
        "p99": percentile(hist, 0.99),
        "max": float(max(hist)) if hist else None,
    }


def bucket_quantile(before: list[tuple[float, float]], after: list[tuple[float, float]],
                    q: float) -> float | None:
    """The q-quantile of what a cumulative histogram counted between two scrapes, as the
    upper bound of its bucket (coarse, and honest about it)."""
    seen = dict(before)
    deltas = [(le, count - seen.get(le, 0.0)) for le, count in after]
    if not deltas or deltas[-1][1] <= 0:
        return None
    total = deltas[-1][1]
    for le, count in deltas:
        if count >= q * total:
            return le
    return None
