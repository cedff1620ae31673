"""The exception types users see, and the one way to import an optional dependency.

Every bad input (missing file, wrong format, impossible option) is raised as a
:class:`ToolkitError` whose message is a single line naming the file and what is wrong.
The CLI prints it without a traceback and exits non-zero (``-v`` adds the chain of causes:
errors are raised ``from`` the exception that revealed them); anything else that escapes is
a bug and keeps its traceback. Library users can catch the subclasses below to tell "install
something", "rebuild the engine" and "fix the model file" apart; all share the exit code.
"""

from __future__ import annotations

import importlib
from types import ModuleType


class ToolkitError(Exception):
    """A user-facing error: one line, names the offending file or option."""

    def __init__(self, message: str, *, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code


class NotInstalledError(ToolkitError):
    """An optional dependency is missing; the message names the extra that brings it."""


class IncompatibleEngineError(ToolkitError):
    """An engine cannot run here (other TensorRT, other GPU, DLA absent ...): rebuild it."""


class InvalidModelError(ToolkitError):
    """A model file (ONNX, engine, checkpoint, sidecar) is unreadable or not what it claims."""


def require(module: str, *, extra: str, purpose: str) -> ModuleType:
    """Import ``module`` or raise :class:`NotInstalledError` naming the extra to install.

    Why one function: every optional import (torch for export, onnxconverter-common for the
    FP16 pass, matplotlib for plots ...) fails the same way for the user — one line saying
    what needs it and the ``pip install`` that fixes it — instead of a ``ModuleNotFoundError``.

    Args:
        module: the dotted import name (``"onnxconverter_common"``).
        extra: the deeplab-trt extra that declares it (``"build"``).
        purpose: what needs it, for the message (``"the FP16 pass"``).
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        raise NotInstalledError(
            f"{purpose} needs the Python package '{top}', which is not installed: pip install 'deeplab-trt[{extra}]'"
        ) from exc


def opencv_import_hint(exc: ImportError) -> str | None:
    """One line for an OpenCV that cannot be imported, or None when ``exc`` is about something else.

    Why here: OpenCV is imported at the top of the video and pre/post-processing modules (it is
    core everywhere but on aarch64, where JetPack's GStreamer-enabled system OpenCV is the one to
    use), so the CLI turns the two ways it fails on a Jetson into one line instead of a traceback:
    no OpenCV in the venv at all, and JetPack's OpenCV (built against numpy 1.x) under numpy 2.
    """
    text = str(exc)
    if getattr(exc, "name", None) == "cv2" or "No module named 'cv2'" in text:
        return (
            "OpenCV (cv2) is not installed: on a Jetson use JetPack's python3-opencv (a venv made with "
            "--system-site-packages, then pip install 'deeplab-trt[jetpack6]'); elsewhere pip install 'deeplab-trt[opencv]'"
        )
    if "numpy.core.multiarray failed to import" in text or "compiled using NumPy 1.x" in text:
        return (
            f"OpenCV cannot be imported ({text.strip().splitlines()[0]}): JetPack's OpenCV is built against "
            "numpy 1.x: pip install 'numpy<2' (or 'deeplab-trt[jetpack6]')"
        )
    return None
