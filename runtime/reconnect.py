"""Live sources that survive drops: reopen a stream that stops delivering, with bounded backoff.

Why a wrapper and not a loop change: the video loop reads a :class:`~deeplab_trt.runtime.video.Source`
until ``read`` returns ``None``. A camera, RTSP or HTTP stream that drops (network blip, camera
reboot, server restart) returns ``None`` too, which used to end the run. :class:`ReconnectingSource`
turns that ``None`` into "close, wait, reopen" for live sources only, so the loop, its stats and its
sinks stay as they are; files never reconnect (their ``None`` is the end). Each attempt is one log
line; the gaps are counted (``reconnects``, ``gap_s``) and the reason the source finally ended
(``end_reason``) goes into the run's summary.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from deeplab_trt.runtime.errors import ToolkitError
from deeplab_trt.runtime.video import Source

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Backoff:
    """How a dropped live source is reopened: ``attempts`` tries per drop, waiting ``delay`` s before
    the first and multiplying by ``factor`` up to ``max_delay`` (e.g. 0.5, 1, 2, 4, 8, 8 ... s).

    ``attempts=0`` turns reconnection off (a drop ends the source, as a file's end does).
    """

    attempts: int = 10
    delay: float = 0.5
    factor: float = 2.0
    max_delay: float = 8.0

    def __post_init__(self):
        if self.attempts < 0 or self.delay < 0 or self.factor < 1 or self.max_delay < self.delay:
            raise ToolkitError(
                f"reconnect policy: attempts >= 0, delay >= 0, factor >= 1 and max delay >= delay "
                f"(got {self.attempts}, {self.delay}, {self.factor}, {self.max_delay})"
            )

    def delays(self):
        """The wait before each attempt of one drop."""
        wait = self.delay
        for _ in range(self.attempts):
            yield wait
            wait = min(wait * self.factor, self.max_delay)


class ReconnectingSource:
    """A live source that is reopened with :class:`Backoff` when it stops delivering frames.

    Args:
        open_source: opens the stream (raises :class:`ToolkitError` when it cannot); called once here
            and again after each drop.
        backoff: the reconnect policy.
        sleep: waits between attempts; ``stop`` (an :class:`threading.Event`) interrupts it.
    """

    def __init__(
        self,
        open_source: Callable[[], Source],
        *,
        backoff: Backoff = Backoff(),
        sleep: Callable[[float], None] | None = None,
    ):
        self._open = open_source
        self.backoff = backoff
        self._stop = threading.Event()
        self._sleep = sleep or self._stop.wait
        self.inner: Source | None = open_source()
        self.description = self.inner.description
        self.size = self.inner.size
        self.fps = self.inner.fps
        self.frame_count = self.inner.frame_count
        self.is_live = self.inner.is_live
        self.fps_reported = getattr(self.inner, "fps_reported", True)
        self.reconnects = 0
        self.gap_s = 0.0
        self.end_reason = "end of stream"

    def read(self) -> np.ndarray | None:
        """The next frame; after a drop, the first frame of the reopened stream (None once it gives up)."""
        while self.inner is not None:
            frame = self.inner.read()
            if frame is not None:
                return frame
            if not self.is_live or self.backoff.attempts == 0:
                self.end_reason = "end of stream" if not self.is_live else "stream stopped (reconnect off)"
                return None
            self._reopen()
        return None

    def _reopen(self) -> None:
        """Close the dropped stream and try to open it again; on success ``inner`` is the new one."""
        assert self.inner is not None
        self.inner.close()
        self.inner = None
        lost = time.monotonic()
        why = "stopped delivering frames"
        for attempt, wait in enumerate(self.backoff.delays(), 1):
            log.warning(
                "%s: %s; reconnecting in %.1f s (attempt %d/%d)",
                self.description,
                why,
                wait,
                attempt,
                self.backoff.attempts,
            )
            self._sleep(wait)
            if self._stop.is_set():
                self.end_reason = "closed while reconnecting"
                return
            try:
                source = self._open()
            except ToolkitError as exc:
                why = f"cannot reopen ({exc})"
                continue
            if tuple(source.size) != tuple(self.size):
                source.close()
                self.end_reason = f"reopened at {source.size[0]}x{source.size[1]}, not {self.size[0]}x{self.size[1]}"
                log.error("%s: %s; stopping this source", self.description, self.end_reason)
                return
            self.inner = source
            self.reconnects += 1
            self.gap_s += time.monotonic() - lost
            log.info("%s: reconnected after %.1f s", self.description, time.monotonic() - lost)
            return
        self.end_reason = f"gave up after {self.backoff.attempts} reconnect attempts ({why})"
        log.error("%s: %s", self.description, self.end_reason)

    def summary(self) -> dict:
        """What the run's statistics record about this source."""
        return {"reconnects": self.reconnects, "gap_s": round(self.gap_s, 3), "end_reason": self.end_reason}

    def close(self) -> None:
        self._stop.set()
        if self.inner is not None:
            self.inner.close()
            self.inner = None

    def __enter__(self) -> ReconnectingSource:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
