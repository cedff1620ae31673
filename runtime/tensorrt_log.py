"""TensorRT's log routed into Python ``logging`` (logger ``tensorrt``), with its errors kept.

Why: TensorRT prints to stdout by default, which breaks the toolkit's rule that a failure
is *one* line naming the file. Here every TensorRT message goes to the ``tensorrt`` logger
at DEBUG (``--verbose`` shows INFO and VERBOSE too), errors are kept so the caller can put
the first one into its :class:`~deeplab_trt.runtime.errors.ToolkitError`, and warnings are kept so a
successful build can show them once at the end.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

log = logging.getLogger("tensorrt")

_CLASSES: dict[int, type] = {}


def _first_line(message: str) -> str:
    lines = [line.strip() for line in str(message).splitlines() if line.strip()]
    return lines[0] if lines else ""


def make_logger(trt: Any, verbose: bool = False):
    """An ``ILogger`` for module ``trt`` with ``.errors`` and ``.warnings`` (lists of str).

    ``verbose``: also pass TensorRT's VERBOSE messages on (INFO always goes to DEBUG).
    The instance must outlive every TensorRT object created with it.
    """
    cls = _CLASSES.get(id(trt))
    if cls is None:
        severity = trt.ILogger.Severity

        class RoutedLogger(trt.ILogger):
            def __init__(self, verbose: bool = False) -> None:
                trt.ILogger.__init__(self)
                self.verbose = verbose
                self.errors: list[str] = []
                self.warnings: list[str] = []
                self._lock = threading.Lock()

            def log(self, sev, msg) -> None:  # called from TensorRT's threads
                if sev in (severity.INTERNAL_ERROR, severity.ERROR):
                    with self._lock:
                        self.errors.append(str(msg))
                    log.debug("TensorRT error: %s", msg)
                elif sev == severity.WARNING:
                    with self._lock:
                        self.warnings.append(str(msg))
                    log.debug("TensorRT warning: %s", msg)
                elif sev == severity.INFO:
                    log.debug("TensorRT: %s", msg)
                elif self.verbose:
                    log.debug("TensorRT verbose: %s", msg)

            def first_error(self, default: str = "no error message") -> str:
                """The most telling error line: the first that is not a parser location banner."""
                for message in self.errors:
                    line = _first_line(message)
                    if line and "While parsing node" not in line and "--- " not in line:
                        return line
                return _first_line(self.errors[0]) if self.errors else default

            def clear(self) -> None:
                with self._lock:
                    self.errors.clear()
                    self.warnings.clear()

        cls = _CLASSES[id(trt)] = RoutedLogger
    return cls(verbose)
