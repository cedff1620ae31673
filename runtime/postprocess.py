"""Reference postprocessing: model output → labels at the frame's resolution → pictures.

Head forms (see :mod:`deeplab_trt.runtime.spec`):

* ``lowres``: C×h×w logits before torchvision's final bilinear upsample. Labels are
  ``argmax(bilinear(lowres → frame))``. Bilinear interpolation is linear, so each output
  pixel's logits are a convex combination of its 4 low-resolution neighbours; where those 4
  neighbours share one argmax, that label *is* the answer (the blend cannot beat it), and
  only pixels on class boundaries need the C-channel blend. :func:`upsample_argmax` does
  exactly that and gives the same labels as :func:`upsample_then_argmax` (the naive oracle,
  which builds the full-resolution C×H×W tensor) bit for bit: the boundary pixels use the
  same float32 formula.
* ``logits``: C×H×W at the model input size → argmax → nearest to the frame.
* ``labels``: H×W labels from an in-graph ArgMax → nearest to the frame.

Sampling follows the half-pixel convention of OpenCV / ``F.interpolate(align_corners=False)``:
``src = (dst + 0.5) * scale - 0.5``, clamped to the map. With letterbox geometry only the
content rectangle of the model input is mapped back onto the frame.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np

from deeplab_trt.runtime.errors import ToolkitError
from deeplab_trt.runtime.preprocess import Geometry
from deeplab_trt.runtime.spec import ModelSpec

MODES = ("overlay", "mask", "labels")

#: Frames with fewer output rows than this per band are not split (thread hand-off would cost more).
MIN_ROWS_PER_BAND = 64


@functools.lru_cache(maxsize=1)
def _band_pool() -> tuple[ThreadPoolExecutor | None, int]:
    """Threads for row bands and how many (no pool on a one-core machine).

    Why: with one frame in flight (a live camera), nothing overlaps with the host
    postprocessing, so its latency adds to every frame's. numpy's gathers, arithmetic and
    argmax and OpenCV's LUT release the GIL, so bands of output rows run on all cores.
    """
    workers = min(4, os.cpu_count() or 1)
    pool = ThreadPoolExecutor(workers, thread_name_prefix="deeplab-trt-post") if workers > 1 else None
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


def _axis_map(frame_len: int, out_len: int, in_len: int, offset: int, content_len: int) -> np.ndarray:
    """Float source coordinate in the output map for each frame pixel centre (before clamping)."""
    dst = np.arange(frame_len, dtype=np.float64)
    src = (offset + (dst + 0.5) * content_len / frame_len) * (out_len / in_len) - 0.5
    return src


def bilinear_taps(frame_len: int, out_len: int, in_len: int, offset: int, content_len: int):
    """(i0, i1, w) per frame pixel: ``value = (1 - w) * m[i0] + w * m[i1]`` (torch/OpenCV clamping)."""
    src = np.maximum(_axis_map(frame_len, out_len, in_len, offset, content_len), 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), out_len - 1)
    i1 = np.minimum(i0 + 1, out_len - 1)
    w = (src - i0).astype(np.float32)
    w[i0 == out_len - 1] = 0.0
    return i0, i1, w


def nearest_taps(frame_len: int, out_len: int, in_len: int, offset: int, content_len: int) -> np.ndarray:
    src = _axis_map(frame_len, out_len, in_len, offset, content_len) + 0.5
    return np.clip(np.floor(src).astype(np.int64), 0, out_len - 1)


def _taps(geo: Geometry, out_h: int, out_w: int, kind):
    ys = kind(geo.frame_height, out_h, geo.input_height, geo.top, geo.height)
    xs = kind(geo.frame_width, out_w, geo.input_width, geo.left, geo.width)
    return ys, xs


def _blend(logits: np.ndarray, y0, y1, wy, x0, x1, wx) -> np.ndarray:
    """Bilinear blend of ``logits`` (C×h×w) at broadcastable tap arrays: C×... float32."""
    a = logits[:, y0, x0]
    b = logits[:, y0, x1]
    c = logits[:, y1, x0]
    d = logits[:, y1, x1]
    top = a + (b - a) * wx
    bottom = c + (d - c) * wx
    return top + (bottom - top) * wy


def upsample_then_argmax(lowres: np.ndarray, geo: Geometry) -> np.ndarray:
    """Naive oracle: build the full-resolution C×H×W logits, then argmax. Memory ∝ C·H·W."""
    logits = np.asarray(lowres, dtype=np.float32)
    (y0, y1, wy), (x0, x1, wx) = _taps(geo, logits.shape[1], logits.shape[2], bilinear_taps)
    full = _blend(logits, y0[:, None], y1[:, None], wy[:, None], x0[None, :], x1[None, :], wx[None, :])
    return full.argmax(axis=0).astype(np.uint8 if logits.shape[0] <= 256 else np.int32)


def upsample_argmax(lowres: np.ndarray, geo: Geometry) -> np.ndarray:
    """Fused upsample + argmax: same labels as :func:`upsample_then_argmax`, blending only boundary pixels."""
    logits = np.asarray(lowres, dtype=np.float32)
    dtype = np.uint8 if logits.shape[0] <= 256 else np.int32
    low = logits.argmax(axis=0).astype(dtype)
    (y0, y1, wy), (x0, x1, wx) = _taps(geo, logits.shape[1], logits.shape[2], bilinear_taps)
    # A low-res cell (i, j) is "mixed" when its 4 corners (i|i+1, j|j+1; edge-replicated, as the
    # taps clamp) disagree. Every output pixel's taps are (y0, y0+1) x (x0, x0+1) of one cell.
    pad = np.pad(low, ((0, 1), (0, 1)), mode="edge")
    corner = pad[:-1, :-1]
    cell_mixed = (corner != pad[:-1, 1:]) | (corner != pad[1:, :-1]) | (corner != pad[1:, 1:])
    out = low.take(y0, axis=0).take(x0, axis=1)
    if not cell_mixed.any():
        return out
    # Blend only the mixed pixels, one low-res row i at a time: the output rows whose top tap is
    # i form one contiguous band (y0 is non-decreasing) sharing y1 = y1[band] and the columns
    # whose cell (i, x0) is mixed. These are _blend's float32 operations on the same operands in
    # the same order -- top = a + (b - a) * wx, evaluated only at the mixed columns; top +
    # (bottom - top) * wy with (bottom - top) computed once per column instead of once per
    # pixel, the same value -- so the labels are identical. The h x w x C layout keeps one
    # pixel's C logits contiguous, so gathers move whole rows and argmax runs along the last axis.
    lt = np.ascontiguousarray(logits.transpose(1, 2, 0))  # h x w x C
    band = np.searchsorted(y0, np.arange(logits.shape[1] + 1))  # output rows [band[i], band[i+1]) have y0 == i
    mixed_cols = cell_mixed.take(x0, axis=1)  # h x W

    def along_x(row: int, xs: np.ndarray) -> np.ndarray:
        """Low-res row ``row`` blended along x at output columns ``xs``: len(xs) x C."""
        left = lt[row].take(x0[xs], axis=0)
        return left + (lt[row].take(x1[xs], axis=0) - left) * wx[xs, None]

    def blend_rows(o0: int, o1: int) -> None:
        """Mixed pixels of output rows [o0, o1): those of low-res rows y0[o0]..y0[o1-1]."""
        for i in range(int(y0[o0]), int(y0[o1 - 1]) + 1):
            r0, r1 = max(int(band[i]), o0), min(int(band[i + 1]), o1)
            if r1 <= r0:
                continue
            xs = np.flatnonzero(mixed_cols[i])
            if len(xs) == 0:
                continue
            top = along_x(i, xs)
            diff = along_x(int(y1[r0]), xs) - top
            out[r0:r1, xs] = (top + diff * wy[r0:r1, None, None]).argmax(axis=-1)

    in_row_bands(out.shape[0], blend_rows)
    return out


def label_dtype_for(spec: ModelSpec) -> np.dtype:
    """uint8 labels up to 256 classes, int32 beyond: the label type of every path (host and GPU)."""
    return np.dtype(np.uint8 if spec.num_classes <= 256 else np.int32)


def labels_from_output(output: np.ndarray, spec: ModelSpec, geo: Geometry) -> np.ndarray:
    """One image's model output (no batch dim) → H×W labels at the frame's resolution."""
    output = np.asarray(output)
    if spec.head == "lowres":
        if output.ndim != 3:
            raise ToolkitError(f"lowres head expects C×h×w logits, got shape {output.shape}")
        return upsample_argmax(output, geo)
    if spec.head == "logits":
        if output.ndim != 3:
            raise ToolkitError(f"logits head expects C×H×W logits, got shape {output.shape}")
        labels = output.argmax(axis=0)
    else:
        labels = output.reshape(output.shape[-2:]) if output.ndim > 2 else output
    ys, xs = _taps(geo, labels.shape[0], labels.shape[1], nearest_taps)
    return labels[ys[:, None], xs[None, :]].astype(label_dtype_for(spec))


def palette_bgr(spec: ModelSpec) -> np.ndarray:
    """Palette as a (256 or C)×3 uint8 BGR lookup table (frames are BGR)."""
    lut = np.zeros((max(256, spec.num_classes), 3), np.uint8)
    pal = np.asarray(spec.palette[: spec.num_classes], np.uint8).reshape(-1, 3)
    lut[: len(pal)] = pal[:, ::-1]
    return lut


def _lut_ready(labels: np.ndarray, lut: np.ndarray) -> bool:
    """Whether ``cv2.LUT`` can stand in for ``lut[labels]``: uint8 labels, a 256-row uint8 table."""
    return (
        labels.dtype == np.uint8
        and lut.dtype == np.uint8
        and lut.ndim == 2
        and lut.shape[0] >= 256
        and lut.shape[1] == 3
        and labels.ndim == 2
    )


def colorize(labels: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """H×W labels → H×W×3 BGR colour mask (``lut[labels]``; OpenCV's table lookup when it applies,
    a copy of the same bytes ~3x faster than numpy's fancy indexing)."""
    if not _lut_ready(labels, lut):
        return lut[labels]
    return cv2.LUT(cv2.merge([labels, labels, labels]), np.ascontiguousarray(lut[:256]).reshape(1, 256, 3))


@functools.lru_cache(maxsize=16, typed=True)
def _overlay_tables(alpha, lut_bytes: bytes):
    """Per-value float32 terms of the overlay formula, or None where they would not be exact.

    ``uint8(frame * (1 - alpha) + colour * alpha + 0.5)`` is an element-wise function of two
    bytes, so ``frame * (1 - alpha)`` can be looked up per frame value and ``colour * alpha`` per
    class and channel (the same float32 products), leaving one add, one ``+ 0.5`` and the cast.
    Checked against the formula on all 256 x 256 (frame, colour) pairs: a promotion that would
    change the arithmetic (say a float64 ``alpha``) fails the check and the caller falls back.
    """
    values = np.arange(256, dtype=np.uint8).astype(np.float32)
    frame_term = values * (1.0 - alpha)
    colour_term = np.frombuffer(lut_bytes, np.uint8).reshape(256, 3).astype(np.float32) * alpha
    if frame_term.dtype != np.float32 or colour_term.dtype != np.float32:
        return None
    f = values[:, None]
    c = values[None, :]
    want = (f * (1.0 - alpha) + c * alpha + 0.5).astype(np.uint8)
    got = ((frame_term[:, None] + (values * alpha)[None, :]) + 0.5).astype(np.uint8)
    if not np.array_equal(want, got):
        return None
    return frame_term.reshape(1, 256), np.ascontiguousarray(colour_term).reshape(1, 256, 3)


@functools.lru_cache(maxsize=16, typed=True)
def _is_rounded_mean(alpha) -> bool:
    """Whether the overlay formula at ``alpha`` is ``ceil((frame + colour) / 2)`` for every pair of bytes.

    Why: at alpha 0.5 (the default) ``frame * 0.5 + colour * 0.5 + 0.5`` is exact in float32 and
    truncates to that mean, which uint8 arithmetic gives without widening: ``(f | c) - ((f ^ c) >> 1)``
    (``f | c = (f & c) + (f ^ c)``). Checked on all 256 x 256 pairs with the formula's own float
    arithmetic (as :func:`_overlay_tables` is), so any other alpha, or a promotion that would round
    differently, keeps the float path.
    """
    values = np.arange(256, dtype=np.uint8)
    f, c = values[:, None], values[None, :]
    want = (f.astype(np.float32) * (1.0 - alpha) + c.astype(np.float32) * alpha + 0.5).astype(np.uint8)
    return bool(np.array_equal(want, (f | c) - ((f ^ c) >> 1)))


def _rounded_mean_overlay(frame: np.ndarray, labels: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """``ceil((frame + lut[labels]) / 2)`` per byte, in uint8, in row bands (see :func:`_is_rounded_mean`)."""
    out = np.empty(frame.shape, np.uint8)

    def blend_rows(r0: int, r1: int) -> None:
        f, dst = frame[r0:r1], out[r0:r1]
        colour = colorize(labels[r0:r1], lut)
        np.bitwise_xor(f, colour, out=dst)
        np.right_shift(dst, 1, out=dst)
        np.bitwise_or(f, colour, out=colour)
        np.subtract(colour, dst, out=dst)

    in_row_bands(frame.shape[0], blend_rows)
    return out


def overlay(frame: np.ndarray, labels: np.ndarray, lut: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Alpha blend: ``uint8(frame * (1 - alpha) + colour * alpha + 0.5)`` (the CUDA kernel's formula).

    Fast paths (bit-identical), in row bands on all cores (:func:`in_row_bands`): at alpha 0.5 the
    formula is a rounded-up mean of two bytes, three uint8 operations (:func:`_is_rounded_mean`,
    ~3x faster than the tables); otherwise the two products come from 256-entry float32 tables
    (:func:`_overlay_tables`) via ``cv2.LUT``, then numpy adds in place and casts (~2.5x faster
    than the formula).
    """
    tables = None
    if _lut_ready(labels, lut) and frame.dtype == np.uint8 and frame.shape == labels.shape + (3,):
        if _is_rounded_mean(alpha):
            return _rounded_mean_overlay(frame, labels, lut)
        tables = _overlay_tables(alpha, np.ascontiguousarray(lut[:256]).tobytes())
    if tables is None:
        colour = lut[labels].astype(np.float32)
        blended = frame.astype(np.float32) * (1.0 - alpha) + colour * alpha + 0.5
        return blended.astype(np.uint8)
    frame_term, colour_term = tables
    out = np.empty(frame.shape, np.uint8)

    def blend_rows(r0: int, r1: int) -> None:
        band = labels[r0:r1]
        blended = cv2.LUT(np.ascontiguousarray(frame[r0:r1]), frame_term)
        np.add(blended, cv2.LUT(cv2.merge([band, band, band]), colour_term), out=blended)
        np.add(blended, 0.5, out=blended)
        np.copyto(out[r0:r1], blended, casting="unsafe")  # the truncating cast of astype(uint8)

    in_row_bands(frame.shape[0], blend_rows)
    return out


def render(
    frame: np.ndarray, labels: np.ndarray, lut: np.ndarray, mode: str = "overlay", alpha: float = 0.5
) -> np.ndarray:
    """The picture a sink shows/writes: overlay, colour mask, or labels as grey levels (3 channels)."""
    if mode == "overlay":
        return overlay(frame, labels, lut, alpha)
    if mode == "mask":
        return colorize(labels, lut)
    if mode == "labels":
        return np.repeat(labels.astype(np.uint8)[:, :, None], 3, axis=2)
    raise ToolkitError(f"unknown output mode {mode!r} (expected one of {', '.join(MODES)})")
