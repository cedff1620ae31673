"""A FAKE of the slice of cuda-python the runtime uses, backed by host memory (tests only).

Why a fake: this machine has no GPU, and the GPU-side Python (``deeplab_trt.runtime.cuda.api`` objects,
``CudaStage``, the ``Segmenter``, ``TensorRTRunner``) must still be executed somewhere before
a GPU session sees it. The fake follows cuda-python's conventions (``(error, value)`` tuples,
enum names) and CUDA's semantics where they matter to the callers: kernel arguments are copied
at launch/capture time, stream capture records work instead of running it and a graph launch
replays it, events carry timestamps. Kernels are NOT faked: ``cuLaunchKernel`` runs the real
``kernels.cu`` through the CPU grid emulator, and modules are real NVRTC cubins.

Contexts follow cudart's rules too: a host thread has no current context until it calls
``cudaSetDevice`` (or a runtime call that needs one, which binds the primary context of the
thread's current device, 0 by default); a module belongs to the device current when it was
loaded, and ``cuLaunchKernel`` of its functions from a thread whose current context is another
device's (or none) fails, as it does on a GPU.

Everything runs synchronously in launch order, so it cannot find races; it finds wrong calls,
wrong arguments, wrong buffer sizes and wrong control flow.
"""

from __future__ import annotations

import ctypes
import enum
import itertools
import threading
import time
import types

from deeplab_trt.runtime.cuda.kernels import _CTYPES, SIGNATURES


class cudaError_t(enum.IntEnum):  # noqa: N801 - cuda-python's name
    cudaSuccess = 0
    cudaErrorInvalidValue = 1
    cudaErrorMemoryAllocation = 2
    cudaErrorNotReady = 600
    cudaErrorStreamCaptureUnsupported = 900


class CUresult(enum.IntEnum):  # noqa: N801
    CUDA_SUCCESS = 0
    CUDA_ERROR_INVALID_VALUE = 1
    CUDA_ERROR_INVALID_CONTEXT = 201
    CUDA_ERROR_INVALID_HANDLE = 400
    CUDA_ERROR_NOT_FOUND = 500


class _Function(str):
    """A kernel handle: its name (what the emulator runs) plus the device its module was loaded on."""

    device: int


# cudart calls that need no context (all others bind the primary context of the thread's device)
_CONTEXT_FREE = {
    "cudaGetErrorName",
    "cudaGetErrorString",
    "cudaGetDeviceCount",
    "cudaGetDevice",
    "cudaSetDevice",
    "cudaDeviceGetAttribute",
    "cudaGetDeviceProperties",
    "cudaDriverGetVersion",
    "cudaRuntimeGetVersion",
}


OK = cudaError_t.cudaSuccess


class FakeDevice:
    def __init__(self, name="Fake GPU (host memory)", cc=(8, 7), integrated=False):
        self.name, self.cc, self.integrated = name, cc, integrated


