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
    """None when a CUDA device is usable, else why not (the runtime's own probe)."""
    from deeplab_trt.runtime.tensorrt_flavour import current_gpu

    capability, why = current_gpu()
    return None if capability is not None else why


def pytest_collection_modifyitems(config, items):
    reason = cuda_device_reason()
    if reason is None:
        return
    skip = pytest.mark.skip(reason=f"gpu test: {reason}")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def rtx_flavour():
    """TensorRT-RTX, pinned by name: the one gate for RTX-specific tests.

    Never what ``auto`` finds (a Jetson or TensorRT desktop has real ``tensorrt``, and ``auto`` may
    prefer it); skips, with the reason, where the TensorRT-RTX bindings are absent.
    """
    from deeplab_trt.runtime.errors import ToolkitError
    from deeplab_trt.runtime.tensorrt_flavour import detect

    try:
        return detect("tensorrt-rtx")
    except ToolkitError as exc:
        pytest.skip(f"TensorRT-RTX bindings absent: {exc}")


@pytest.fixture(scope="session")
def onnx_factory(tmp_path_factory):
    """Export (once per distinct option set, cached for the session) a small ONNX model.

    ``onnx_factory(head="lowres", height=64, width=128, num_classes=5, **export_kwargs) -> Path``.
    Random weights: tests about numerics compare backends on the same graph, not accuracy.
    """
    from deeplab_trt.builder.export import export_onnx

    cache: dict[tuple, Path] = {}
    root = tmp_path_factory.mktemp("onnx")

    def make(
        head: str = "lowres",
        height: int = 64,
        width: int = 128,
        num_classes: int | None = 5,
        model: str = "deeplabv3_mobilenet_v3_large",
        **kwargs,
    ) -> Path:
        key = (head, height, width, num_classes, model, tuple(sorted(kwargs.items())))
        if key not in cache:
            out = root / f"{model}_{head}_{height}x{width}_{len(cache)}.onnx"
            export_onnx(
                out,
                model=model,
                weights=kwargs.pop("weights", "none"),
                num_classes=num_classes,
                height=height,
                width=width,
                head=head,
                progress=False,
                **kwargs,
            )
            cache[key] = out
        return cache[key]

    return make


@pytest.fixture(scope="session")
def demo_onnx(onnx_factory):
    """The committed demo model exported at its native size with the low-res head."""
    return onnx_factory(model="demo", head="lowres", height=None, width=None, num_classes=None)


@pytest.fixture
def opencv_without_ipp():
    """IPP's float resize rounds its own way (~1e-4 after normalisation); the plain path is the formula."""
    import cv2

    had = cv2.ipp.useIPP()
    cv2.ipp.setUseIPP(False)
    yield
    cv2.ipp.setUseIPP(had)
