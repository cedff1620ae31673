"""Reference postprocessing: model output → labels at the frame's resolution → pictures.

Head forms (see :mod:`runtime.spec`):

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

import numpy as np

from runtime.errors import ToolkitError
from runtime.preprocess import Geometry
from runtime.spec import ModelSpec

MODES = ("overlay", "mask", "labels")


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
    out = low[y0][:, x0]
    mixed = cell_mixed[y0][:, x0]
    ys, xs = np.nonzero(mixed)
    if ys.size:
        # Blend along x once per low-res row (C×h×W: small), then along y only at the mixed
        # pixels. These are _blend's float32 operations on the same operands in the same order
        # (top = a + (b - a) * wx is a row of ``along_x``), so the labels are identical; it
        # gathers 2 values per class and pixel instead of 4.
        left = logits[:, :, x0]
        along_x = left + (logits[:, :, x1] - left) * wx
        top = along_x[:, y0[ys], xs]
        bottom = along_x[:, y1[ys], xs]
        out[ys, xs] = (top + (bottom - top) * wy[ys]).argmax(axis=0)
    return out


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
    dtype = np.uint8 if spec.num_classes <= 256 else np.int32
    return labels[ys[:, None], xs[None, :]].astype(dtype)


def palette_bgr(spec: ModelSpec) -> np.ndarray:
    """Palette as a (256 or C)×3 uint8 BGR lookup table (frames are BGR)."""
    lut = np.zeros((max(256, spec.num_classes), 3), np.uint8)
    pal = np.asarray(spec.palette[: spec.num_classes], np.uint8).reshape(-1, 3)
    lut[: len(pal)] = pal[:, ::-1]
    return lut


def colorize(labels: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """H×W labels → H×W×3 BGR colour mask."""
    return lut[labels]


def overlay(frame: np.ndarray, labels: np.ndarray, lut: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Alpha blend: ``uint8(frame * (1 - alpha) + colour * alpha + 0.5)`` (the CUDA kernel's formula)."""
    colour = lut[labels].astype(np.float32)
    blended = frame.astype(np.float32) * (1.0 - alpha) + colour * alpha + 0.5
    return blended.astype(np.uint8)


def render(frame: np.ndarray, labels: np.ndarray, lut: np.ndarray, mode: str = "overlay",
           alpha: float = 0.5) -> np.ndarray:
    """The picture a sink shows/writes: overlay, colour mask, or labels as grey levels (3 channels)."""
    if mode == "overlay":
        return overlay(frame, labels, lut, alpha)
    if mode == "mask":
        return colorize(labels, lut)
    if mode == "labels":
        return np.repeat(labels.astype(np.uint8)[:, :, None], 3, axis=2)
    raise ToolkitError(f"unknown output mode {mode!r} (expected one of {', '.join(MODES)})")