class FakeCuda:
    """Memory, streams, events, graphs; ``runtime`` and ``driver`` are module-like views."""

    def __init__(self, emulator_lib, device: FakeDevice | None = None):
        self.device = device or FakeDevice()
        self.device_count = 1  # tests set 2 to exercise use_device(1); every ordinal is the same FakeDevice
        self.current = threading.local()  # cudaSetDevice is per host thread, as in cudart
        self.emu = emulator_lib
        self.blocks: dict[int, ctypes.Array] = {}
        self.host_blocks: dict[int, ctypes.Array] = {}
        self.capturing: dict[int, list] = {}
        self.events: dict[int, float | None] = {}
        self.event_streams: dict[int, int] = {}  # event -> the stream it was last recorded on
        self.stream_waits: list[tuple[int, int | None]] = []  # (waiting stream, stream its event was recorded on)
        self.streams: set[int] = set()
        self.graphs: dict[int, list] = {}
        self.captures = 0
        self.graph_launches = 0
        self.ids = itertools.count(0x1000)
        self.lock = threading.RLock()
        self.calls: list[str] = []
        self.launches: list[str] = []
        self.runtime = self._runtime_module()
        self.driver = self._driver_module()

    # ---- helpers -------------------------------------------------------------------------
    def _alloc(self, table, nbytes):
        buf = ctypes.create_string_buffer(max(int(nbytes), 1))
        addr = ctypes.addressof(buf)
        table[addr] = buf
        return addr

    def _enqueue(self, stream, op) -> None:
        """Run ``op`` now, or record it when ``stream`` is being captured."""
        stream = int(stream or 0)
        with self.lock:
            if stream in self.capturing:
                self.capturing[stream].append(op)
            else:
                op()

    # ---- cudart ----------------------------------------------------------------------------
    def _runtime_module(self):
        fake = self
        rt = types.SimpleNamespace()
        rt.cudaError_t = cudaError_t
        rt.cudaStreamNonBlocking, rt.cudaStreamDefault = 1, 0
        rt.cudaEventDefault, rt.cudaEventBlockingSync, rt.cudaEventDisableTiming = 0, 1, 2
        rt.cudaHostAllocDefault, rt.cudaHostAllocPortable, rt.cudaHostAllocMapped = 0, 1, 2
        rt.cudaHostAllocWriteCombined = 4
        rt.cudaMemcpyKind = types.SimpleNamespace(cudaMemcpyDefault=4)
        rt.cudaStreamCaptureMode = types.SimpleNamespace(
            cudaStreamCaptureModeGlobal=0, cudaStreamCaptureModeThreadLocal=1, cudaStreamCaptureModeRelaxed=2
        )

        class Attr(enum.IntEnum):
            cudaDevAttrComputeCapabilityMajor = 75
            cudaDevAttrComputeCapabilityMinor = 76
            cudaDevAttrIntegrated = 18
            cudaDevAttrCanMapHostMemory = 19
            cudaDevAttrUnifiedAddressing = 41
            cudaDevAttrMultiProcessorCount = 16

        rt.cudaDeviceAttr = Attr

        def log(name):
            fake.calls.append(name)

        def cudaGetErrorName(err):
            return OK, cudaError_t(int(err)).name.encode()

        def cudaGetErrorString(err):
            return OK, {0: b"no error", 1: b"invalid argument", 2: b"out of memory"}.get(int(err), b"error")

        def cudaGetDeviceCount():
            return OK, fake.device_count

        def cudaGetDevice():
            return OK, getattr(fake.current, "index", 0)

        def cudaSetDevice(i):
            log("cudaSetDevice")
            if not 0 <= i < fake.device_count:
                return (cudaError_t.cudaErrorInvalidValue,)
            fake.current.index = i
            fake.current.context = i  # CUDA 12+: cudaSetDevice makes the primary context current
            return (OK,)

        def cudaDeviceGetAttribute(attr, dev):
            d = fake.device
            values = {
                Attr.cudaDevAttrComputeCapabilityMajor: d.cc[0],
                Attr.cudaDevAttrComputeCapabilityMinor: d.cc[1],
                Attr.cudaDevAttrIntegrated: int(d.integrated),
                Attr.cudaDevAttrCanMapHostMemory: 1,
                Attr.cudaDevAttrUnifiedAddressing: 1,
                Attr.cudaDevAttrMultiProcessorCount: 8,
            }
            return OK, values[attr]

        def cudaGetDeviceProperties(dev):
            return OK, types.SimpleNamespace(
                name=fake.device.name.encode(), totalGlobalMem=8 << 30, major=fake.device.cc[0], minor=fake.device.cc[1]
            )

        def cudaDriverGetVersion():
            return OK, 13000

        def cudaRuntimeGetVersion():
            return OK, 13000

        def cudaMalloc(n):
            log("cudaMalloc")
            return OK, fake._alloc(fake.blocks, n)

        def cudaFree(ptr):
            fake.blocks.pop(int(ptr), None)
            return (OK,)

        def cudaHostAlloc(n, flags):
            log("cudaHostAlloc")
            return OK, fake._alloc(fake.host_blocks, n)

        def cudaFreeHost(ptr):
            fake.host_blocks.pop(int(ptr), None)
            return (OK,)

        def cudaHostGetDevicePointer(ptr, flags):
            return (OK, int(ptr)) if int(ptr) in fake.host_blocks else (cudaError_t.cudaErrorInvalidValue, None)

        def cudaMemcpyAsync(dst, src, count, kind, stream):
            dst, src, count = int(dst), int(src), int(count)
            fake._enqueue(stream, lambda: ctypes.memmove(dst, src, count))
            return (OK,)

        def cudaMemcpy2DAsync(dst, dpitch, src, spitch, width, height, kind, stream):
            def op():
                for r in range(int(height)):
                    ctypes.memmove(int(dst) + r * dpitch, int(src) + r * spitch, width)

            fake._enqueue(stream, op)
            return (OK,)

        def cudaMemsetAsync(ptr, value, count, stream):
            ptr, value, count = int(ptr), int(value), int(count)
            fake._enqueue(stream, lambda: ctypes.memset(ptr, value, count))
            return (OK,)

        def cudaStreamCreateWithFlags(flags):
            s = next(fake.ids)
            fake.streams.add(s)
            return OK, s

        def cudaStreamDestroy(s):
            fake.streams.discard(int(s))
            return (OK,)

        def cudaStreamSynchronize(s):
            return (OK,)

        def cudaDeviceSynchronize():
            return (OK,)

        def cudaStreamWaitEvent(s, e, flags):
            fake.stream_waits.append((int(s or 0), fake.event_streams.get(int(e))))
            return (OK,)

        def cudaEventCreateWithFlags(flags):
            e = next(fake.ids)
            fake.events[e] = None
            return OK, e

        def cudaEventDestroy(e):
            fake.events.pop(int(e), None)
            return (OK,)

        def cudaEventRecord(e, s):
            if int(s or 0) in fake.capturing:
                return (cudaError_t.cudaErrorStreamCaptureUnsupported,)  # needs cudaEventRecordWithFlags(External)
            fake.events[int(e)] = time.perf_counter()
            fake.event_streams[int(e)] = int(s or 0)
            return (OK,)

        def cudaEventSynchronize(e):
            return (OK,) if fake.events.get(int(e)) is not None else (cudaError_t.cudaErrorInvalidValue,)

        def cudaEventQuery(e):
            return (OK,)

        def cudaEventElapsedTime(a, b):
            ta, tb = fake.events.get(int(a)), fake.events.get(int(b))
            if ta is None or tb is None:
                return cudaError_t.cudaErrorInvalidValue, None
            return OK, (tb - ta) * 1e3

        def cudaStreamBeginCapture(s, mode):
            fake.capturing[int(s)] = []
            return (OK,)

        def cudaStreamEndCapture(s):
            ops = fake.capturing.pop(int(s))
            fake.captures += 1
            g = next(fake.ids)
            fake.graphs[g] = ops
            return OK, g

        def cudaGraphInstantiate(g, flags):
            return OK, ("exec", int(g))

        def cudaGraphLaunch(ex, s):
            fake.graph_launches += 1
            for op in fake.graphs[ex[1]]:
                fake._enqueue(s, op)
            return (OK,)

        def cudaGraphExecDestroy(ex):
            return (OK,)

        def cudaGraphDestroy(g):
            fake.graphs.pop(int(g), None)
            return (OK,)

        def cudaMemGetInfo():
            return OK, 4 << 30, 8 << 30

        def binding_context(call):
            def bound(*args):
                if getattr(fake.current, "context", None) is None:
                    fake.current.context = getattr(fake.current, "index", 0)
                return call(*args)

            return bound

        for name, value in list(locals().items()):
            if name.startswith("cuda") and callable(value):
                setattr(rt, name, value if name in _CONTEXT_FREE else binding_context(value))
        return rt

    def context(self) -> int | None:
        """The device whose primary context is current on this host thread (None: no context)."""
        return getattr(self.current, "context", None)

    # ---- driver ----------------------------------------------------------------------------
    def _driver_module(self):
        fake = self
        drv = types.SimpleNamespace(CUresult=CUresult)

        def cuInit(flags):
            return (CUresult.CUDA_SUCCESS,)

        def cuModuleLoadData(image):
            if fake.context() is None:
                return CUresult.CUDA_ERROR_INVALID_CONTEXT, None
            return CUresult.CUDA_SUCCESS, ("module", int(image), fake.context())

        def cuModuleGetFunction(module, name):
            name = name.decode()
            if name not in SIGNATURES:
                return CUresult.CUDA_ERROR_NOT_FOUND, None
            function = _Function(name)
            function.device = module[2]
            return CUresult.CUDA_SUCCESS, function

        def CUstream(handle):
            return int(handle)

        def cuLaunchKernel(f, gx, gy, gz, bx, by, bz, shm, stream, params, extra):
            if fake.context() is None:
                return (CUresult.CUDA_ERROR_INVALID_CONTEXT,)  # a thread that never bound a device
            if fake.context() != f.device:
                return (CUresult.CUDA_ERROR_INVALID_HANDLE,)  # the function belongs to another context
            # Copy the argument values now, as the driver does: the caller's storage may go away.
            pointers = (ctypes.c_void_p * len(SIGNATURES[f])).from_address(int(params))
            storage = [
                _CTYPES[c].from_buffer_copy(ctypes.string_at(pointers[i], ctypes.sizeof(_CTYPES[c])))
                for i, c in enumerate(SIGNATURES[f])
            ]
            copied = (ctypes.c_void_p * len(storage))(*[ctypes.addressof(s) for s in storage])

            def op(storage=storage, copied=copied):
                rc = fake.emu.emu_launch(f.encode(), gx, gy, bx, by, ctypes.addressof(copied))
                assert rc == 0
                fake.launches.append(f)

            fake._enqueue(stream, op)
            return (CUresult.CUDA_SUCCESS,)

        def cuGetErrorName(err):
            return CUresult.CUDA_SUCCESS, CUresult(int(err)).name.encode()

        def cuGetErrorString(err):
            return CUresult.CUDA_SUCCESS, b"error"

        for name, value in list(locals().items()):
            if (name.startswith("cu") or name.startswith("CU")) and callable(value):
                setattr(drv, name, value)
        return drv


def install(monkeypatch, emulator_lib_path, device: FakeDevice | None = None) -> FakeCuda:
    """Route ``deeplab_trt.runtime.cuda.api``'s cuda-python access to a fresh fake; kernels are re-loaded."""
    from deeplab_trt.runtime.cuda import api, kernels

    lib = ctypes.CDLL(str(emulator_lib_path))
    lib.emu_launch.argtypes = [
        ctypes.c_char_p,
        ctypes.c_uint,
        ctypes.c_uint,
        ctypes.c_uint,
        ctypes.c_uint,
        ctypes.c_void_p,
    ]
    lib.emu_launch.restype = ctypes.c_int
    fake = FakeCuda(lib, device)
    monkeypatch.setattr(api, "cudart", lambda: fake.runtime)
    monkeypatch.setattr(api, "driver", lambda: fake.driver)
    api.device_info.cache_clear()
    kernels._cached.cache_clear()
    monkeypatch.setattr(api._current, "index", None, raising=False)
    return fake
