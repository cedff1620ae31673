"""deeplab-trt: DeepLab v3 from PyTorch to ONNX to TensorRT, and real-time video segmentation.

The public front door. Names load lazily (PEP 562) so ``import deeplab_trt`` costs nothing and
never pulls torch, TensorRT or CUDA in: each name imports its module on first use, and the
modules themselves defer their optional dependencies. Typical use::

    from deeplab_trt import Segmenter, open_source
    seg = Segmenter("model.onnx")                 # ONNX Runtime on the host, or "model.engine"
    with open_source("street.mp4") as source:     # numpy frames; CUDA arrays take the GPU path
        for frame in source:
            picture = seg.render(frame, seg.segment(frame))
"""

from __future__ import annotations

import importlib
from typing import Any

#: public name -> module that defines it
_EXPORTS = {
    "ToolkitError": "deeplab_trt.runtime.errors",
    "NotInstalledError": "deeplab_trt.runtime.errors",
    "IncompatibleEngineError": "deeplab_trt.runtime.errors",
    "InvalidModelError": "deeplab_trt.runtime.errors",
    "ModelSpec": "deeplab_trt.runtime.spec",
    "open_backend": "deeplab_trt.runtime.backends.base",
    "load_engine": "deeplab_trt.runtime.engine_loader",
    "EngineRecord": "deeplab_trt.runtime.engine_record",
    "open_source": "deeplab_trt.runtime.video",
    "run_video": "deeplab_trt.runtime.pipeline",
    "run_streams": "deeplab_trt.runtime.pipeline",
    "RunOptions": "deeplab_trt.runtime.pipeline",
    "Segmenter": "deeplab_trt.runtime.segmenter",
    "export_onnx": "deeplab_trt.builder.export",
    "build_engine": "deeplab_trt.builder.engine",
    "BuildOptions": "deeplab_trt.builder.engine",
    "CalibrationOptions": "deeplab_trt.calibration.options",
    "calibrate": "deeplab_trt.calibration.quantize",
    "quantize_onnx": "deeplab_trt.calibration.quantize",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'deeplab_trt' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
