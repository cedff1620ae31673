"""Sampling tables for the kernels, computed on the host with the references' own formulas.

Why tables: the kernels then need no sampling arithmetic of their own, so their taps are
*bit-identical* to the numpy references (postprocess taps come straight from
:func:`deeplab_trt.runtime.postprocess.bilinear_taps` / :func:`~deeplab_trt.runtime.postprocess.nearest_taps`, computed
in float64 there) and to OpenCV's float ``INTER_LINEAR`` for preprocessing. A table is H + W
entries, built once per geometry and cached by the kernel wrappers.

Layouts (what ``kernels.cu`` reads):

* resize (preprocess): ``index`` int32 [n, 2] source indices, ``weight`` float32 [n, 2]
  (OpenCV's ``cbuf = {1 - f, f}``), one row per destination pixel of the content rectangle.
* bilinear (upsample): ``index`` int32 [n, 2] = (i0, i1), ``weight`` float32 [n] = w.
* nearest (gather): ``index`` int32 [n].
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from deeplab_trt.runtime.postprocess import bilinear_taps, nearest_taps
from deeplab_trt.runtime.preprocess import Geometry


@dataclass(frozen=True)
class ResizeTaps:
    index: np.ndarray  # int32 [n, 2]
    weight: np.ndarray  # float32 [n, 2]


def opencv_linear_taps(src_len: int, dst_len: int) -> ResizeTaps:
    """OpenCV's ``resize(INTER_LINEAR)`` taps for one axis, as its generic float path computes them.

    ``scale = 1 / (dst / src)`` in double; ``f = float((d + 0.5) * scale - 0.5)``; ``s = floor(f)``;
    ``f -= s`` in float; left of the first pixel → (0, weight 0); at or past the last → (last, 0);
    coefficients ``(1 - f, f)`` in float32.
    """
    if src_len < 1 or dst_len < 1:
        raise ValueError(f"resize axis lengths must be positive (src {src_len}, dst {dst_len})")
    scale = 1.0 / (float(dst_len) / float(src_len))
    fx = ((np.arange(dst_len, dtype=np.float64) + 0.5) * scale - 0.5).astype(np.float32)
    sx = np.floor(fx).astype(np.int64)
    fx = (fx - sx.astype(np.float32)).astype(np.float32)
    left = sx < 0
    fx[left], sx[left] = 0.0, 0
    right = sx >= src_len - 1
    fx[right], sx[right] = 0.0, src_len - 1
    index = np.stack([sx, np.minimum(sx + 1, src_len - 1)], axis=1).astype(np.int32)
    weight = np.stack([np.float32(1.0) - fx, fx], axis=1).astype(np.float32)
    return ResizeTaps(np.ascontiguousarray(index), np.ascontiguousarray(weight))


@dataclass(frozen=True)
class PreprocessTables:
    geometry: Geometry
    x: ResizeTaps
    y: ResizeTaps


def preprocess_tables(geo: Geometry) -> PreprocessTables:
    """Taps that resize the whole frame onto the geometry's content rectangle."""
    return PreprocessTables(
        geo, opencv_linear_taps(geo.frame_width, geo.width), opencv_linear_taps(geo.frame_height, geo.height)
    )


@dataclass(frozen=True)
class BilinearTaps:
    index: np.ndarray  # int32 [n, 2]
    weight: np.ndarray  # float32 [n]


def upsample_tables(geo: Geometry, out_h: int, out_w: int) -> tuple[BilinearTaps, BilinearTaps]:
    """(rows, cols) taps from the frame's pixels into an out_h×out_w model output (reference formula)."""

    def axis(frame_len, out_len, in_len, offset, content_len) -> BilinearTaps:
        i0, i1, w = bilinear_taps(frame_len, out_len, in_len, offset, content_len)
        return BilinearTaps(
            np.ascontiguousarray(np.stack([i0, i1], axis=1).astype(np.int32)),
            np.ascontiguousarray(w.astype(np.float32)),
        )

    return (
        axis(geo.frame_height, out_h, geo.input_height, geo.top, geo.height),
        axis(geo.frame_width, out_w, geo.input_width, geo.left, geo.width),
    )


def nearest_tables(geo: Geometry, out_h: int, out_w: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) nearest taps from the frame's pixels into an out_h×out_w label map."""
    ys = nearest_taps(geo.frame_height, out_h, geo.input_height, geo.top, geo.height)
    xs = nearest_taps(geo.frame_width, out_w, geo.input_width, geo.left, geo.width)
    return np.ascontiguousarray(ys.astype(np.int32)), np.ascontiguousarray(xs.astype(np.int32))


def normalization(spec, bgr: bool = True) -> tuple[tuple[int, int, int], tuple[float, ...], tuple[float, ...]]:
    """(source channel per output channel, mean*255, 1/(std*255)) exactly as the reference computes them."""
    swap = bgr == (spec.channel_order.upper() == "RGB")
    channels = (2, 1, 0) if swap else (0, 1, 2)
    mean = np.asarray(spec.mean, np.float32) * 255.0
    inv_std = 1.0 / (np.asarray(spec.std, np.float32) * 255.0)
    mean = mean.astype(np.float32)
    inv_std = inv_std.astype(np.float32)
    return channels, tuple(float(m) for m in mean), tuple(float(s) for s in inv_std)


def preprocess_model(frame: np.ndarray, spec, geo: Geometry, dtype=np.float32, bgr: bool = True) -> np.ndarray:
    """numpy model of ``preprocess_u8_*`` (same tables, same float32 operation order): 1×3×H×W.

    Used by the tests to show the tables reproduce OpenCV, independently of any GPU.
    """
    t = preprocess_tables(geo)
    channels, mean, inv_std = normalization(spec, bgr)
    f = frame.astype(np.float32)
    xi, xw = t.x.index, t.x.weight
    yi, yw = t.y.index, t.y.weight
    rows0, rows1 = f[yi[:, 0]], f[yi[:, 1]]
    h0 = rows0[:, xi[:, 0]] * xw[None, :, 0, None] + rows0[:, xi[:, 1]] * xw[None, :, 1, None]
    h1 = rows1[:, xi[:, 0]] * xw[None, :, 0, None] + rows1[:, xi[:, 1]] * xw[None, :, 1, None]
    v = h0 * yw[:, 0, None, None] + h1 * yw[:, 1, None, None]
    out = np.zeros((1, 3, geo.input_height, geo.input_width), dtype)
    for c in range(3):
        plane = (v[:, :, channels[c]] - np.float32(mean[c])) * np.float32(inv_std[c])
        out[0, c, geo.top : geo.top + geo.height, geo.left : geo.left + geo.width] = plane
    return out
