"""A small, pure-Python HDR-style latency histogram.

Why not keep every sample and sort: a long open-loop run at a high rate records millions of
values, and the load generator must stay cheap per request. Why not fixed-width buckets:
latencies span five orders of magnitude (50 µs on loopback to seconds under a stall), and an
SLA check needs the same *relative* precision at every scale.

The layout is HdrHistogram's log-linear one (see verification-anchors.md A3): values are
integers (the load generator records microseconds); values below ``2 * SUB`` are exact, and
above that every power-of-two range is split into ``SUB`` equal buckets, so a bucket is never
wider than ``1 / SUB`` of the values in it. With ``SUB = 128`` the relative error is at most
0.78 %: two significant digits, like ``HdrHistogram(1, 3_600_000, 2)``.

Percentiles follow HdrHistogram too: the value at percentile p is the *highest value
equivalent* to the sample of rank ``ceil(p/100 * n)`` (numpy's ``inverted_cdf`` method),
clamped to the recorded maximum. So a reported percentile is never below the exact one and at
most 0.78 % above it: a budget check can under-report nothing.
"""

from __future__ import annotations

import math

SUB_BITS = 7  # 2 significant digits: 2**7 = 128 sub-buckets per power of two
SUB = 1 << SUB_BITS
RELATIVE_ERROR = 1.0 / SUB  # the bound the tests check against exact percentiles


def bucket_index(value: int) -> int:
    """Index of the bucket that holds ``value`` (an int >= 0)."""
    if value < 2 * SUB:
        return value  # exact: one bucket per integer
    shift = value.bit_length() - SUB_BITS - 1  # >= 1
    return SUB * (shift + 1) + (value >> shift) - SUB


def bucket_bounds(index: int) -> tuple[int, int]:
    """The lowest and highest value that fall in bucket ``index``."""
    if index < 2 * SUB:
        return index, index
    shift, offset = divmod(index - SUB, SUB)
    low = (SUB + offset) << shift
    return low, low + (1 << shift) - 1


class Histogram:
    """Counts of non-negative integer values; exact count, sum, min and max."""

    __slots__ = ("counts", "total", "sum", "min", "max")

    def __init__(self) -> None:
        self.counts: list[int] = []
        self.total = 0
        self.sum = 0
        self.min = 0
        self.max = 0

    def record(self, value: int) -> None:
        value = max(int(value), 0)
        index = value if value < 2 * SUB else bucket_index(value)
        counts = self.counts
        if index >= len(counts):
            counts.extend([0] * (index + 1 - len(counts)))
        counts[index] += 1
        if not self.total or value < self.min:
            self.min = value
        if value > self.max:
            self.max = value
        self.total += 1
        self.sum += value

    def merge(self, other: Histogram) -> None:
        if not other.total:
            return
        if len(other.counts) > len(self.counts):
            self.counts.extend([0] * (len(other.counts) - len(self.counts)))
        for i, count in enumerate(other.counts):
            self.counts[i] += count
        self.min = other.min if not self.total else min(self.min, other.min)
        self.max = max(self.max, other.max)
        self.total += other.total
        self.sum += other.sum

    @property
    def mean(self) -> float:
        return self.sum / self.total if self.total else 0.0

    def percentile(self, p: float) -> int:
        """Value at percentile ``p`` (0-100); 0 when nothing was recorded."""
        if not self.total:
            return 0
        rank = max(1, math.ceil(min(max(p, 0.0), 100.0) / 100.0 * self.total))
        seen = 0
        for index, count in enumerate(self.counts):
            seen += count
            if seen >= rank:
                return min(bucket_bounds(index)[1], self.max)
        return self.max  # not reached: the counts add up to total

    def coarse(self, bins: int = 12, scale: float = 1e-3) -> list[list[float]]:
        """A compact view for a text histogram: ``[[upper, count], ...]`` with up to ``bins``
        rows, log-spaced between min and max (latency spreads are multiplicative), bounds
        rounded to 3 significant digits and multiplied by ``scale`` (µs -> ms by default).
        Each fine bucket is counted in the row that holds its highest value, so row counts
        add up to the total."""
        if not self.total:
            return []
        low, high = max(self.min, 1), max(self.max, 1)
        if high <= low * 1.01:
            return [[_round3(high * scale), self.total]]
        ratio = (high / low) ** (1.0 / bins)
        uppers = [_round3(low * ratio ** (i + 1) * scale) for i in range(bins)]
        uppers[-1] = max(uppers[-1], _round3(high * scale, up=True))  # the last row holds the max
        uppers = sorted(set(uppers))
        rows = [[upper, 0] for upper in uppers]
        row = 0
        for index, count in enumerate(self.counts):
            if not count:
                continue
            value = min(bucket_bounds(index)[1], self.max) * scale
            while row < len(rows) - 1 and value > rows[row][0]:
                row += 1
            rows[row][1] += count
        return rows


def _round3(value: float, up: bool = False) -> float:
    """Round to 3 significant digits (0.0532, 1.27, 312.0); ``up``: never below ``value``."""
    if value <= 0:
        return 0.0
    digits = 2 - int(math.floor(math.log10(value)))
    if up:
        return math.ceil(value * 10**digits) / 10**digits
    return round(value, digits)


def fold_counts(counts: list[int], hist: Histogram) -> None:
    """Add per-microsecond ``counts`` (index = value) to ``hist`` as ``record`` would, one by one."""
    for value in [value for value, count in enumerate(counts) if count]:
        index, count = bucket_index(value), counts[value]
        hist.counts.extend([0] * (index + 1 - len(hist.counts)))  # nothing when long enough
        hist.counts[index] += count
        hist.min = value if not hist.total else min(hist.min, value)
        hist.max, hist.total, hist.sum = max(hist.max, value), hist.total + count, hist.sum + value * count
