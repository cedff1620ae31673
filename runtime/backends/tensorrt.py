"""TensorRT backend: an engine, one execution context, device I/O buffers allocated once.

Why this shape: TensorRT 10+/RTX's name-based API binds tensors by address
(``set_tensor_address``) and runs on a caller's stream (``execute_async_v3``), so the buffers
are allocated once, bound once, and the GPU pipeline's preprocessing kernel writes the
engine's input buffer directly while the postprocessing kernels read its output buffer: no
host round trip. Dynamic batch engines get ``set_input_shape`` (and the output shape read
back) only when the batch changes.

Two faces:

* :class:`TensorRTRunner`: the device-side :class:`~deeplab_trt.runtime.cuda.inference.DeviceInference`
  used by ``deeplab_trt.runtime.gpu_pipeline`` and :mod:`deeplab_trt.runtime.interop`.
* :class:`TensorRTBackend`: the host-array ``Backend`` contract of :mod:`deeplab_trt.runtime.backends.base`
  (``infer(np) -> np`` through pinned staging buffers), with ``pipeline = "gpu"`` so
  ``deeplab-trt run`` drives it with the GPU pipeline.

CUDA graphs: TensorRT allows capturing ``execute_async_v3`` for fixed shapes once it has been
called once outside the capture (which flushes deferred shape/allocation work), on a
non-default stream. :attr:`TensorRTRunner.capturable` says whether that is allowed here
(TensorRT-RTX answers through ``is_stream_capturable``; engines that allocate at run time
refuse). TensorRT-RTX engines are capturable only when built with
``BuilderFlag.REQUIRE_USER_ALLOCATION`` (``deeplab-trt build`` sets it and records
``user_allocation``); for one built without, :attr:`TensorRTRunner.graph_refusal` says so in one
line and the GPU pipeline refuses ``cuda_graph=True`` with it rather than ignoring it.

TensorRT-RTX runtime cache: with ``runtime_cache`` (a file), the context is created from an
``IRuntimeConfig`` holding an ``IRuntimeCache`` loaded from that file, and the cache is saved
back at :meth:`TensorRTRunner.close` (:mod:`deeplab_trt.runtime.rtx_runtime_cache`), so the
kernels RTX compiles just in time are compiled once, not at every start.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from deeplab_trt.runtime.backends.base import BackendBase
from deeplab_trt.runtime.errors import ToolkitError
from deeplab_trt.runtime.rtx_runtime_cache import RuntimeCache, cache_file, default_dir
from deeplab_trt.runtime.spec import ModelSpec

log = logging.getLogger(__name__)


def _nptype(trt: Any, dtype: Any) -> np.dtype:
    try:
        return np.dtype(trt.nptype(dtype))
    except Exception as exc:  # noqa: BLE001 - e.g. BF16/FP8 have no numpy type (TypeError/KeyError by version)
        raise ToolkitError(
            f"engine tensor type {dtype} has no numpy equivalent; rebuild with float32/float16 I/O"
        ) from exc


class TensorRTRunner:
    """Execution context + bound device buffers + the stream it runs on.

    ``batch``: the largest batch to allocate for (dynamic engines: capped by the profile's
    maximum; default: the profile's minimum; the GPU video pipeline grows it, once, to its number
    of streams). The input buffer is written by the preprocessing kernel (image j at j images'
    offset), the output buffer read by the postprocessing kernels.

    ``runtime_cache``: a TensorRT-RTX runtime cache file, loaded now and saved at :meth:`close`
    (None: no cache; ignored by engines without ``create_runtime_config``).
    ``capture_needs_user_allocation`` / ``user_allocation``: the flavour's fact and the engine
    record's ``user_allocation`` (see :attr:`graph_refusal`).
    """

    def __init__(
        self,
        engine: Any,
        spec: ModelSpec,
        trt: Any,
        *,
        batch: int | None = None,
        device_index: int = 0,
        name: str = "TensorRT",
        source: str = "engine",
        runtime_cache: str | Path | None = None,
        capture_needs_user_allocation: bool = False,
        user_allocation: bool | None = None,
    ):
        from deeplab_trt.runtime.cuda import api

        self.device = api.use_device(device_index)  # also what IRuntimeCache.deserialize needs: a current context
        self.engine = engine
        self.spec = spec
        self.trt = trt
        self.name = name
        self.source = source
        self.capture_needs_user_allocation = capture_needs_user_allocation
        self.user_allocation = user_allocation
        self.runtime_cache: RuntimeCache | None = None
        if runtime_cache is not None and hasattr(engine, "create_runtime_config"):
            self.runtime_cache = RuntimeCache(engine, runtime_cache, source=source)
            self.context = engine.create_execution_context(runtime_config=self.runtime_cache.config)
        else:
            self.context = engine.create_execution_context()
        if self.context is None:
            raise ToolkitError(f"{source}: create_execution_context failed (not enough GPU memory?)")
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1:
            raise ToolkitError(
                f"{source}: expected one input tensor, the engine has {len(inputs)} ({', '.join(inputs)})"
            )
        if not outputs:
            raise ToolkitError(f"{source}: the engine has no output tensor")
        self.input_name = inputs[0]
        self.output_name = spec.output_name if spec.output_name in outputs else outputs[0]
        self.input_dtype = _nptype(trt, engine.get_tensor_dtype(self.input_name))
        if self.input_dtype not in (np.dtype(np.float32), np.dtype(np.float16)):
            raise ToolkitError(
                f"{source}: input {self.input_name!r} is {self.input_dtype}; the preprocessing "
                "kernel writes float32 or float16"
            )
        shape = tuple(int(d) for d in engine.get_tensor_shape(self.input_name))
        if len(shape) != 4 or shape[1] != 3:
            raise ToolkitError(f"{source}: input {self.input_name!r} has shape {shape}, expected N×3×H×W")
        if shape[2] not in (-1, spec.input_height) or shape[3] not in (-1, spec.input_width):
            raise ToolkitError(
                f"{source}: input shape {shape} disagrees with the model spec ({spec.input_height}×{spec.input_width})"
            )
        self.dynamic = any(d < 0 for d in shape)
        if self.dynamic:
            lo, _opt, hi = (tuple(int(d) for d in s) for s in engine.get_tensor_profile_shape(self.input_name, 0))
            self.min_batch, self.max_batch = lo[0], hi[0]
            if (lo[2], lo[3]) != (hi[2], hi[3]):
                raise ToolkitError(f"{source}: dynamic spatial size is not supported (profile {lo} .. {hi})")
            alloc = min(max(batch or 1, self.min_batch), self.max_batch)
        else:
            self.min_batch = self.max_batch = alloc = shape[0]
        self.fixed_batch = None if self.dynamic else shape[0]

        # Allocate every I/O tensor once, at the largest batch we will use, and bind it.
        self._buffers: dict[str, Any] = {}
        self.outputs = outputs
        self.output_dtype = _nptype(trt, engine.get_tensor_dtype(self.output_name))
        self.capacity = 0
        self.batch = 0
        self._allocate(alloc)
        self.set_batch(self.min_batch if self.dynamic else alloc)  # the smallest the profile allows (1 as a rule)

    # ---- binding and shapes ---------------------------------------------------------------
    def _allocate(self, n: int) -> None:
        """(Re)allocate and bind every I/O buffer for batch ``n``. Not while a graph holds the old ones."""
        from deeplab_trt.runtime.cuda import api

        hw = (self.spec.input_height, self.spec.input_width)
        if self.dynamic:
            self._set_shape((n, 3, *hw))
        for buf in self._buffers.values():
            buf.close()
        self._buffers.clear()
        self._bind(self.input_name, api.DeviceBuffer(n * 3 * hw[0] * hw[1] * self.input_dtype.itemsize))
        for out in self.outputs:
            out_shape = tuple(int(d) for d in self.context.get_tensor_shape(out))
            if any(d < 0 for d in out_shape):
                raise ToolkitError(
                    f"{self.source}: output {out!r} has a data-dependent shape {out_shape}; not supported"
                )
            nbytes = int(np.prod(out_shape)) * _nptype(self.trt, self.engine.get_tensor_dtype(out)).itemsize
            self._bind(out, api.DeviceBuffer(nbytes))
        self.capacity = n
        self.batch = n
        self._refresh_views()

    def _bind(self, name: str, buffer) -> None:
        self._buffers[name] = buffer
        if not self.context.set_tensor_address(name, buffer.ptr):
            raise ToolkitError(f"{self.source}: set_tensor_address({name!r}) failed")

    def _set_shape(self, shape: tuple[int, ...]) -> None:
        if not self.context.set_input_shape(self.input_name, shape):
            raise ToolkitError(
                f"{self.source}: set_input_shape({self.input_name!r}, {shape}) failed "
                f"(profile allows batch {self.min_batch}..{self.max_batch})"
            )

    def _refresh_views(self) -> None:
        from deeplab_trt.runtime.cuda.api import DeviceArray

        in_shape = (self.batch, 3, self.spec.input_height, self.spec.input_width)
        out_shape = tuple(int(d) for d in self.context.get_tensor_shape(self.output_name))
        in_buf = self._buffers[self.input_name]
        self.input = DeviceArray(in_buf.ptr, in_shape, self.input_dtype, owner=in_buf, device_id=in_buf.device_id)
        out_buf = self._buffers[self.output_name]
        self.output = DeviceArray(out_buf.ptr, out_shape, self.output_dtype, owner=out_buf, device_id=out_buf.device_id)

    @property
    def batch_limits(self) -> tuple[int, int]:
        """(min, max) batch :meth:`set_batch` accepts: the profile's range, or the fixed batch twice."""
        return self.min_batch, self.max_batch

    def set_batch(self, n: int) -> None:
        """Use batch ``n`` from now on (dynamic engines: ``set_input_shape``; buffers stay bound,
        and grow, re-bound, only when ``n`` exceeds what was allocated)."""
        if n == self.batch:
            return
        if not self.dynamic:
            raise ToolkitError(f"{self.source}: the engine takes a fixed batch of {self.fixed_batch}, got {n}")
        if not self.min_batch <= n <= self.max_batch:
            raise ToolkitError(
                f"{self.source}: batch {n} is outside the engine's profile ({self.min_batch}..{self.max_batch})"
            )
        if n > self.capacity:
            self._allocate(n)
            return
        self._set_shape((n, 3, self.spec.input_height, self.spec.input_width))
        self.batch = n
        self._refresh_views()

    # ---- running --------------------------------------------------------------------------
    def enqueue(self, stream) -> None:
        """Queue one inference on ``stream`` (non-default stream, as TensorRT recommends)."""
        if not self.context.execute_async_v3(int(stream.handle if hasattr(stream, "handle") else stream)):
            raise ToolkitError(f"{self.source}: execute_async_v3 failed (see the TensorRT log with --verbose)")

    @property
    def graph_refusal(self) -> str | None:
        """Why ``cuda_graph=True`` cannot work with this engine at all (one line), or None.

        TensorRT-RTX engines built without ``REQUIRE_USER_ALLOCATION`` may allocate while they
        run, which a stream capture cannot record.
        """
        if self.capture_needs_user_allocation and not self.user_allocation:
            how = "was built without it" if self.user_allocation is False else "does not record it (an older build)"
            return (
                f"{self.source}: CUDA graphs need a TensorRT-RTX engine built with REQUIRE_USER_ALLOCATION; this one "
                f"{how}: rebuild it with 'deeplab-trt build', or run without cuda_graph"
            )
        return None

    @property
    def capturable(self) -> bool:
        """Whether ``enqueue`` may be captured into a CUDA graph on the pipeline's stream."""
        if self.graph_refusal is not None:
            return False
        check = getattr(self.context, "is_stream_capturable", None)
        if check is None:
            return True  # TensorRT 10/11: capturable for static shapes after one eager run
        try:
            from deeplab_trt.runtime.cuda.api import Stream

            probe = Stream()
            try:
                return bool(check(probe.handle))
            finally:
                probe.close()
        except Exception as exc:  # noqa: BLE001 - an API that cannot answer means "do not capture"
            log.debug("is_stream_capturable failed: %s", exc)
            return False

    def close(self) -> None:
        if self.runtime_cache is not None and self.context is not None:
            self.runtime_cache.save()  # what RTX compiled while running, for the next start
        for buf in self._buffers.values():
            buf.close()
        self._buffers.clear()
        self.context = None


