"""TensorRT 10's legacy implicit INT8: an ``IInt8EntropyCalibrator2`` fed by our calibration data.

Why keep it: on TensorRT 10 (JetPack 6) a user may prefer TensorRT's own calibration over the
Q/DQ model; the adapter gives it the same frames through the same preprocessing, and shares
the cache file: a cache written by ``deeplab-trt calibrate --cache`` is read here (TensorRT then
skips calibrating), and a cache TensorRT writes here can be turned into Q/DQ by
``deeplab-trt calibrate --cache FILE`` for TensorRT 11 / RTX.

TensorRT 11 and TensorRT-RTX removed the calibrator API: :func:`make_entropy_calibrator`
says so (a :class:`~deeplab_trt.runtime.errors.ToolkitError`) instead of failing on a missing attribute.

``get_batch`` must return device pointers: batches are copied to one device buffer through the
runtime's CUDA layer (:mod:`deeplab_trt.runtime.cuda.api`, cuda-python), imported only when the first
batch is requested.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from deeplab_trt.calibration.cache import parse_cache
from deeplab_trt.calibration.data import CalibrationData
from deeplab_trt.runtime.atomic import write_bytes_atomic
from deeplab_trt.runtime.errors import ToolkitError
from deeplab_trt.runtime.spec import ModelSpec

log = logging.getLogger(__name__)


class CudaDeviceBuffer:
    """One device allocation (the runtime's :class:`deeplab_trt.runtime.cuda.api.DeviceBuffer`), grown as
    needed; ``upload(array) -> device pointer``, synchronous so TensorRT may read it at once."""

    def __init__(self) -> None:
        self._buf = None

    def upload(self, array: np.ndarray) -> int:
        from deeplab_trt.runtime.cuda import api  # cuda-python only once TensorRT asks for a batch

        array = np.ascontiguousarray(array)
        if self._buf is None or self._buf.nbytes < array.nbytes:
            self.free()
            self._buf = api.DeviceBuffer(array.nbytes)
        api.copy_async(self._buf, array, array.nbytes)
        api.check(api.cudart().cudaStreamSynchronize(0), "cudaStreamSynchronize")
        return self._buf.ptr

    def free(self) -> None:
        if self._buf is not None:
            self._buf.close()
            self._buf = None


def make_entropy_calibrator(
    trt_module,
    data,
    spec: ModelSpec,
    cache_path,
    batch_size: int = 1,
    num: int | None = None,
    *,
    every: int = 1,
    seed: int = 0,
    policy: str = "stretch",
    device=None,
):
    """An ``IInt8EntropyCalibrator2`` for ``trt_module`` (the imported ``tensorrt``).

    ``data``: a :class:`~deeplab_trt.calibration.data.CalibrationData` or the paths/globs to build one
    (with ``num``/``every``/``seed``/``policy``). ``cache_path``: read if it exists (TensorRT
    skips calibration), written when TensorRT produces one. ``device``: object with
    ``upload(array) -> int`` and ``free()`` (default :class:`CudaDeviceBuffer`; tests pass a fake).
    """
    base = getattr(trt_module, "IInt8EntropyCalibrator2", None)
    if base is None:
        version = getattr(trt_module, "__version__", "?")
        raise ToolkitError(
            f"TensorRT {version} ({getattr(trt_module, '__name__', 'tensorrt')}) has no "
            "IInt8EntropyCalibrator2: TensorRT 11 and TensorRT-RTX have no calibrator API; "
            "use explicit quantization ('deeplab-trt calibrate' → Q/DQ ONNX)"
        )
    if batch_size < 1:
        raise ToolkitError(f"calibration batch {batch_size}: must be at least 1")
    if not isinstance(data, CalibrationData):
        sources: Sequence = [data] if isinstance(data, (str, Path)) else list(data)
        data = CalibrationData(sources, spec, num=num, every=every, seed=seed, policy=policy)
    if 0 < len(data) < batch_size:  # full batches only: TensorRT would get no batch at all
        raise ToolkitError(
            f"{len(data)} calibration frame(s), but TensorRT calibrates this model at batch {batch_size}: "
            f"give at least {batch_size} (--data / --num)"
        )
    cache_path = Path(cache_path) if cache_path is not None else None

    class EntropyCalibrator(base):
        """Feeds ``data`` in batches of ``batch_size``; reads/writes ``cache_path``."""

        def __init__(self) -> None:
            base.__init__(self)  # pybind11 classes need the explicit base constructor
            self.data = data
            self.batch_size = batch_size
            self.cache_path = cache_path
            self.device = device if device is not None else CudaDeviceBuffer()
            self._batches = None
            self.batches_served = 0

        def get_batch_size(self) -> int:
            return self.batch_size

        def get_batch(self, names, *args):  # TensorRT passes the input names
            if self._batches is None:
                self._batches = self.data.batches(self.batch_size, drop_last=True)
            batch = next(self._batches, None)
            if batch is None:
                self.device.free()
                return None
            self.batches_served += 1
            return [int(self.device.upload(batch))]

        def read_calibration_cache(self):
            if self.cache_path is None or not self.cache_path.is_file():
                return None
            raw = self.cache_path.read_bytes()
            parse_cache(raw.decode("utf-8", errors="replace"), str(self.cache_path))  # one-line error if bad
            log.info("calibrator: using scales from %s", self.cache_path)
            return raw

        def write_calibration_cache(self, cache) -> None:
            if self.cache_path is None:
                return
            write_bytes_atomic(self.cache_path, bytes(cache))
            log.info("calibrator: wrote %s", self.cache_path)

    return EntropyCalibrator()
