"""Scale choice: activations (entropy / percentile / max, per tensor) and weights (per channel).

Everything is symmetric int8, TensorRT's scheme: ``q = clamp(round(x / s), -128, 127)``,
zero point 0, ``s = amax / 127``. The calibration methods only differ in ``amax``, the value
above which activations are clipped.

``entropy`` — TensorRT's legacy KL-divergence calibration (``IInt8EntropyCalibrator2``;
Migacz, "8-bit Inference with TensorRT", GTC 2017), on the |x| histogram of
:mod:`deeplab_trt.calibration.histogram`:

* **bins**: the histogram of |x| from 0 to max |x| (TensorRT: 2048 bins; here the bins that
  hold data after range growth, between ``num_bins / 2`` and ``num_bins`` of them).
* **candidates**: keep the first ``i`` bins, for every ``i`` from 128 (one bin per int8 level)
  to all of them; the candidate threshold is ``(i + 0.5) * bin_width`` (TensorRT's formula),
  capped at max |x|.
* **P** (reference): ``bins[0:i]``, with the count of every clipped value (``bins[i:]``)
  added to the last kept bin — clipping maps outliers onto the threshold.
* **Q** (candidate): ``bins[0:i]`` (without the outliers) merged into 128 levels — bin ``j``
  goes to level ``floor(j * 128 / i)`` — then expanded back to ``i`` bins by spreading each
  level's count evenly over the bins of that level that were non-zero in ``bins[0:i]``;
  empty bins stay empty. This is what int8 rounding does to the distribution.
* **smoothing**: KL(P‖Q) is infinite where P > 0 and Q = 0 (the last bin, when it only holds
  outliers). As in MXNet / ONNX Runtime, zeros of each distribution get ``eps = 1e-4`` (in
  counts) and the non-zero entries give up the same total, so sums are unchanged; then both are
  normalised and ``KL = Σ p log(p / q)``.
* **choice**: the candidate with the smallest KL; ties go to the largest threshold (as in
  pytorch-quantization): less clipping for the same divergence.
* **exact zeros** (not in TensorRT's description; pytorch-quantization does the equivalent
  ``bins[0] = bins[1]``): the exact zeros are removed from bin 0 before the search. After a
  ReLU half the values are exactly 0; int8 represents 0 exactly at any scale, but the level
  merge smears that spike over the first level and the KL then pushes the threshold down
  until one bin equals one level, clipping real activations.

All candidates are evaluated at once from prefix sums (see :func:`kl_divergences`), not in a
Python loop over candidates: ~10 ms per tensor at 2048 bins.

``percentile`` — the smallest histogram edge below which ``percentile`` % of |x| lies
(zeros included), capped at max |x|. ``max`` — max |x|, exact.

Weights: per output channel (axis 0), ``s_c = max |w_c| / 127``, ``round`` half to even (what
ONNX ``QuantizeLinear`` and TensorRT do).
"""

from __future__ import annotations

import numpy as np

from deeplab_trt.calibration.histogram import AbsHistogram

METHODS = ("entropy", "percentile", "max")
INT8_LEVELS = 128  # non-negative int8 levels: 0..127
QMAX = 127
SMOOTH_EPS = 1e-4


