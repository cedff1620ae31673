"""Inference backends: one model file in, one ``Backend`` out.

``open_backend(path, backend="auto")`` is the only entry point the rest of the toolkit uses;
it picks ONNX Runtime for ``.onnx`` files and the TensorRT backend for ``.engine``/``.plan``.
"""

from deeplab_trt.runtime.backends.base import BACKENDS, Backend, open_backend

__all__ = ["BACKENDS", "Backend", "open_backend"]
