"""One *tick* of the video loop: the next frame of every stream still running, gathered for one batched inference.

Why this policy (DeepStream's ``nvstreammux`` does the same job with a batch timeout): a file has no
clock, so a tick waits for its next frame (every frame of every file is segmented, and a run over
files is deterministic); a live source runs on its own clock, so a tick waits for it only until a
deadline (``live_wait_s`` after the tick started) and goes without it when it is late; its reader
drops the oldest frame rather than fall behind. A stream that ends leaves the ticks (the batch
shrinks); one that fails ends too, with its reason, while the others go on, unless it is the only
stream (then the error is the run's: a single-stream run fails as it always did).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from deeplab_trt.runtime.video import BackgroundReader

log = logging.getLogger(__name__)

#: how long a tick waits for a late live stream (seconds; nvstreammux's usual batched-push-timeout)
DEFAULT_LIVE_WAIT_S = 0.04


@dataclass
class TickFrame:
    """One stream's frame in a tick: which stream, the BGR frame, its decode time, when the tick took it."""

    stream: int
    frame: np.ndarray
    decode_s: float
    taken_at: float


class TickGatherer:
    """The next frame of each running stream, one tick at a time (see the module docstring).

    Args:
        readers: one :class:`~deeplab_trt.runtime.video.BackgroundReader` per stream, in stream order.
        live_wait_s: how long a tick waits for a live stream's frame.
    """

    def __init__(self, readers: Sequence[BackgroundReader], *, live_wait_s: float = DEFAULT_LIVE_WAIT_S):
        self.readers = list(readers)
        self.live_wait_s = live_wait_s
        #: why each stream ended (``None`` while it runs): "end of stream", "max frames", "failed: ..."
        self.ended: list[str | None] = [None] * len(self.readers)
        self.frames = [0] * len(self.readers)

    @property
    def running(self) -> list[int]:
        return [i for i, why in enumerate(self.ended) if why is None]

    def next(self, stop: threading.Event) -> list[TickFrame] | None:
        """The next tick (at least one frame), or ``None`` once every stream has ended or ``stop`` is set."""
        while not stop.is_set():
            running = self.running
            if not running:
                return None
            deadline = time.perf_counter() + self.live_wait_s
            tick = [f for i in running if (f := self._take(i, stop, deadline)) is not None]
            if tick:
                return tick
        return None

    def _take(self, index: int, stop: threading.Event, deadline: float) -> TickFrame | None:
        reader = self.readers[index]
        try:
            item = reader.next(stop, deadline=deadline if reader.source.is_live else None)
        except Exception as exc:  # noqa: BLE001 - one stream's failure ends that stream, not the run
            if len(self.readers) == 1:
                raise
            line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            log.warning("stream %d (%s) failed: %s; the other streams go on", index, reader.source.description, line)
            self.ended[index] = f"failed: {line}"
            return None
        if item is BackgroundReader.LATE:
            return None
        if item is None:
            if not stop.is_set():
                self.ended[index] = "max frames" if reader.reached_max else "end of stream"
            return None
        frame, decode_s = item
        self.frames[index] += 1
        return TickFrame(index, frame, decode_s, time.perf_counter())
