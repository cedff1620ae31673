"""The inference step of the GPU path: device input → model → device output, on a stream.

Why a protocol: the GPU pipeline and :mod:`deeplab_trt.runtime.interop` need only "run the model on this
stream, reading this device tensor and writing that one". TensorRT does that natively
(:class:`deeplab_trt.runtime.backends.tensorrt.TensorRTRunner`); any host backend (ONNX Runtime, or the
TensorRT backend's own host path) can be adapted with :class:`HostBackendInference`, which
lets the very same GPU pipeline run on a GPU machine without TensorRT (one host round trip
per frame, for testing and as a fallback). A torch module can be adapted the same way (the
tests do; the runtime never imports torch).

Contract
--------
``spec``, ``name``; ``input``: a :class:`~deeplab_trt.runtime.cuda.api.DeviceArray` N×3×H×W of the
model's input dtype (preprocessing writes image 0 there); ``output``: a DeviceArray with the
model's output (N×C×h×w logits or N×H×W labels); ``enqueue(stream)``: queue one inference
on ``stream`` (may block the host, e.g. the host adapter); ``capturable``: whether
``enqueue`` may be recorded into a CUDA graph.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from deeplab_trt.runtime.spec import ModelSpec


@runtime_checkable
class DeviceInference(Protocol):
    name: str
    spec: ModelSpec
    input: object  # DeviceArray
    output: object  # DeviceArray
    capturable: bool

    def enqueue(self, stream) -> None: ...

    def close(self) -> None: ...


class HostBackendInference:
    """Any host-side ``Backend`` (``infer(np) -> np``) as a :class:`DeviceInference`.

    ``enqueue`` waits for the stream (the input must be ready), copies the input to pinned
    host memory, runs ``backend.infer``, and queues the output's copy back on the stream.
    """

    capturable = False

    def __init__(self, backend, batch: int | None = None):
        from deeplab_trt.runtime.cuda import api

        self.backend = backend
        self.spec: ModelSpec = backend.spec
        self.name = f"{backend.name} (host inference)"
        n = batch or getattr(backend, "fixed_batch", None) or 1
        dtype = np.dtype(backend.input_dtype)
        shape = (n, 3, self.spec.input_height, self.spec.input_width)
        self.input = api.empty(shape, dtype)
        self._host_in = api.PinnedBuffer(self.input.nbytes).array(shape, dtype)
        self._host_in[...] = 0
        probe = np.asarray(backend.infer(self._host_in))  # learns the output's shape and dtype once
        self.output = api.empty(probe.shape, probe.dtype)
        self._host_out = api.PinnedBuffer(self.output.nbytes).array(probe.shape, probe.dtype)

    def enqueue(self, stream) -> None:
        from deeplab_trt.runtime.cuda import api

        api.copy_async(self._host_in, self.input.ptr, self.input.nbytes, stream)
        stream.synchronize()
        result = np.asarray(self.backend.infer(self._host_in))
        if result.shape != self.output.shape or result.dtype != self.output.dtype:
            raise ValueError(
                f"{self.name}: output changed from {self.output.shape} {self.output.dtype} "
                f"to {result.shape} {result.dtype}"
            )
        np.copyto(self._host_out, result)
        api.copy_async(self.output.ptr, self._host_out, self.output.nbytes, stream)

    def close(self) -> None:
        pass
