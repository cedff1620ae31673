"""Row bands: one frame's element-wise work split across cores.

Why: with one frame in flight (a live camera) nothing overlaps the host pre- and
postprocessing, so their latency adds to every frame's. numpy's arithmetic and OpenCV's table
lookups release the GIL, so disjoint bands of rows run on all cores; each band writes only its
own rows of the caller's output, so the result is the same array, bit for bit, as one call.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

#: Frames with fewer output rows than this per band are not split (thread hand-off would cost more).
MIN_ROWS_PER_BAND = 64


@functools.lru_cache(maxsize=1)
def _band_pool() -> tuple[ThreadPoolExecutor | None, int]:
    """Threads for row bands and how many (no pool on a one-core machine)."""
    workers = min(4, os.cpu_count() or 1)
    pool = ThreadPoolExecutor(workers, thread_name_prefix="deeplab-trt-bands") if workers > 1 else None
    return pool, workers


def in_row_bands(rows: int, work: Callable[[int, int], None]) -> None:
    """Call ``work(r0, r1)`` on disjoint bands covering ``range(rows)``, in parallel where it pays.

    Each band writes only its own rows of the caller's output, so the result is the same
    array, bit for bit, as one call over all rows.
    """
    pool, workers = _band_pool()
    bands = max(1, min(workers, rows // MIN_ROWS_PER_BAND))
    if pool is None or bands == 1:
        work(0, rows)
        return
    edges = [rows * k // bands for k in range(bands + 1)]
    futures = [pool.submit(work, edges[k], edges[k + 1]) for k in range(1, bands)]
    work(edges[0], edges[1])
    for future in futures:
        future.result()
