"""Python side of ``kernels.cu``: argument packing, launch geometry, tables, dispatch by head.

Why a launcher abstraction: the same wrapper code drives the kernels on a GPU
(:class:`CudaLauncher`: NVRTC cubin → ``cuModuleLoadData`` → ``cuLaunchKernel``) and, in the
tests, the same ``kernels.cu`` compiled as C++ for the CPU under a grid emulator. So the
argument packing, the tables and the dispatch below are exercised on machines without a GPU.

Pointers are plain ints (device addresses; for mapped pinned memory the device alias from
``cudaHostGetDevicePointer``). Anything with ``.ptr`` or ``__cuda_array_interface__`` is
accepted where a pointer is expected.

Table and scratch buffers are allocated on first use for a geometry and then reused, so the
steady state allocates nothing (which CUDA-graph capture requires: run once before capturing).
"""

from __future__ import annotations

import ctypes
import functools
import logging
import threading
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from deeplab_trt.runtime.errors import ToolkitError
from deeplab_trt.runtime.postprocess import label_dtype_for
from deeplab_trt.runtime.preprocess import Geometry
from deeplab_trt.runtime.spec import ModelSpec

log = logging.getLogger(__name__)

# Kernel parameter lists, one letter per parameter: p pointer, q int64, i int32, f float32.
# tests/test_kernels_nvrtc.py checks them against the .param lists NVRTC emits in the PTX.
_PRE = "pqipiiiiiipppp" + "iii" + "ffffff"
_ARGMAX = "piqp"
_UPSAMPLE = "piiippppppqii"
_GATHER = "pqpppqii"
_RENDER = "pqpqiiipqpiiff"
SIGNATURES: dict[str, str] = {
    "preprocess_u8_f32": _PRE,
    "preprocess_u8_f16": _PRE,
    "argmax_f32": _ARGMAX,
    "argmax_f16": _ARGMAX,
    "upsample_argmax_f32_u8": _UPSAMPLE,
    "upsample_argmax_f16_u8": _UPSAMPLE,
    "upsample_argmax_f32_i32": _UPSAMPLE,
    "upsample_argmax_f16_i32": _UPSAMPLE,
    "gather_nearest_i32_u8": _GATHER,
    "gather_nearest_i32_i32": _GATHER,
    "gather_nearest_i64_u8": _GATHER,
    "gather_nearest_i64_i32": _GATHER,
    "gather_nearest_u8_u8": _GATHER,
    "render_u8": _RENDER,
    "render_i32": _RENDER,
}
KERNEL_NAMES = tuple(SIGNATURES)
_CTYPES = {"p": ctypes.c_uint64, "q": ctypes.c_int64, "i": ctypes.c_int32, "f": ctypes.c_float}
BLOCK_2D = (32, 8)
BLOCK_1D = 256
MODES = {"overlay": 0, "mask": 1, "labels": 2}
_FLOAT_SUFFIX = {np.dtype(np.float32): "f32", np.dtype(np.float16): "f16"}
_LABEL_SUFFIX = {np.dtype(np.uint8): "u8", np.dtype(np.int32): "i32"}
_HEAD_LABEL_SUFFIX = {np.dtype(np.int32): "i32", np.dtype(np.int64): "i64", np.dtype(np.uint8): "u8"}


def pointer(x) -> int:
    """Device address of an int, a ``.ptr`` holder, or a ``__cuda_array_interface__`` object."""
    if x is None:
        return 0
    if isinstance(x, (int, np.integer)):
        return int(x)
    if getattr(x, "device_ptr", None) is not None:  # a mapped PinnedBuffer: the GPU's alias
        return int(x.device_ptr)
    if hasattr(x, "ptr"):
        return int(x.ptr)
    cai = getattr(x, "__cuda_array_interface__", None)
    if cai is not None:
        return int(cai["data"][0])
    if isinstance(x, np.ndarray):  # host emulator: "device" memory is host memory
        return int(x.ctypes.data)
    raise TypeError(f"cannot take a device pointer from {type(x).__name__}")


