"""The CUDA host layer on cuda-python: devices, memory, streams, events, graphs.

Why a layer of our own: cuda-python returns ``(error, value...)`` tuples that are easy to
ignore; here every call goes through :func:`check`, which turns any failure into a
:class:`CudaError` naming the call (``cudaMalloc failed: cudaErrorMemoryAllocation (out of
memory)``). The objects are small owners with ``close()``/context managers, and the typed
views (:class:`DeviceArray`) speak ``__cuda_array_interface__`` v3 and DLPack so torch, CuPy
and pycuda take them without copies.

cuda-python is imported lazily: ``import deeplab_trt.runtime.cuda.api`` works without it (and without a
GPU); the first call that needs CUDA raises a :class:`CudaError` saying what is missing.

Memory kinds:

* :class:`DeviceBuffer`  ``cudaMalloc``.
* :class:`PinnedBuffer`  ``cudaHostAlloc``; with ``mapped=True`` (``cudaHostAllocMapped``) the
  GPU reads it in place through ``cudaHostGetDevicePointer``: on an integrated GPU (Jetson,
  ``cudaDevAttrIntegrated``) host and device memory are the same DRAM, so that *is* zero copy.

Kernel launches use the driver API (``cuModuleLoadData``/``cuLaunchKernel``) on the runtime's
primary context, which :func:`use_device` makes current for the calling thread (every thread
that launches must call it once).
"""

from __future__ import annotations

import functools
import threading
import weakref
from dataclasses import dataclass
from typing import Any

import numpy as np

from deeplab_trt.runtime.errors import ToolkitError


class CudaError(ToolkitError):
    """A failed CUDA call (or a missing CUDA stack), with the call's name in the message."""

    def __init__(self, message: str, call: str = "", code: int | None = None, name: str = ""):
        super().__init__(message)
        self.call = call
        self.code = code
        self.name = name


# ----------------------------------------------------------------------------------------------
# lazy imports
#: Which extra to install: the bindings' CUDA major must match the driver's (12.x bindings on JetPack 6).
INSTALL_HINT = (
    "(pip install 'deeplab-trt[cuda12]' for a CUDA 12 driver such as JetPack 6, 'deeplab-trt[cuda13]' for CUDA 13)"
)


# ----------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def cudart():
    """``cuda.bindings.runtime`` (cudart), imported on first use."""
    try:
        from cuda.bindings import runtime
    except ImportError as exc:
        raise CudaError(f"cuda-python is not installed: the GPU path needs it {INSTALL_HINT}") from exc
    return runtime


_driver_lock = threading.Lock()
_driver_ready = False


def driver():
    """``cuda.bindings.driver``, initialised (``cuInit``) on first use; a missing driver is a CudaError."""
    global _driver_ready
    try:
        from cuda.bindings import driver as drv
    except ImportError as exc:
        raise CudaError(f"cuda-python is not installed: the GPU path needs it {INSTALL_HINT}") from exc
    if not _driver_ready:
        with _driver_lock:
            if not _driver_ready:
                try:
                    result = drv.cuInit(0)
                except Exception as exc:  # cuda.pathfinder raises when libcuda.so is absent  # noqa: BLE001
                    raise CudaError(f"cuInit failed: no NVIDIA driver ({exc})", "cuInit") from exc
                check(result, "cuInit")
                _driver_ready = True
    return drv


# ----------------------------------------------------------------------------------------------
# error checking
# ----------------------------------------------------------------------------------------------
def _describe(err) -> tuple[str, str]:
    """(name, description) of a cudaError_t / CUresult / nvrtcResult."""
    kind = type(err).__name__
    try:
        if kind == "cudaError_t":
            rt = cudart()
            return rt.cudaGetErrorName(err)[1].decode(), rt.cudaGetErrorString(err)[1].decode()
        if kind == "CUresult":
            from cuda.bindings import driver as drv

            try:
                name = drv.cuGetErrorName(err)[1]
                text = drv.cuGetErrorString(err)[1]
                return name.decode(), text.decode()
            except Exception:  # noqa: BLE001
                return getattr(err, "name", str(err)), ""
        if kind == "nvrtcResult":
            from cuda.bindings import nvrtc

            return getattr(err, "name", str(err)), nvrtc.nvrtcGetErrorString(err)[1].decode()
    except Exception:  # noqa: BLE001
        pass
    return getattr(err, "name", str(err)), ""