class TensorRTBackend(BackendBase):
    """The ``Backend`` contract over a :class:`TensorRTRunner` (host arrays in and out)."""

    pipeline = "gpu"

    def __init__(
        self,
        loaded,
        *,
        device_index: int = 0,
        batch: int | None = None,
        runtime_cache: bool | str | Path = True,
    ):
        """Args:
        loaded: :func:`~deeplab_trt.runtime.engine_loader.load_engine`'s answer.
        device_index: the CUDA device.
        batch: the largest batch to allocate for.
        runtime_cache: TensorRT-RTX runtime cache: True (a file under the toolkit's cache
            directory), a directory to keep it in, or False (off: kernels compile at every start).
        """
        from deeplab_trt.runtime.cuda import api

        self.loaded = loaded
        self.path = Path(loaded.path)
        self.spec = loaded.spec
        info = api.use_device(device_index)
        self.device_index = device_index
        self.name = f"{loaded.flavour.label} ({info.name})"
        flavour, record = loaded.flavour, getattr(loaded, "record", None)
        self.runner = TensorRTRunner(
            loaded.engine,
            loaded.spec,
            flavour.module,
            batch=batch,
            device_index=device_index,
            name=self.name,
            source=str(self.path),
            runtime_cache=_runtime_cache_file(runtime_cache, flavour, record, info),
            capture_needs_user_allocation=bool(getattr(flavour, "capture_needs_user_allocation", False)),
            user_allocation=getattr(record, "user_allocation", None),
        )
        self.input_dtype = self.runner.input_dtype
        self.fixed_batch = self.runner.fixed_batch
        self.stream = api.Stream()
        self._staging: dict[str, Any] = {}

    @property
    def batch_limits(self) -> tuple[int, int | None]:
        """The engine's profile (or its fixed batch): what one inference may take."""
        return (self.runner.min_batch, self.runner.max_batch)

    def _pinned(self, key: str, shape, dtype) -> np.ndarray:
        from deeplab_trt.runtime.cuda import api

        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        buf = self._staging.get(key)
        if buf is None or buf.nbytes < nbytes:
            buf = api.PinnedBuffer(nbytes)
            self._staging[key] = buf
        return buf.array(shape, dtype)

    def infer(self, batch: np.ndarray) -> np.ndarray:
        from deeplab_trt.runtime.cuda import api

        batch = self.check_batch(batch)
        api.use_device(self.device_index, recheck=True)  # callers may be on any thread (Segmenter, servers)
        self.runner.set_batch(batch.shape[0])
        host_in = self._pinned("in", batch.shape, batch.dtype)
        np.copyto(host_in, batch)
        out = self.runner.output
        host_out = self._pinned("out", out.shape, out.dtype)
        api.copy_async(self.runner.input.ptr, host_in, host_in.nbytes, self.stream)
        self.runner.enqueue(self.stream)
        api.copy_async(host_out, out.ptr, out.nbytes, self.stream)
        self.stream.synchronize()
        return host_out.copy()

    def close(self) -> None:
        if getattr(self, "runner", None) is not None:
            self.stream.synchronize()
            self.runner.close()
            del self.runner  # the class default (None) shows it is closed
            self.stream.close()


