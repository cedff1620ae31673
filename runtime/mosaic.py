"""``run --show`` with several streams: one window, the streams tiled in a grid (as DeepStream's tiler shows them).

Why tiles are sinks: the video loop writes each stream's picture to that stream's sinks; a tile keeps its
stream's latest picture, and the mosaic is drawn once per tick (:meth:`Sink.end_tick`), so the window
refreshes at the loop's rate, not once per stream. A stream that ended keeps its last picture.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from deeplab_trt.runtime.video import Sink

#: the largest mosaic drawn (w, h): tiles shrink to fit, never grow
MAX_MOSAIC = (1920, 1080)


def grid_for(streams: int) -> tuple[int, int]:
    """(columns, rows) of a near-square grid holding ``streams`` tiles."""
    columns = math.ceil(math.sqrt(streams))
    return columns, math.ceil(streams / columns)


def tile_size(sizes: list[tuple[int, int]], max_size: tuple[int, int] = MAX_MOSAIC) -> tuple[int, int]:
    """(w, h) of one tile: the largest stream's size, scaled down until the grid fits ``max_size``."""
    columns, rows = grid_for(len(sizes))
    w, h = max(s[0] for s in sizes), max(s[1] for s in sizes)
    scale = min(1.0, max_size[0] / (columns * w), max_size[1] / (rows * h))
    return max(2, int(w * scale)), max(2, int(h * scale))


def compose(pictures: list[np.ndarray | None], tile: tuple[int, int]) -> np.ndarray:
    """The mosaic: picture ``i`` fitted (aspect kept, centred on black) into cell ``i`` of the grid, its index in a corner.

    Args:
        pictures: one BGR picture per stream (``None``: nothing yet, a black cell).
        tile: (w, h) of a cell.
    """
    columns, rows = grid_for(len(pictures))
    tw, th = tile
    mosaic = np.zeros((rows * th, columns * tw, 3), np.uint8)
    for i, picture in enumerate(pictures):
        y0, x0 = (i // columns) * th, (i % columns) * tw
        if picture is not None:
            if picture.ndim == 2:
                picture = cv2.cvtColor(picture, cv2.COLOR_GRAY2BGR)
            h, w = picture.shape[:2]
            scale = min(tw / w, th / h)
            fw, fh = max(1, int(round(w * scale))), max(1, int(round(h * scale)))
            fitted = cv2.resize(picture, (fw, fh), interpolation=cv2.INTER_AREA)
            oy, ox = y0 + (th - fh) // 2, x0 + (tw - fw) // 2
            mosaic[oy : oy + fh, ox : ox + fw] = fitted
        cv2.putText(mosaic, str(i), (x0 + 6, y0 + 22), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (255, 255, 255), 2, cv2.LINE_AA)
    return mosaic


class Mosaic:
    """Several streams' pictures in one sink (a window): :meth:`tile` gives stream ``i``'s sink.

    Args:
        inner: where the mosaic goes (a :class:`~deeplab_trt.runtime.video.WindowSink`).
        sizes: each stream's (w, h), in stream order.
    """

    def __init__(self, inner: Sink, sizes: list[tuple[int, int]]):
        self.inner = inner
        self.tile_wh = tile_size(sizes)
        self.pictures: list[np.ndarray | None] = [None] * len(sizes)
        self.dirty = False
        self.frames = 0

    def tile(self, index: int) -> Sink:
        return _Tile(self, index)

    def show(self) -> None:
        """Draw the mosaic if a tile changed since the last draw (once per tick, however many tiles call)."""
        if self.dirty:
            self.inner.write(compose(self.pictures, self.tile_wh))
            self.frames += 1
            self.dirty = False


class _Tile(Sink):
    """Stream ``index``'s cell of a :class:`Mosaic`."""

    def __init__(self, mosaic: Mosaic, index: int):
        self.mosaic, self.index = mosaic, index
        self.description = f"{mosaic.inner.description}, tile {index}"

    def write(self, frame: np.ndarray) -> None:
        self.mosaic.pictures[self.index] = frame.copy()  # the stage may reuse its buffer after the tick
        self.mosaic.dirty = True
        self.frames += 1

    def end_tick(self) -> None:
        self.mosaic.show()

    @property
    def wants_stop(self) -> bool:  # the window's answer, for every tile
        return self.mosaic.inner.wants_stop