def check(result: Any, call: str):
    """Unwrap a cuda-python result: ``(err, *values)`` or ``err``; raise :class:`CudaError` on failure.

    Returns None, the single value, or the tuple of values.
    """
    if isinstance(result, tuple):
        err, values = result[0], result[1:]
    else:
        err, values = result, ()
    if int(err) != 0:
        name, text = _describe(err)
        hint = ""
        if name in ("cudaErrorInsufficientDriver", "cudaErrorNoDevice", "CUDA_ERROR_NO_DEVICE"):
            hint = " (no usable CUDA GPU/driver on this machine)"
        raise CudaError(f"{call} failed: {name}{f' ({text})' if text else ''}{hint}", call, int(err), name)
    if not values:
        return None
    return values[0] if len(values) == 1 else values


# ----------------------------------------------------------------------------------------------
# devices
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DeviceInfo:
    index: int
    name: str
    compute_capability: tuple[int, int]
    integrated: bool  # cudaDevAttrIntegrated: shares DRAM with the CPU (Jetson)
    can_map_host_memory: bool  # cudaDevAttrCanMapHostMemory
    unified_addressing: bool  # cudaDevAttrUnifiedAddressing
    total_memory: int
    multiprocessors: int
    driver_version: int  # e.g. 13000
    runtime_version: int

    @property
    def arch(self) -> str:
        return f"sm_{self.compute_capability[0]}{self.compute_capability[1]}"

    @property
    def zero_copy(self) -> bool:
        """Frames in mapped pinned memory can be read by kernels in place at full speed."""
        return self.integrated and self.can_map_host_memory

    def describe(self) -> str:
        kind = "integrated" if self.integrated else "discrete"
        return (
            f"{self.name} ({self.arch}, {kind}, {self.total_memory / 2**30:.1f} GiB, "
            f"{self.multiprocessors} SMs, driver {self.driver_version // 1000}.{self.driver_version % 1000 // 10})"
        )


def device_count() -> int:
    """Number of CUDA devices; 0 without a driver or device (never raises for that)."""
    rt = cudart()
    err, count = rt.cudaGetDeviceCount()
    return int(count) if int(err) == 0 else 0


@functools.cache
def device_info(index: int = 0) -> DeviceInfo:
    rt = cudart()
    attr = rt.cudaDeviceAttr

    def get(a) -> int:
        return int(check(rt.cudaDeviceGetAttribute(a, index), f"cudaDeviceGetAttribute({a.name})"))

    props = check(rt.cudaGetDeviceProperties(index), "cudaGetDeviceProperties")
    name = props.name.decode(errors="replace").rstrip("\0") if isinstance(props.name, bytes) else str(props.name)
    return DeviceInfo(
        index=index,
        name=name,
        compute_capability=(get(attr.cudaDevAttrComputeCapabilityMajor), get(attr.cudaDevAttrComputeCapabilityMinor)),
        integrated=bool(get(attr.cudaDevAttrIntegrated)),
        can_map_host_memory=bool(get(attr.cudaDevAttrCanMapHostMemory)),
        unified_addressing=bool(get(attr.cudaDevAttrUnifiedAddressing)),
        total_memory=int(props.totalGlobalMem),
        multiprocessors=get(attr.cudaDevAttrMultiProcessorCount),
        driver_version=int(check(rt.cudaDriverGetVersion(), "cudaDriverGetVersion")),
        runtime_version=int(check(rt.cudaRuntimeGetVersion(), "cudaRuntimeGetVersion")),
    )


def driver_mismatch(driver_version: int, runtime_version: int) -> str | None:
    """Why the bindings cannot run on this driver, naming the extra to install; None when they can.

    Why: CUDA runs a runtime on any driver of the same or a newer major (minor-version compatibility),
    so cuda-python 13 on JetPack 6's CUDA 12.6 driver fails every call with "driver version is
    insufficient". ``driver_version`` 0 means no driver at all: not a mismatch.

    Args:
        driver_version: ``cudaDriverGetVersion`` (e.g. 12060).
        runtime_version: ``cudaRuntimeGetVersion`` of the installed bindings (e.g. 13040).
    """
    if driver_version <= 0 or driver_version // 1000 >= runtime_version // 1000:
        return None
    if driver_version // 1000 < 12:  # there are no bindings extras below CUDA 12
        return f"the CUDA driver is {_version(driver_version)}: deeplab-trt needs a CUDA 12 or 13 driver"
    return (
        f"the CUDA driver is {_version(driver_version)} but the installed cuda-python is built for CUDA "
        f"{_version(runtime_version)}: pip install 'deeplab-trt[cuda{driver_version // 1000}]' "
        f"(bindings for the driver's CUDA {driver_version // 1000}), or update the driver"
    )


