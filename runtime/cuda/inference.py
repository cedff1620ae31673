"""The inference step of the GPU path: device input → model → device output, on a stream.

Why a protocol: the GPU pipeline and :mod:`deeplab_trt.runtime.interop` need only "run the model on this
stream, reading this device tensor and writing that one". TensorRT does that natively
(:class:`deeplab_trt.runtime.backends.tensorrt.TensorRTRunner`); any host backend (ONNX Runtime, or the
TensorRT backend's own host path) can be adapted with :class:`HostBackendInference`, which
lets the very same GPU pipeline run on a GPU machine without TensorRT (one host round trip
per tick, for testing and as a fallback). A torch module can be adapted the same way (the
tests do; the runtime never imports torch).

Contract
--------
``spec``, ``name``; ``input``: a :class:`~deeplab_trt.runtime.cuda.api.DeviceArray` N×3×H×W of the
model's input dtype (preprocessing writes image j at ``input.ptr + j × 3·H·W·itemsize``);
``output``: a DeviceArray with the model's output (N×C×h×w logits or N×H×W labels; image j
at ``output.ptr + j × its per-image bytes``); N, the first dimension of both, is the batch the
next ``enqueue`` runs. ``batch_limits``: ``(min, max)`` batch ``set_batch`` accepts (equal for a
fixed batch, which the caller pads to); ``set_batch(n)``: run batch ``n`` from now on (``input``
and ``output`` are then N=n views; called only when n differs from ``input.shape[0]``, so a
fixed-batch inference may omit it). ``enqueue(stream)``: queue one inference on ``stream`` (may
block the host, e.g. the host adapter); ``capturable``: whether ``enqueue`` may be recorded into
a CUDA graph.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from deeplab_trt.runtime.errors import ToolkitError
from deeplab_trt.runtime.spec import ModelSpec


@runtime_checkable
class DeviceInference(Protocol):
    name: str
    spec: ModelSpec
    input: object  # DeviceArray
    output: object  # DeviceArray
    capturable: bool
    batch_limits: tuple[int, int]

    def set_batch(self, n: int) -> None: ...

    def enqueue(self, stream) -> None: ...

    def close(self) -> None: ...


class HostBackendInference:
    """Any host-side ``Backend`` (``infer(np) -> np``) as a :class:`DeviceInference`.

    ``enqueue`` waits for the stream (the input must be ready), copies the input to pinned
    host memory, runs ``backend.infer``, and queues the output's copy back on the stream.

    ``batch``: the most images one ``enqueue`` carries (the GPU pipeline passes its number of
    streams). A dynamic backend (``fixed_batch`` None) gets buffers for ``batch`` images (at least
    its ``batch_limits`` minimum) and, after ``set_batch(n)``, infers only the first ``n``; a
    fixed-batch backend always infers its ``fixed_batch`` (the caller pads), so ``batch`` beyond it,
    or beyond a dynamic backend's maximum, is an error.
    """

    capturable = False

    def __init__(self, backend, batch: int | None = None):
        from deeplab_trt.runtime.cuda import api

        self.backend = backend
        self.spec: ModelSpec = backend.spec
        self.name = f"{backend.name} (host inference)"
        fixed = backend.fixed_batch
        low, high = backend.batch_limits
        if fixed is not None and batch is not None and batch > fixed:
            raise ToolkitError(f"{backend.name}: the model takes a fixed batch of {fixed}; {batch} images do not fit")
        n = fixed or max(batch or 1, low)
        if high is not None and n > high:
            raise ToolkitError(f"{backend.name}: batch {n} exceeds the model's largest ({high})")
        self.batch_limits = (n, n) if fixed else (low, n)
        dtype = np.dtype(backend.input_dtype)
        shape = (n, 3, self.spec.input_height, self.spec.input_width)
        self._input = api.empty(shape, dtype)
        self._host_in = api.PinnedBuffer(self._input.nbytes).array(shape, dtype)
        self._host_in[...] = 0
        probe = np.asarray(backend.infer(self._host_in))  # learns the output's shape and dtype once
        self._output = api.empty(probe.shape, probe.dtype)
        self._host_out = api.PinnedBuffer(self._output.nbytes).array(probe.shape, probe.dtype)
        self.set_batch(n)

    def set_batch(self, n: int) -> None:
        """Infer the first ``n`` images from now on (``input``/``output`` become N=n views)."""
        lo, hi = self.batch_limits
        if not lo <= n <= hi:
            raise ToolkitError(f"{self.name}: batch {n} is outside {lo}..{hi}")
        self.input = self._view(self._input, n)
        self.output = self._view(self._output, n)

    @staticmethod
    def _view(full, n: int):
        from deeplab_trt.runtime.cuda.api import DeviceArray

        return DeviceArray(full.ptr, (n, *full.shape[1:]), full.dtype, owner=full, device_id=full.device_id)

    def enqueue(self, stream) -> None:
        from deeplab_trt.runtime.cuda import api

        n = self.input.shape[0]
        host_in, host_out = self._host_in[:n], self._host_out[:n]
        api.copy_async(host_in, self.input.ptr, self.input.nbytes, stream)
        stream.synchronize()
        result = np.asarray(self.backend.infer(host_in))
        if result.shape != host_out.shape or result.dtype != host_out.dtype:
            raise ValueError(
                f"{self.name}: output changed from {host_out.shape} {host_out.dtype} to {result.shape} {result.dtype}"
            )
        np.copyto(host_out, result)
        api.copy_async(self.output.ptr, host_out, self.output.nbytes, stream)

    def close(self) -> None:
        pass
