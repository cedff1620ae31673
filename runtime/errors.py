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