def _version(code: int) -> str:
    return f"{code // 1000}.{code % 1000 // 10}"


def check_driver_matches_bindings() -> None:
    """Raise the one-line mismatch message where the driver is older than the bindings' CUDA major."""
    rt = cudart()
    err, drv = rt.cudaDriverGetVersion()
    err2, run = rt.cudaRuntimeGetVersion()
    if int(err) == 0 and int(err2) == 0:
        message = driver_mismatch(int(drv), int(run))
        if message:
            raise CudaError(message, "cudaDriverGetVersion")


_current = threading.local()


def use_device(index: int = 0, *, recheck: bool = False) -> DeviceInfo:
    """Make device ``index``'s primary context current for this thread (idempotent, cheap).

    Args:
        index: the CUDA device ordinal.
        recheck: also ask cudart (``cudaGetDevice``, ~1 µs) whether code outside this module
            (``torch.cuda.set_device``, CuPy's ``Device.use``) switched this thread's device since.
    """
    if getattr(_current, "index", None) != index or (recheck and _runtime_device() != index):
        rt = cudart()
        count = device_count()
        if index >= count:
            check_driver_matches_bindings()  # the commonest reason on Jetson: 13.x bindings, 12.x driver
            # Ask for the real reason (no driver, no device) through a checked call.
            check(rt.cudaGetDeviceCount(), "cudaGetDeviceCount")
            raise CudaError(f"CUDA device {index} does not exist ({count} device(s) found)", "cudaSetDevice")
        check(rt.cudaSetDevice(index), "cudaSetDevice")
        check(rt.cudaFree(0), "cudaFree(0)")  # forces primary-context creation, so driver calls see it
        _current.index = index
    return device_info(index)


def current_device() -> DeviceInfo:
    index = getattr(_current, "index", None)
    if index is None:
        index = int(check(cudart().cudaGetDevice(), "cudaGetDevice"))
        return use_device(index)
    return device_info(index)


def _runtime_device() -> int:
    """The device cudart allocates on for this thread (``cudaGetDevice``), without side effects."""
    return int(check(cudart().cudaGetDevice(), "cudaGetDevice"))


def synchronize_device() -> None:
    check(cudart().cudaDeviceSynchronize(), "cudaDeviceSynchronize")


def memory_info() -> tuple[int, int]:
    """(free, total) bytes on the current device."""
    free, total = check(cudart().cudaMemGetInfo(), "cudaMemGetInfo")
    return int(free), int(total)


