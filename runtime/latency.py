"""Per-frame latency in constant memory: a histogram with 1 % wide bins, for p50/p99 over runs of any length.

Why not a list of samples: a box runs 16 cameras for days (40 million frames a day at 30 fps); a list
would grow by hundreds of MB a day, exactly the leak a soak is there to catch. Bins 1 % wide make
every percentile correct to within 1 %, which is far below run-to-run noise.
"""

from __future__ import annotations

import math

import numpy as np

#: the smallest latency told apart (10 µs); anything below counts in the first bin
FLOOR_S = 1e-5
#: bin growth: bin k holds [FLOOR_S * GROWTH**k, FLOOR_S * GROWTH**(k+1))
GROWTH = 1.01
#: bins up to ~1000 s (FLOOR_S * GROWTH**BINS); anything above counts in the last bin
BINS = int(math.log(1e8) / math.log(GROWTH)) + 1


class LatencyHistogram:
    """Latencies (seconds) added one by one; percentiles and the maximum read at any time."""

    def __init__(self) -> None:
        self.counts = np.zeros(BINS, np.int64)
        self.count = 0
        self.max_s = 0.0

    def add(self, seconds: float) -> None:
        k = int(math.log(max(seconds, FLOOR_S) / FLOOR_S) / math.log(GROWTH))
        self.counts[min(k, BINS - 1)] += 1
        self.count += 1
        self.max_s = max(self.max_s, seconds)

    @classmethod
    def merged(cls, histograms) -> LatencyHistogram:
        """One histogram of every sample of ``histograms`` (e.g. streams and repeats pooled)."""
        out = cls()
        for h in histograms:
            out.counts += h.counts
            out.count += h.count
            out.max_s = max(out.max_s, h.max_s)
        return out

    def percentile(self, q: float) -> float | None:
        """The ``q``-th percentile (0–100) in seconds: the geometric centre of its bin (``None`` when empty)."""
        if not self.count:
            return None
        rank = max(1, math.ceil(q / 100.0 * self.count))
        k = int(np.searchsorted(np.cumsum(self.counts), rank))
        return min(FLOOR_S * GROWTH ** (k + 0.5), self.max_s)

    def summary_ms(self) -> dict[str, float | None]:
        """p50 / p99 / max in milliseconds (``None`` without samples)."""
        if not self.count:
            return {"p50": None, "p99": None, "max": None}
        p50, p99 = self.percentile(50), self.percentile(99)
        assert p50 is not None and p99 is not None
        return {"p50": 1000.0 * p50, "p99": 1000.0 * p99, "max": 1000.0 * self.max_s}
