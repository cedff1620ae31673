"""Shared fixtures. ``gpu`` tests are skipped, with the reason, where no CUDA device exists."""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


@functools.lru_cache(maxsize=1)
def cuda_device_reason() -> str | None:
    """None when a CUDA device is usable, else why not."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        return "cuda-python is not installed"
    err, count = cudart.cudaGetDeviceCount()
    if int(err) != 0 or count == 0:
        return f"no CUDA device ({cudart.cudaGetErrorString(err)[1].decode() if int(err) else 'count 0'})"
    return None


def pytest_collection_modifyitems(config, items):
    reason = cuda_device_reason()
    if reason is None:
        return
    skip = pytest.mark.skip(reason=f"gpu test: {reason}")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