# ----------------------------------------------------------------------------------------------
# streams, events, graphs
# ----------------------------------------------------------------------------------------------
class _Closable:
    """``with`` support for objects whose ``close()`` releases a CUDA resource."""

    def close(self) -> None:  # pragma: no cover - every subclass defines it
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Stream(_Closable):
    """A non-blocking CUDA stream (does not serialise with the legacy default stream)."""

    def __init__(self, non_blocking: bool = True):
        rt = cudart()
        flags = rt.cudaStreamNonBlocking if non_blocking else rt.cudaStreamDefault
        self._stream = check(rt.cudaStreamCreateWithFlags(flags), "cudaStreamCreateWithFlags")
        self.handle = int(self._stream)
        self._finalizer = weakref.finalize(self, _destroy, "cudaStreamDestroy", self._stream)

    def __int__(self) -> int:
        return self.handle

    def synchronize(self) -> None:
        check(cudart().cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")

    def wait(self, event: Event) -> None:
        """Later work on this stream waits for ``event`` (GPU-side; the host does not block)."""
        check(cudart().cudaStreamWaitEvent(self._stream, event._event, 0), "cudaStreamWaitEvent")

    def record(self, event: Event | None = None) -> Event:
        event = event or Event()
        event.record(self)
        return event

    def capture(self) -> GraphCapture:
        """``with stream.capture() as graph: ...`` records the work into a CUDA graph."""
        return GraphCapture(self)

    def close(self) -> None:
        if self._stream is not None:
            self._finalizer.detach()
            check(cudart().cudaStreamDestroy(self._stream), "cudaStreamDestroy")
            self._stream = None


class Event:
    """A CUDA event: ordering between streams and, with ``timing=True``, GPU timestamps."""

    def __init__(self, timing: bool = True, blocking_sync: bool = False):
        rt = cudart()
        flags = rt.cudaEventDefault if timing else rt.cudaEventDisableTiming
        if blocking_sync:  # host waits sleep instead of spinning (saves a CPU core on Jetson)
            flags |= rt.cudaEventBlockingSync
        self._event = check(rt.cudaEventCreateWithFlags(flags), "cudaEventCreateWithFlags")
        self.timing = timing
        self._finalizer = weakref.finalize(self, _destroy, "cudaEventDestroy", self._event)

    def record(self, stream: Stream) -> Event:
        check(cudart().cudaEventRecord(self._event, stream._stream), "cudaEventRecord")
        return self

    def synchronize(self) -> None:
        check(cudart().cudaEventSynchronize(self._event), "cudaEventSynchronize")

    def query(self) -> bool:
        """True when all work before the event has completed."""
        rt = cudart()
        err = rt.cudaEventQuery(self._event)
        err = err[0] if isinstance(err, tuple) else err
        if err == rt.cudaError_t.cudaErrorNotReady:
            return False
        check(err, "cudaEventQuery")
        return True

    def elapsed_ms(self, end: Event) -> float:
        """Milliseconds from this event to ``end`` (both recorded and completed)."""
        return float(check(cudart().cudaEventElapsedTime(self._event, end._event), "cudaEventElapsedTime"))

    def close(self) -> None:
        if self._event is not None:
            self._finalizer.detach()
            check(cudart().cudaEventDestroy(self._event), "cudaEventDestroy")
            self._event = None


class GraphCapture:
    """Stream capture into an instantiated CUDA graph (``cudaStreamBeginCapture`` … ``EndCapture``).

    Thread-local capture mode: other threads may keep making CUDA calls while one thread
    captures. The graph replays the same kernels with the same arguments and pointers: only
    for fixed shapes and buffers allocated once.
    """

    def __init__(self, stream: Stream):
        self.stream = stream
        self._graph = None
        self._exec = None

    def __enter__(self) -> GraphCapture:
        rt = cudart()
        check(
            rt.cudaStreamBeginCapture(self.stream._stream, rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal),
            "cudaStreamBeginCapture",
        )
        return self

    def __exit__(self, exc_type, exc, tb):
        rt = cudart()
        result = rt.cudaStreamEndCapture(self.stream._stream)
        if exc_type is not None:  # capture aborted: end it, drop what was recorded, keep the original error
            if int(result[0]) == 0 and result[1] is not None:
                rt.cudaGraphDestroy(result[1])
            return False
        self._graph = check(result, "cudaStreamEndCapture")
        self._exec = check(rt.cudaGraphInstantiate(self._graph, 0), "cudaGraphInstantiate")
        return False

    def launch(self, stream: Stream | None = None) -> None:
        if self._exec is None:
            raise CudaError("cudaGraphLaunch: the graph was not captured", "cudaGraphLaunch")
        check(cudart().cudaGraphLaunch(self._exec, (stream or self.stream)._stream), "cudaGraphLaunch")

    def close(self) -> None:
        rt = cudart()
        if self._exec is not None:
            check(rt.cudaGraphExecDestroy(self._exec), "cudaGraphExecDestroy")
            self._exec = None
        if self._graph is not None:
            check(rt.cudaGraphDestroy(self._graph), "cudaGraphDestroy")
            self._graph = None


# ----------------------------------------------------------------------------------------------
# memory
# ----------------------------------------------------------------------------------------------
def _stream_handle(stream: Stream | int | None):
    if stream is None:
        return 0
    return stream._stream if isinstance(stream, Stream) else stream


def _address(x) -> int:
    """Address of a pointer-like: int, buffer/array object with ``.ptr``, or a numpy array."""
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, np.ndarray):
        return int(x.ctypes.data)
    if hasattr(x, "ptr"):
        return int(x.ptr)
    raise TypeError(f"not a pointer: {type(x).__name__}")


def copy_async(dst, src, nbytes: int, stream: Stream | int | None = None) -> None:
    """``cudaMemcpyAsync`` with ``cudaMemcpyDefault`` (direction from unified addressing).

    Host memory must be pinned for the copy to be asynchronous; pageable host memory works
    but the call then returns only after the copy.
    """
    rt = cudart()
    check(
        rt.cudaMemcpyAsync(
            _address(dst), _address(src), int(nbytes), rt.cudaMemcpyKind.cudaMemcpyDefault, _stream_handle(stream)
        ),
        "cudaMemcpyAsync",
    )