def pack_args(name: str, values) -> tuple[ctypes.Array, list]:
    """``void*[]`` for ``cuLaunchKernel(kernelParams=...)``: one pointer per argument's storage."""
    sig = SIGNATURES[name]
    if len(values) != len(sig):
        raise TypeError(f"{name} takes {len(sig)} arguments, got {len(values)}")
    storage: list[Any] = []
    for code, value in zip(sig, values):
        if code == "p":
            value = pointer(value)
        elif code == "f":
            value = float(value)
        else:
            value = int(value)
        storage.append(_CTYPES[code](value))
    params = (ctypes.c_void_p * len(storage))(*[ctypes.addressof(s) for s in storage])
    return params, storage


def grid_2d(width: int, height: int, block=BLOCK_2D) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    return ((width + block[0] - 1) // block[0], (height + block[1] - 1) // block[1], 1), (block[0], block[1], 1)


def grid_1d(n: int, block: int = BLOCK_1D) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    return ((n + block - 1) // block, 1, 1), (block, 1, 1)


# ----------------------------------------------------------------------------------------------
# launchers and memory providers
# ----------------------------------------------------------------------------------------------
class Launcher(Protocol):
    def launch(self, name: str, grid, block, params: ctypes.Array, stream: int) -> None: ...


class Memory(Protocol):
    def upload(self, array: np.ndarray) -> Any: ...  # persistent copy; result has .ptr
    def scratch(self, nbytes: int) -> Any: ...  # uninitialised; result has .ptr


class CudaLauncher:
    """Loads the compiled module into the current context and launches with ``cuLaunchKernel``."""

    def __init__(self, compiled):
        from deeplab_trt.runtime.cuda import api

        self._api = api
        drv = api.driver()
        api.current_device()  # primary context current on this thread
        image = compiled.image if compiled.kind == "cubin" else compiled.image.rstrip(b"\0") + b"\0"
        self._image = np.frombuffer(image, dtype=np.uint8).copy()
        try:
            self.module = api.check(drv.cuModuleLoadData(self._image.ctypes.data), "cuModuleLoadData")
        except api.CudaError as exc:
            if exc.name in (
                "CUDA_ERROR_UNSUPPORTED_PTX_VERSION",
                "CUDA_ERROR_NO_BINARY_FOR_GPU",
                "CUDA_ERROR_INVALID_IMAGE",
            ):
                info = api.current_device()
                raise api.CudaError(
                    f"{exc} — the kernels were compiled by NVRTC "
                    f"{compiled.nvrtc_version[0]}.{compiled.nvrtc_version[1]} for {compiled.arch} "
                    f"but the driver supports CUDA {info.driver_version // 1000}."
                    f"{info.driver_version % 1000 // 10}; install cuda-python/NVRTC matching the "
                    "driver",
                    exc.call,
                    exc.code,
                    exc.name,
                ) from exc
            raise
        self.functions = {
            name: api.check(drv.cuModuleGetFunction(self.module, name.encode()), f"cuModuleGetFunction({name})")
            for name in KERNEL_NAMES
        }
        self.compiled = compiled

    def launch(self, name, grid, block, params, stream) -> None:
        drv = self._api.driver()
        self._api.check(
            drv.cuLaunchKernel(
                self.functions[name],
                grid[0],
                grid[1],
                grid[2],
                block[0],
                block[1],
                block[2],
                0,
                drv.CUstream(int(stream or 0)),
                ctypes.addressof(params),
                0,
            ),
            f"cuLaunchKernel({name})",
        )


class CudaMemory:
    def upload(self, array: np.ndarray):
        from deeplab_trt.runtime.cuda import api

        return api.to_device(np.ascontiguousarray(array))

    def scratch(self, nbytes: int):
        from deeplab_trt.runtime.cuda import api

        return api.DeviceBuffer(nbytes)


class HostMemory:
    """'Device' memory that is host memory: for the CPU grid emulator in the tests."""

    def upload(self, array: np.ndarray):
        return _HostBlock(np.ascontiguousarray(array).copy())

    def scratch(self, nbytes: int):
        return _HostBlock(np.empty(max(nbytes, 1), np.uint8))


class _HostBlock:
    def __init__(self, array: np.ndarray):
        self.array = array
        self.ptr = int(array.ctypes.data)


# ----------------------------------------------------------------------------------------------
# the kernels
# ----------------------------------------------------------------------------------------------
@dataclass
class _Tables:
    buffers: tuple  # keeps the uploads alive
    ptrs: tuple[int, ...]


class Kernels:
    """Typed entry points over one loaded module. Thread-safe for launches on distinct streams."""

    def __init__(self, launcher: Launcher, memory: Memory):
        self.launcher = launcher
        self.memory = memory
        self._tables: dict[tuple, _Tables] = {}
        self._scratch: dict[tuple[int, str], Any] = {}
        self._lock = threading.Lock()

    # ---- cached device-side tables --------------------------------------------------------
    def _tables_for(self, key: tuple, build) -> tuple[int, ...]:
        """Device pointers of the arrays ``build()`` returns, uploaded the first time ``key`` is seen."""
        with self._lock:
            entry = self._tables.get(key)
            if entry is None:
                buffers = tuple(self.memory.upload(a) for a in build())
                entry = _Tables(buffers, tuple(int(b.ptr) for b in buffers))
                self._tables[key] = entry
            return entry.ptrs

    def _scratch_for(self, stream: int, purpose: str, nbytes: int) -> int:
        with self._lock:
            buf = self._scratch.get((stream, purpose))
            if buf is None or getattr(buf, "nbytes", 0) < nbytes:
                buf = self.memory.scratch(nbytes)
                if not hasattr(buf, "nbytes"):
                    buf.nbytes = nbytes
                self._scratch[(stream, purpose)] = buf
            return int(buf.ptr)

    def lut(self, spec: ModelSpec, channel_order: str = "BGR") -> tuple[int, int]:
        """(device pointer, entries) of the palette as 3-byte colours in the frame's channel order."""
        from deeplab_trt.runtime.postprocess import palette_bgr

        table = palette_bgr(spec)
        if channel_order.upper() == "RGB":
            table = table[:, ::-1]
        key = ("lut", table.tobytes())
        (ptr,) = self._tables_for(key, lambda: (np.ascontiguousarray(table, np.uint8),))
        return ptr, int(table.shape[0])

    def _launch(self, name: str, grid, block, args, stream) -> None:
        params, storage = pack_args(name, args)
        self.launcher.launch(name, grid, block, params, int(stream or 0))
        del storage  # kept alive across the launch call; the driver copies the values

    # ---- preprocess -----------------------------------------------------------------------
    def preprocess(
        self,
        frame,
        frame_h: int,
        frame_w: int,
        out,
        spec: ModelSpec,
        geo: Geometry,
        *,
        out_dtype=np.float32,
        frame_pitch: int | None = None,
        pixel_stride: int = 3,
        bgr: bool = True,
        stream=0,
    ) -> None:
        """uint8 frame (h×w, pitch bytes/row) → one image (3×H×W) of ``out_dtype`` at ``out``."""
        from deeplab_trt.runtime.cuda.tables import normalization, preprocess_tables

        out_dtype = np.dtype(out_dtype)
        if out_dtype not in _FLOAT_SUFFIX:
            raise ToolkitError(f"preprocess writes float32 or float16, not {out_dtype}")
        if (geo.frame_height, geo.frame_width) != (frame_h, frame_w):
            raise ValueError(f"geometry is for a {geo.frame_height}x{geo.frame_width} frame, got {frame_h}x{frame_w}")
        pitch = frame_pitch if frame_pitch is not None else frame_w * pixel_stride

        def build():
            t = preprocess_tables(geo)
            return t.x.index, t.x.weight, t.y.index, t.y.weight

        xi, xw, yi, yw = self._tables_for(("resize", geo), build)
        channels, mean, scale = normalization(spec, bgr)
        grid, block = grid_2d(geo.input_width, geo.input_height)
        self._launch(
            f"preprocess_u8_{_FLOAT_SUFFIX[out_dtype]}",
            grid,
            block,
            (
                frame,
                pitch,
                pixel_stride,
                out,
                geo.input_height,
                geo.input_width,
                geo.top,
                geo.left,
                geo.height,
                geo.width,
                xi,
                xw,
                yi,
                yw,
                *channels,
                *mean,
                *scale,
            ),
            stream,
        )

    # ---- postprocess ----------------------------------------------------------------------
    def argmax(self, logits, channels: int, n: int, labels_i32, *, dtype=np.float32, stream=0) -> None:
        """C×n logits → n int32 labels (first maximum)."""
        grid, block = grid_1d(n)
        self._launch(f"argmax_{_FLOAT_SUFFIX[np.dtype(dtype)]}", grid, block, (logits, channels, n, labels_i32), stream)

    def upsample_argmax(
        self,
        logits,
        channels: int,
        low_h: int,
        low_w: int,
        geo: Geometry,
        labels,
        *,
        dtype=np.float32,
        label_dtype=np.uint8,
        label_pitch: int | None = None,
        stream=0,
    ) -> None:
        """Low-res C×h×w logits → labels at the frame's resolution (== ``upsample_argmax``)."""
        from deeplab_trt.runtime.cuda.tables import upsample_tables

        def build():
            rows, cols = upsample_tables(geo, low_h, low_w)
            return rows.index, rows.weight, cols.index, cols.weight

        yi, yw, xi, xw = self._tables_for(("bilinear", geo, low_h, low_w), build)
        low = self._scratch_for(int(stream or 0), "lowres-argmax", low_h * low_w * 4)
        self.argmax(logits, channels, low_h * low_w, low, dtype=dtype, stream=stream)
        suffix = f"{_FLOAT_SUFFIX[np.dtype(dtype)]}_{_LABEL_SUFFIX[np.dtype(label_dtype)]}"
        grid, block = grid_2d(geo.frame_width, geo.frame_height)
        self._launch(
            f"upsample_argmax_{suffix}",
            grid,
            block,
            (
                logits,
                channels,
                low_h,
                low_w,
                low,
                yi,
                yw,
                xi,
                xw,
                labels,
                label_pitch if label_pitch is not None else geo.frame_width,
                geo.frame_height,
                geo.frame_width,
            ),
            stream,
        )

    def gather_nearest(
        self,
        src,
        src_h: int,
        src_w: int,
        geo: Geometry,
        labels,
        *,
        src_dtype=np.int32,
        label_dtype=np.uint8,
        label_pitch: int | None = None,
        stream=0,
    ) -> None:
        """Model-resolution labels → frame-resolution labels with the reference's nearest taps."""
        from deeplab_trt.runtime.cuda.tables import nearest_tables

        yi, xi = self._tables_for(("nearest", geo, src_h, src_w), lambda: nearest_tables(geo, src_h, src_w))
        src_dtype = np.dtype(src_dtype)
        if src_dtype not in _HEAD_LABEL_SUFFIX:
            raise ToolkitError(f"labels output of dtype {src_dtype} is not supported (int32, int64 or uint8)")
        name = f"gather_nearest_{_HEAD_LABEL_SUFFIX[src_dtype]}_{_LABEL_SUFFIX[np.dtype(label_dtype)]}"
        if name not in SIGNATURES:
            raise ToolkitError(f"no kernel for {src_dtype} labels → {np.dtype(label_dtype)}")
        grid, block = grid_2d(geo.frame_width, geo.frame_height)
        self._launch(
            name,
            grid,
            block,
            (
                src,
                src_w,
                yi,
                xi,
                labels,
                label_pitch if label_pitch is not None else geo.frame_width,
                geo.frame_height,
                geo.frame_width,
            ),
            stream,
        )

    def labels_from_output(
        self,
        output,
        output_shape: tuple[int, ...],
        output_dtype,
        spec: ModelSpec,
        geo: Geometry,
        labels,
        *,
        label_dtype=None,
        label_pitch: int | None = None,
        stream=0,
    ) -> None:
        """One image's model output (no batch dim) → frame-resolution labels, by head form.

        Device twin of :func:`deeplab_trt.runtime.postprocess.labels_from_output`.
        """
        output_dtype = np.dtype(output_dtype)
        label_dtype = np.dtype(label_dtype or label_dtype_for(spec))
        if spec.head == "lowres":
            if len(output_shape) != 3:
                raise ToolkitError(f"lowres head expects C×h×w logits, got shape {tuple(output_shape)}")
            c, h, w = output_shape
            self.upsample_argmax(
                output,
                c,
                h,
                w,
                geo,
                labels,
                dtype=output_dtype,
                label_dtype=label_dtype,
                label_pitch=label_pitch,
                stream=stream,
            )
        elif spec.head == "logits":
            if len(output_shape) != 3:
                raise ToolkitError(f"logits head expects C×H×W logits, got shape {tuple(output_shape)}")
            c, h, w = output_shape
            tmp = self._scratch_for(int(stream or 0), "fullres-argmax", h * w * 4)
            self.argmax(output, c, h * w, tmp, dtype=output_dtype, stream=stream)
            self.gather_nearest(
                tmp,
                h,
                w,
                geo,
                labels,
                src_dtype=np.int32,
                label_dtype=label_dtype,
                label_pitch=label_pitch,
                stream=stream,
            )
        else:
            h, w = output_shape[-2:]
            self.gather_nearest(
                output,
                h,
                w,
                geo,
                labels,
                src_dtype=output_dtype,
                label_dtype=label_dtype,
                label_pitch=label_pitch,
                stream=stream,
            )

    # ---- render ---------------------------------------------------------------------------
    def render(
        self,
        frame,
        height: int,
        width: int,
        labels,
        spec: ModelSpec,
        *,
        mode: str = "overlay",
        alpha: float = 0.5,
        out=None,
        frame_pitch: int | None = None,
        out_pitch: int | None = None,
        pixel_stride: int = 3,
        label_dtype=np.uint8,
        label_pitch: int | None = None,
        channel_order: str = "BGR",
        stream=0,
    ) -> None:
        """Overlay / mask / labels picture; in place on ``frame`` unless ``out`` is given."""
        if mode not in MODES:
            raise ToolkitError(f"unknown output mode {mode!r} (expected one of {', '.join(MODES)})")
        lut, lut_n = self.lut(spec, channel_order)
        pitch = frame_pitch if frame_pitch is not None else width * pixel_stride
        dst = out if out is not None else frame
        dst_pitch = out_pitch if out_pitch is not None else pitch
        alpha32 = np.float32(alpha)
        one_minus = np.float32(1.0 - alpha)  # as numpy evaluates frame * (1.0 - alpha) on float32 frames
        grid, block = grid_2d(width, height)
        self._launch(
            f"render_{_LABEL_SUFFIX[np.dtype(label_dtype)]}",
            grid,
            block,
            (
                frame,
                pitch,
                dst,
                dst_pitch,
                pixel_stride,
                height,
                width,
                labels,
                label_pitch if label_pitch is not None else width,
                lut,
                lut_n,
                MODES[mode],
                float(alpha32),
                float(one_minus),
            ),
            stream,
        )


# ----------------------------------------------------------------------------------------------
# loading for the running GPU
# ----------------------------------------------------------------------------------------------
def _load_for(device_index: int):
    from deeplab_trt.runtime.cuda import api
    from deeplab_trt.runtime.cuda.compile import compile_kernels, supported_archs

    info = api.use_device(device_index)
    cc = info.compute_capability[0] * 10 + info.compute_capability[1]
    archs = supported_archs()
    if cc in archs:
        compiled = compile_kernels(info.arch, kind="cubin")
    else:
        older = [a for a in archs if a <= cc]
        if not older:
            raise ToolkitError(
                f"this NVRTC cannot target {info.name} ({info.arch}); it supports sm_{archs[0]}..sm_{archs[-1]}"
            )
        log.info("NVRTC has no %s target; using PTX for sm_%d (driver JIT)", info.arch, older[-1])
        compiled = compile_kernels(f"sm_{older[-1]}", kind="ptx")
    return Kernels(CudaLauncher(compiled), CudaMemory())


@functools.cache
def _cached(device_index: int) -> Kernels:
    return _load_for(device_index)


def get_kernels(device_index: int | None = None) -> Kernels:
    """The kernels loaded on ``device_index`` (default: the current device), compiled/cached once."""
    from deeplab_trt.runtime.cuda import api

    index = api.current_device().index if device_index is None else device_index
    api.use_device(index)
    return _cached(index)