def kl_divergences(
    counts: np.ndarray, start: int = INT8_LEVELS, levels: int = INT8_LEVELS, eps: float = SMOOTH_EPS
) -> tuple[np.ndarray, np.ndarray]:
    """KL(P_i ‖ Q_i) for every candidate ``i`` in ``start .. len(counts)``; returns (i values, KL).

    ``counts``: integer histogram of |x| from 0 up to the bin holding max |x|. P, Q and the
    smoothing are as in the module docstring; the evaluation is rearranged so that no
    candidate × bin array is needed (``tests`` check it against a direct per-candidate loop):

    ``KL = (1/T) Σ_j P'_j (log P'_j − log Q'_j) + log(S/T)`` with ``P'``, ``Q'`` the smoothed
    counts, ``T`` the total and ``S = T − outliers`` the sum of Q. Bins that are empty in both
    P and Q contribute ``eps·log eps − eps·log eps = 0``. Inside a level ``Q'`` is constant, so
    the cross term is a per-level sum of ``(s_j − e_p)`` from prefix sums. ``Σ (s − e) log(s − e)``
    over the non-empty bins uses the Taylor series in ``e`` (``e = eps·zeros/nonzeros ≤ 0.2``,
    ``s ≥ 1``) to third order — error below 1e-4 counts per bin — again from prefix sums. The
    last kept bin, which carries the outliers, is computed exactly.
    """
    s = np.asarray(counts, dtype=np.float64)
    n = s.size
    start = max(min(start, n), levels)
    cand = np.arange(start, n + 1)
    if cand.size == 0:
        return cand, np.zeros(0)
    nz = s > 0
    safe = np.where(nz, s, 1.0)
    log_s = np.where(nz, np.log(safe), 0.0)

    def prefix(v):  # prefix[k] = sum of v[:k]
        return np.concatenate([[0.0], np.cumsum(v)])

    cs, nzc = prefix(s), prefix(nz.astype(np.float64))
    a_, b_ = prefix(s * log_s), prefix(log_s)
    c_, d_ = prefix(np.where(nz, 1.0 / safe, 0.0)), prefix(np.where(nz, 1.0 / safe**2, 0.0))
    total = cs[-1]
    i = cand
    last = s[i - 1]
    outliers = total - cs[i]
    kept_sum = cs[i]  # S: sum of Q before smoothing
    zeros_q = i - nzc[i]
    nonzeros_q = nzc[i]
    p_last = last + outliers
    zeros_p = zeros_q - ((last == 0) & (p_last > 0))
    nonzeros_p = i - zeros_p
    ok = (nonzeros_q > 0) & (nonzeros_p > 0)
    e_p = eps * zeros_p / np.maximum(nonzeros_p, 1)
    e_q = eps * zeros_q / np.maximum(nonzeros_q, 1)

    # Σ_{j < i-1, s_j > 0} (s_j - e_p) log(s_j - e_p), third-order series in e_p
    k = i - 1
    plogp = a_[k] - e_p * (b_[k] + nzc[k]) + e_p**2 / 2 * c_[k] + e_p**3 / 6 * d_[k]

    # levels: bins [ceil(g*i/L), ceil((g+1)*i/L)) form level g
    g = np.arange(levels + 1)
    bounds = (g[None, :] * i[:, None] + levels - 1) // levels  # (C, L+1)
    lvl_sum = cs[bounds[:, 1:]] - cs[bounds[:, :-1]]
    lvl_nz = nzc[bounds[:, 1:]] - nzc[bounds[:, :-1]]
    q_lvl = np.where(lvl_nz > 0, lvl_sum / np.maximum(lvl_nz, 1), 0.0) - e_q[:, None]  # Q' on non-empty bins
    # cross term over j < i-1: the last level loses the last bin
    p_lvl = lvl_sum - e_p[:, None] * lvl_nz
    p_lvl[:, -1] -= np.where(last > 0, last - e_p, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        log_q_lvl = np.where(lvl_nz > 0, np.log(np.where(q_lvl > 0, q_lvl, 1.0)), 0.0)
        ok &= np.all((lvl_nz == 0) | (q_lvl > 0), axis=1)
        cross = np.sum(p_lvl * log_q_lvl, axis=1)
        # the last kept bin, exactly
        pl = np.where(p_last > 0, p_last - e_p, eps)
        ql = np.where(last > 0, q_lvl[:, -1], eps)
        ok &= (pl > 0) & (ql > 0)
        pl, ql = np.where(ok, pl, 1.0), np.where(ok, ql, 1.0)
        last_term = pl * (np.log(pl) - np.log(ql))
        kl = (plogp - cross + last_term) / total + np.log(np.maximum(kept_sum, 1e-300) / total)
    return cand, np.where(ok, kl, np.inf)


def entropy_amax(hist: AbsHistogram, start: int = INT8_LEVELS, ignore_zeros: bool = True) -> float:
    """TensorRT's KL-divergence threshold for ``hist`` (see the module docstring)."""
    counts, width = hist.trimmed()
    if hist.amax == 0.0 or width == 0.0:
        return 0.0
    if ignore_zeros:
        counts[0] -= hist.zeros
    if counts.size <= start or counts.sum() == 0:
        return hist.amax  # fewer bins than int8 levels: nothing to clip
    cand, kl = kl_divergences(counts, start=start)
    if not np.isfinite(kl).any():
        return hist.amax
    best = kl.size - 1 - int(np.argmin(kl[::-1]))  # last minimum: the largest threshold
    return float(min((cand[best] + 0.5) * width, hist.amax))


def percentile_amax(hist: AbsHistogram, percentile: float = 99.99) -> float:
    """Upper edge of the bin where the cumulative share of |x| reaches ``percentile`` %."""
    if not 0.0 < percentile <= 100.0:
        raise ValueError(f"percentile must be in (0, 100], got {percentile}")
    counts, width = hist.trimmed()
    if hist.amax == 0.0 or width == 0.0:
        return 0.0
    cdf = np.cumsum(counts) / counts.sum()
    idx = int(np.searchsorted(cdf, percentile / 100.0 * (1 - 1e-12)))
    return float(min((idx + 1) * width, hist.amax))


def max_amax(hist: AbsHistogram) -> float:
    return float(hist.amax)


def compute_amax(hist: AbsHistogram, method: str = "entropy", percentile: float = 99.99) -> float:
    if method == "entropy":
        return entropy_amax(hist)
    if method == "percentile":
        return percentile_amax(hist, percentile)
    if method == "max":
        return max_amax(hist)
    raise ValueError(f"unknown calibration method {method!r} (expected one of {', '.join(METHODS)})")


def scale_from_amax(amax: float) -> np.float32:
    """Symmetric int8 scale; an all-zero tensor gets 1.0 (any positive scale represents it)."""
    return np.float32(amax / QMAX) if amax > 0 else np.float32(1.0)


def amax_from_scale(scale: float) -> float:
    return float(np.float32(scale)) * QMAX


def weight_scales(weight: np.ndarray, axis: int = 0) -> np.ndarray:
    """Per-channel symmetric scales (float32, one per index of ``axis``)."""
    w = np.asarray(weight, dtype=np.float32)
    reduce = tuple(d for d in range(w.ndim) if d != axis)
    amax = np.max(np.abs(w), axis=reduce) if reduce else np.abs(w)
    return np.where(amax > 0, amax / QMAX, 1.0).astype(np.float32)


def quantize_weight(weight: np.ndarray, scales: np.ndarray, axis: int = 0) -> np.ndarray:
    """int8 weights for per-channel ``scales`` along ``axis``: round half to even, clamp ±127."""
    w = np.asarray(weight, dtype=np.float32)
    shape = [1] * w.ndim
    shape[axis] = -1
    q = np.rint(w / scales.reshape(shape))
    return np.clip(q, -QMAX, QMAX).astype(np.int8)