def copy_2d_async(
    dst, dst_pitch: int, src, src_pitch: int, width_bytes: int, height: int, stream: Stream | int | None = None
) -> None:
    """``cudaMemcpy2DAsync``: ``height`` rows of ``width_bytes`` between pitched buffers."""
    rt = cudart()
    check(
        rt.cudaMemcpy2DAsync(
            _address(dst),
            int(dst_pitch),
            _address(src),
            int(src_pitch),
            int(width_bytes),
            int(height),
            rt.cudaMemcpyKind.cudaMemcpyDefault,
            _stream_handle(stream),
        ),
        "cudaMemcpy2DAsync",
    )


def memset_async(dst, value: int, nbytes: int, stream: Stream | int | None = None) -> None:
    check(cudart().cudaMemsetAsync(_address(dst), int(value), int(nbytes), _stream_handle(stream)), "cudaMemsetAsync")


class DeviceBuffer(_Closable):
    """``nbytes`` of device memory (``cudaMalloc``); freed by :meth:`close` or garbage collection."""

    def __init__(self, nbytes: int):
        self.nbytes = int(nbytes)
        # cudaMalloc allocates on the calling thread's current device: remember which, so the views
        # report the real ordinal in ``__dlpack_device__`` (not 0 after ``use_device(1)``).
        self.device_id = _runtime_device()
        self.ptr = int(check(cudart().cudaMalloc(max(self.nbytes, 1)), "cudaMalloc"))
        self._finalizer = weakref.finalize(self, _free_device, self.ptr)

    def array(self, shape, dtype, offset: int = 0) -> DeviceArray:
        """A typed C-contiguous view (shares memory, keeps this buffer alive)."""
        view = DeviceArray(self.ptr + offset, shape, dtype, owner=self, device_id=self.device_id)
        if offset + view.nbytes > self.nbytes:
            raise ValueError(f"view of {view.nbytes} bytes at offset {offset} exceeds the {self.nbytes}-byte buffer")
        return view

    @property
    def __cuda_array_interface__(self) -> dict:
        """The raw bytes (1-D uint8); use :meth:`array` for a typed view."""
        return self.array((self.nbytes,), np.uint8).__cuda_array_interface__

    def close(self) -> None:
        self._finalizer()


def _destroy(call: str, handle) -> None:
    """Finalizer for streams/events not closed explicitly (best effort, also at interpreter exit)."""
    try:
        getattr(cudart(), call)(handle)
    except Exception:  # noqa: BLE001
        pass


def _free_device(ptr: int) -> None:
    try:
        cudart().cudaFree(ptr)
    except Exception:  # interpreter shutdown  # noqa: BLE001
        pass


def _free_host(ptr: int) -> None:
    try:
        cudart().cudaFreeHost(ptr)
    except Exception:  # noqa: BLE001
        pass


class _HostView:
    """Exposes raw host memory to numpy via ``__array_interface__`` and keeps its owner alive."""

    def __init__(self, ptr: int, shape, dtype, owner):
        self.__array_interface__ = {
            "data": (ptr, False),
            "shape": tuple(shape),
            "typestr": np.dtype(dtype).str,
            "version": 3,
        }
        self.owner = owner


