"""Streamed fixed-size histograms of |x|, one per calibrated tensor.

Why streamed: holding every activation of every calibration frame (what ONNX Runtime's
``HistogramCalibrater`` does before it bins anything) costs memory proportional to the number
of frames; a fixed histogram per tensor costs ``num_bins`` counters whatever the frame count.

Why |x|: scales are symmetric (TensorRT INT8: ``q = round(x / s)``, zero point 0), so only
the magnitude distribution matters — the same choice as TensorRT's calibrator and
pytorch-quantization's ``HistogramCalibrator``.

Range growth (the choice, documented): the range is ``[0, num_bins / bins_per_unit)``. The
first batch with a non-zero value sets it just above that batch's max |x|. When a later batch
exceeds it, the range grows by the smallest power of two that covers the new max and the
counts are re-binned *exactly* by summing groups of ``2**k`` adjacent bins. Exact because a
bin index is ``floor(|x| * bins_per_unit)`` and ``bins_per_unit`` only ever halves (a power of
two, so the float32 product is scaled exactly): ``floor(floor(y) / 2**k) == floor(y / 2**k)``.
The result equals a one-shot histogram of all data over the final range (tested).

The price: after growth the data may occupy between half and all of the bins (resolution
``amax / num_bins`` .. ``2 * amax / num_bins``); at 2048 bins that is still ≥ 8 histogram bins
per int8 level. ONNX Runtime and pytorch-quantization instead *append* bins of the first
batch's width (memory no longer fixed: a small first batch can make it grow without bound);
two passes (max first, then bins) would double the inference time.

Exact zeros are counted separately as well (they are in bin 0 too): ReLU outputs are ~half
zeros, and the entropy method leaves them out (see :mod:`deeplab_trt.calibration.scales`).
"""

from __future__ import annotations

import numpy as np

DEFAULT_BINS = 2048
#: Elements binned per step: bounds the temporaries (|x|, indices) for very large tensors.
CHUNK = 1 << 22


class AbsHistogram:
    """Histogram of |x| with a fixed number of bins over a range that grows by powers of two."""

    def __init__(self, num_bins: int = DEFAULT_BINS) -> None:
        if num_bins < 2:
            raise ValueError(f"num_bins must be >= 2, got {num_bins}")
        self.num_bins = int(num_bins)
        self.counts = np.zeros(self.num_bins, dtype=np.int64)
        self.bins_per_unit = np.float32(0.0)  # 0 until a non-zero value has been seen
        self.count = 0  # finite values seen
        self.zeros = 0  # exact zeros seen
        self.nonfinite = 0  # NaN/inf values skipped
        self.amax = 0.0  # exact max |x|
        self.min = float("inf")  # signed min / max, for the report
        self.max = float("-inf")

    # ----- geometry ---------------------------------------------------------------------------
    @property
    def range(self) -> float:
        """Upper end of the binned range (0 before any non-zero data)."""
        return float(self.num_bins / np.float64(self.bins_per_unit)) if self.bins_per_unit else 0.0

    @property
    def width(self) -> float:
        return float(1.0 / np.float64(self.bins_per_unit)) if self.bins_per_unit else 0.0

    @property
    def edges(self) -> np.ndarray:
        return np.arange(self.num_bins + 1, dtype=np.float64) * self.width

    def _covers(self, amax: float, bins_per_unit) -> bool:
        # Margin 2**-20 > float32 rounding (2**-24): every float32 |x| * bpu <= amax * bpu rounds
        # to < num_bins, so no value is ever clipped into the last bin.
        return np.float64(amax) * np.float64(bins_per_unit) < self.num_bins * (1.0 - 2.0**-20)

    def _grow_to(self, amax: float) -> None:
        """Make the range cover ``amax``: first setting, or power-of-two growth with exact re-binning."""
        if not self.bins_per_unit:
            bpu = np.float32(self.num_bins * (1.0 - 2.0**-19) / amax)
            while not self._covers(amax, bpu):
                bpu = np.nextafter(bpu, np.float32(0))
            self.bins_per_unit = bpu
            return
        k = 0
        bpu = self.bins_per_unit
        while not self._covers(amax, bpu):
            bpu = np.float32(bpu / 2)
            k += 1
        if k:
            groups = np.arange(self.num_bins) >> k  # bin i -> bin i // 2**k
            self.counts = np.bincount(groups, weights=self.counts, minlength=self.num_bins).astype(np.int64)
            self.bins_per_unit = bpu

    # ----- streaming ----------------------------------------------------------------------------
    def update(self, x: np.ndarray) -> None:
        """Add the values of ``x`` (any shape, any float dtype)."""
        flat = np.asarray(x).reshape(-1)
        for start in range(0, flat.size, CHUNK):
            self._update_chunk(flat[start : start + CHUNK])

    def _update_chunk(self, x: np.ndarray) -> None:
        if x.dtype != np.float32:
            x = x.astype(np.float32)
        lo, hi = float(np.min(x)) if x.size else 0.0, float(np.max(x)) if x.size else 0.0
        if not (np.isfinite(lo) and np.isfinite(hi)):
            finite = np.isfinite(x)
            self.nonfinite += int(x.size - np.count_nonzero(finite))
            x = x[finite]
            if not x.size:
                return
            lo, hi = float(np.min(x)), float(np.max(x))
        if not x.size:
            return
        self.min, self.max = min(self.min, lo), max(self.max, hi)
        amax = max(abs(lo), abs(hi))
        self.count += x.size
        self.zeros += int(x.size - np.count_nonzero(x))
        if amax == 0.0:
            self.counts[0] += x.size
            return
        self.amax = max(self.amax, amax)
        self._grow_to(amax)
        a = np.abs(x)
        a *= self.bins_per_unit  # float32 * float32: the product the exactness argument needs
        # float32 → int32 → int64 is ~3x faster than float32 → int64 directly (numpy's casts)
        idx = a.astype(np.int32).astype(np.intp)
        np.minimum(idx, self.num_bins - 1, out=idx)  # safety net; the range excludes amax·bpu ≥ n
        self.counts += np.bincount(idx, minlength=self.num_bins)

    # ----- results ------------------------------------------------------------------------------
    def trimmed(self) -> tuple[np.ndarray, float]:
        """(counts, bin width) over the bins that hold data: bins 0 .. the one containing amax."""
        if not self.bins_per_unit:
            return self.counts[:1].copy(), 0.0
        last = min(self.num_bins - 1, int(np.float64(np.float32(self.amax) * self.bins_per_unit)))
        return self.counts[: last + 1].copy(), self.width

    def to_dict(self) -> dict:
        return {
            "num_bins": self.num_bins,
            "width": self.width,
            "amax": self.amax,
            "min": self.min,
            "max": self.max,
            "count": self.count,
            "zeros": self.zeros,
        }