def _runtime_cache_file(choice: bool | str | Path, flavour: Any, record: Any, info: Any) -> Path | None:
    """The runtime cache file for this engine on this GPU, or None (off, no RTX cache, no engine sha256)."""
    if choice is False or not getattr(flavour, "has_runtime_cache", False):
        return None
    sha = getattr(getattr(record, "engine", None), "sha256", None)
    if not sha:
        return None
    directory = default_dir() if choice is True else Path(choice).expanduser()
    return cache_file(
        directory,
        engine_sha256=sha,
        version=flavour.version_string,
        compute_capability=tuple(info.compute_capability),
        gpu_name=info.name,
    )


def open_engine(
    path: str | Path,
    *,
    device: int = 0,
    batch: int | None = None,
    verbose: bool = False,
    runtime_cache: bool | str | Path = True,
    **ignored,
) -> TensorRTBackend:
    """``open_backend``'s entry point for ``.engine``/``.plan`` files (sidecar checked first).

    Args:
        path: the engine file.
        device: the CUDA device.
        batch: the largest batch to allocate for.
        verbose: TensorRT's log at verbose level.
        runtime_cache: TensorRT-RTX runtime cache (see :class:`TensorRTBackend`); False: off.
    """
    from deeplab_trt.runtime.engine_loader import load_engine

    if ignored:
        log.debug("TensorRT backend ignores options %s", sorted(ignored))
    loaded = load_engine(path, verbose=verbose)
    return TensorRTBackend(loaded, device_index=device, batch=batch, runtime_cache=runtime_cache)