class PinnedBuffer(_Closable):
    """Page-locked host memory (``cudaHostAlloc``).

    ``mapped=True`` adds ``cudaHostAllocMapped``: :attr:`device_ptr` (``cudaHostGetDevicePointer``)
    lets kernels read/write it directly: zero copy on integrated GPUs, PCIe reads on discrete ones.
    ``write_combined=True`` makes host writes faster and host reads very slow (upload-only buffers).
    """

    def __init__(self, nbytes: int, mapped: bool = False, write_combined: bool = False):
        rt = cudart()
        flags = rt.cudaHostAllocPortable
        if mapped:
            flags |= rt.cudaHostAllocMapped
        if write_combined:
            flags |= rt.cudaHostAllocWriteCombined
        self.nbytes = int(nbytes)
        self.mapped = mapped
        self.ptr = int(check(rt.cudaHostAlloc(max(self.nbytes, 1), flags), "cudaHostAlloc"))
        self._finalizer = weakref.finalize(self, _free_host, self.ptr)
        self.device_ptr: int | None = None
        if mapped:
            self.device_ptr = int(check(rt.cudaHostGetDevicePointer(self.ptr, 0), "cudaHostGetDevicePointer"))

    def array(self, shape, dtype=np.uint8, offset: int = 0) -> np.ndarray:
        """A numpy view of the pinned memory (keeps this buffer alive)."""
        shape = tuple(int(s) for s in (shape if isinstance(shape, (tuple, list)) else (shape,)))
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        if offset + nbytes > self.nbytes:
            raise ValueError(f"view of {nbytes} bytes at offset {offset} exceeds the {self.nbytes}-byte buffer")
        return np.asarray(_HostView(self.ptr + offset, shape, dtype, self))

    def device_array(self, shape, dtype=np.uint8, offset: int = 0) -> DeviceArray:
        """The GPU's view of a mapped buffer (for kernels and ``__cuda_array_interface__``)."""
        if self.device_ptr is None:
            raise CudaError(
                "this pinned buffer is not mapped (allocate it with mapped=True)", "cudaHostGetDevicePointer"
            )
        return DeviceArray(self.device_ptr + offset, shape, dtype, owner=self)

    @property
    def __cuda_array_interface__(self) -> dict:
        """Mapped buffers only: the GPU's view of the bytes (1-D uint8)."""
        if self.device_ptr is None:
            raise AttributeError("__cuda_array_interface__: pinned buffer is not mapped")
        return self.device_array((self.nbytes,), np.uint8).__cuda_array_interface__

    def close(self) -> None:
        self._finalizer()


class DeviceArray:
    """A typed, strided view of device memory: what kernels and interop exchange.

    ``strides`` are in bytes (None: C-contiguous). ``owner`` keeps the memory alive (a
    :class:`DeviceBuffer`, a :class:`PinnedBuffer`, or a foreign tensor imported by
    :mod:`deeplab_trt.runtime.interop`). ``stream``: where the data was last written (advertised in
    ``__cuda_array_interface__`` so consumers synchronise).
    """

    def __init__(
        self,
        ptr: int,
        shape,
        dtype,
        strides=None,
        owner=None,
        stream: int | None = None,
        device_id: int = 0,
        readonly: bool = False,
    ):
        self.ptr = int(ptr)
        self.shape = tuple(int(s) for s in (shape if isinstance(shape, (tuple, list)) else (shape,)))
        self.dtype = np.dtype(dtype)
        self.strides = tuple(int(s) for s in strides) if strides is not None else None
        self.owner = owner
        self.stream = stream
        self.device_id = device_id
        self.readonly = readonly

    # ---- geometry -------------------------------------------------------------------------
    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape)) if self.shape else 1

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    @property
    def byte_strides(self) -> tuple[int, ...]:
        if self.strides is not None:
            return self.strides
        strides, step = [], self.dtype.itemsize
        for s in reversed(self.shape):
            strides.append(step)
            step *= max(s, 1)
        return tuple(reversed(strides))

    @property
    def is_c_contiguous(self) -> bool:
        return self.strides is None or self.strides == DeviceArray(0, self.shape, self.dtype).byte_strides

    def reshape(self, *dims) -> DeviceArray:
        shape = tuple(dims[0]) if len(dims) == 1 and isinstance(dims[0], (tuple, list)) else dims
        if not self.is_c_contiguous:
            raise ValueError("reshape needs a C-contiguous array")
        n = int(np.prod([s for s in shape if s != -1])) if shape else 1
        shape = tuple(self.size // n if s == -1 else s for s in shape)
        if int(np.prod(shape)) != self.size:
            raise ValueError(f"cannot reshape {self.shape} into {shape}")
        return DeviceArray(self.ptr, shape, self.dtype, None, self.owner, self.stream, self.device_id, self.readonly)

    def __getitem__(self, index: int) -> DeviceArray:
        """``a[i]``: the i-th sub-array along the first axis (e.g. one image of a batch)."""
        if not isinstance(index, (int, np.integer)):
            raise TypeError("DeviceArray supports integer indexing on the first axis only")
        index = int(index) + (self.shape[0] if index < 0 else 0)
        if not 0 <= index < self.shape[0]:
            raise IndexError(index)
        strides = self.byte_strides
        return DeviceArray(
            self.ptr + index * strides[0],
            self.shape[1:],
            self.dtype,
            strides[1:] if self.strides is not None else None,
            self.owner,
            self.stream,
            self.device_id,
            self.readonly,
        )

    # ---- interop --------------------------------------------------------------------------
    @property
    def __cuda_array_interface__(self) -> dict:
        cai = {
            "shape": self.shape,
            "typestr": self.dtype.str,
            "data": (self.ptr, self.readonly),
            "version": 3,
            "strides": self.strides,
        }
        if self.stream is not None:
            cai["stream"] = int(self.stream)
        return cai

    def __dlpack_device__(self) -> tuple[int, int]:
        from deeplab_trt.runtime.cuda import dlpack

        return (dlpack.kDLCUDA, self.device_id)

    def __dlpack__(self, *, stream=None, max_version=None, dl_device=None, copy=None):
        from deeplab_trt.runtime.cuda import dlpack

        if copy:
            raise BufferError("DeviceArray.__dlpack__: copy=True is not supported")
        consumer = 1 if stream is None else int(stream)  # DLPack: None means the legacy default stream
        if consumer != -1 and self.stream is not None and consumer != int(self.stream):
            _order_streams(producer=int(self.stream), consumer=consumer)
        return dlpack.export_capsule(
            self.ptr, self.shape, self.dtype, self.strides, dlpack.kDLCUDA, self.device_id, owner=self
        )

    # ---- host transfers -------------------------------------------------------------------
    def copy_from_host(self, array: np.ndarray, stream: Stream | None = None) -> DeviceArray:
        array = np.ascontiguousarray(array, dtype=self.dtype)
        if array.shape != self.shape or not self.is_c_contiguous:
            raise ValueError(f"copy_from_host: shape {array.shape} into {self.shape} (contiguous only)")
        copy_async(self.ptr, array, self.nbytes, stream)  # pageable source: staged before the call returns
        return self

    def copy_to_host(self, out: np.ndarray | None = None, stream: Stream | None = None) -> np.ndarray:
        """Device → host. Synchronous unless ``stream`` is given and ``out`` is pinned."""
        if not self.is_c_contiguous:
            raise ValueError("copy_to_host: C-contiguous arrays only")
        if out is None:
            out = np.empty(self.shape, self.dtype)
        if stream is None and self.stream is not None:  # written on a stream of ours: let it finish first
            check(cudart().cudaStreamSynchronize(int(self.stream)), "cudaStreamSynchronize")
        copy_async(out, self.ptr, self.nbytes, stream)
        if stream is None:
            check(cudart().cudaStreamSynchronize(0), "cudaStreamSynchronize")
        return out

    def __repr__(self) -> str:
        return f"DeviceArray(ptr=0x{self.ptr:x}, shape={self.shape}, dtype={self.dtype})"


def empty(shape, dtype) -> DeviceArray:
    """A new C-contiguous device array (owns its memory)."""
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    return DeviceBuffer(nbytes).array(shape, dtype)


def to_device(array: np.ndarray, stream: Stream | None = None) -> DeviceArray:
    array = np.ascontiguousarray(array)
    out = empty(array.shape, array.dtype)
    out.copy_from_host(array, stream)
    if stream is None:
        check(cudart().cudaStreamSynchronize(0), "cudaStreamSynchronize")
    return out


def _order_streams(producer: int, consumer: int) -> None:
    """Make ``consumer`` wait for the work queued so far on ``producer`` (event, no host block)."""
    rt = cudart()
    event = check(rt.cudaEventCreateWithFlags(rt.cudaEventDisableTiming), "cudaEventCreateWithFlags")
    try:
        check(rt.cudaEventRecord(event, producer), "cudaEventRecord")
        check(rt.cudaStreamWaitEvent(consumer, event, 0), "cudaStreamWaitEvent")
    finally:
        rt.cudaEventDestroy(event)


def host_pointer(array: np.ndarray) -> int:
    return int(array.ctypes.data)


__all__ = [
    "CudaError",
    "check",
    "cudart",
    "driver",
    "DeviceInfo",
    "device_count",
    "device_info",
    "use_device",
    "current_device",
    "synchronize_device",
    "memory_info",
    "Stream",
    "Event",
    "GraphCapture",
    "DeviceBuffer",
    "PinnedBuffer",
    "DeviceArray",
    "empty",
    "to_device",
    "copy_async",
    "copy_2d_async",
    "memset_async",
    "host_pointer",
]
