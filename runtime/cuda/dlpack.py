"""DLPack capsules in pure ctypes: import any ``__dlpack__`` tensor, export our device arrays.

Why by hand: the runtime must exchange GPU tensors with torch, CuPy or JAX without importing
any of them (Jetson images often lack torch) and without copies. DLPack is a C struct in a
``PyCapsule``; ctypes reads and writes it. Legacy (unversioned) ``DLManagedTensor`` capsules
are produced and both legacy and versioned (DLPack >= 1.0) ones are consumed.

Lifetime rules (from the DLPack spec):
* a consumer renames the capsule ``"dltensor"`` → ``"used_dltensor"`` and later calls the
  tensor's ``deleter`` exactly once when it no longer needs the memory;
* a producer's capsule destructor calls the deleter only if the capsule was never consumed.
"""

from __future__ import annotations

import ctypes
import threading
import weakref
from dataclasses import dataclass
from typing import Any

import numpy as np

kDLCPU, kDLCUDA, kDLCUDAHost, kDLCUDAManaged = 1, 2, 3, 13
DEVICE_NAMES = {kDLCPU: "cpu", kDLCUDA: "cuda", kDLCUDAHost: "cuda_host", kDLCUDAManaged: "cuda_managed"}
kDLInt, kDLUInt, kDLFloat, kDLBfloat, kDLBool = 0, 1, 2, 4, 6


class DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class DLTensor(ctypes.Structure):
    _fields_ = [
        ("data", ctypes.c_void_p),
        ("device", DLDevice),
        ("ndim", ctypes.c_int32),
        ("dtype", DLDataType),
        ("shape", ctypes.POINTER(ctypes.c_int64)),
        ("strides", ctypes.POINTER(ctypes.c_int64)),
        ("byte_offset", ctypes.c_uint64),
    ]


class DLManagedTensor(ctypes.Structure):
    pass


_Deleter = ctypes.CFUNCTYPE(None, ctypes.POINTER(DLManagedTensor))
DLManagedTensor._fields_ = [("dl_tensor", DLTensor), ("manager_ctx", ctypes.c_void_p), ("deleter", _Deleter)]


class DLPackVersion(ctypes.Structure):
    _fields_ = [("major", ctypes.c_uint32), ("minor", ctypes.c_uint32)]


class DLManagedTensorVersioned(ctypes.Structure):
    pass


_DeleterV = ctypes.CFUNCTYPE(None, ctypes.POINTER(DLManagedTensorVersioned))
DLManagedTensorVersioned._fields_ = [
    ("version", DLPackVersion),
    ("manager_ctx", ctypes.c_void_p),
    ("deleter", _DeleterV),
    ("flags", ctypes.c_uint64),
    ("dl_tensor", DLTensor),
]
DLPACK_FLAG_BITMASK_READ_ONLY = 1

_api = ctypes.pythonapi
_api.PyCapsule_GetPointer.restype = ctypes.c_void_p
_api.PyCapsule_GetPointer.argtypes = [ctypes.py_object, ctypes.c_char_p]
_api.PyCapsule_IsValid.restype = ctypes.c_int
_api.PyCapsule_IsValid.argtypes = [ctypes.py_object, ctypes.c_char_p]
_api.PyCapsule_SetName.restype = ctypes.c_int
_api.PyCapsule_SetName.argtypes = [ctypes.py_object, ctypes.c_char_p]
_api.PyCapsule_GetName.restype = ctypes.c_char_p
_api.PyCapsule_GetName.argtypes = [ctypes.py_object]
_CapsuleDestructor = ctypes.CFUNCTYPE(None, ctypes.c_void_p)
_api.PyCapsule_New.restype = ctypes.py_object
_api.PyCapsule_New.argtypes = [ctypes.c_void_p, ctypes.c_char_p, _CapsuleDestructor]

_USED = b"used_dltensor"
_USED_V = b"used_dltensor_versioned"


# ----------------------------------------------------------------------------------------------
# dtype mapping
# ----------------------------------------------------------------------------------------------
def dl_dtype(dtype) -> DLDataType:
    dtype = np.dtype(dtype)
    code = {"i": kDLInt, "u": kDLUInt, "f": kDLFloat, "b": kDLBool}.get(dtype.kind)
    if code is None:
        raise BufferError(f"dtype {dtype} has no DLPack equivalent here")
    return DLDataType(code, dtype.itemsize * 8, 1)


def np_dtype(dt: DLDataType) -> np.dtype:
    if dt.lanes != 1:
        raise BufferError(f"vector DLPack dtypes (lanes={dt.lanes}) are not supported")
    kind = {kDLInt: "i", kDLUInt: "u", kDLFloat: "f", kDLBool: "b"}.get(dt.code)
    if kind is None:
        raise BufferError(
            f"DLPack dtype code {dt.code} (bits {dt.bits}) is not supported (bfloat16 and complex are not)"
        )
    return np.dtype("?") if kind == "b" else np.dtype(f"{kind}{dt.bits // 8}")


# ----------------------------------------------------------------------------------------------
# import
# ----------------------------------------------------------------------------------------------
@dataclass
class ImportedTensor:
    """A consumed DLPack tensor: raw pointer, shape, byte strides, dtype, device; owns the deleter call."""

    ptr: int
    shape: tuple[int, ...]
    strides: tuple[int, ...] | None  # bytes; None = C-contiguous
    dtype: np.dtype
    device_type: int
    device_id: int
    readonly: bool
    _release: Any = None
    stream_ordered: bool = True  # False: the producer's __dlpack__ took no ``stream`` (nothing was ordered)

    def release(self) -> None:
        if self._release is not None:
            self._release()
            self._release = None


def _call_deleter(address: int, versioned: bool) -> None:
    struct = DLManagedTensorVersioned if versioned else DLManagedTensor
    managed = struct.from_address(address)
    if managed.deleter:
        managed.deleter(ctypes.cast(address, ctypes.POINTER(struct)))


def import_capsule(capsule) -> ImportedTensor:
    """Consume a ``dltensor`` / ``dltensor_versioned`` capsule (renames it; the deleter runs on release/GC)."""
    name = _api.PyCapsule_GetName(capsule)
    if name == b"dltensor":
        address = _api.PyCapsule_GetPointer(capsule, name)
        tensor = DLManagedTensor.from_address(address).dl_tensor
        versioned, readonly = False, False
        used = _USED
    elif name == b"dltensor_versioned":
        address = _api.PyCapsule_GetPointer(capsule, name)
        managed = DLManagedTensorVersioned.from_address(address)
        if managed.version.major > 1:
            raise BufferError(f"DLPack {managed.version.major}.{managed.version.minor} is newer than this reader (1.x)")
        tensor, versioned = managed.dl_tensor, True
        readonly = bool(managed.flags & DLPACK_FLAG_BITMASK_READ_ONLY)
        used = _USED_V
    else:
        raise BufferError(f"not an unconsumed DLPack capsule (name {name!r})")
    dtype = np_dtype(tensor.dtype)
    ndim = int(tensor.ndim)
    shape = tuple(int(tensor.shape[i]) for i in range(ndim))
    strides = None
    if tensor.strides:
        strides = tuple(int(tensor.strides[i]) * dtype.itemsize for i in range(ndim))  # elements -> bytes
    ptr = int(tensor.data or 0) + int(tensor.byte_offset)
    _api.PyCapsule_SetName(capsule, used)
    released = threading.Event()

    def release(address=address, versioned=versioned):
        if not released.is_set():
            released.set()
            _call_deleter(address, versioned)

    out = ImportedTensor(
        ptr, shape, strides, dtype, int(tensor.device.device_type), int(tensor.device.device_id), readonly, release
    )
    weakref.finalize(out, release)
    return out


def from_dlpack(obj, stream: int | None = None) -> ImportedTensor:
    """Import ``obj.__dlpack__`` (asking the producer to order its work before ``stream``)."""
    if not hasattr(obj, "__dlpack__"):
        raise TypeError(f"{type(obj).__name__} does not implement __dlpack__")
    device_type = obj.__dlpack_device__()[0] if hasattr(obj, "__dlpack_device__") else None
    kwargs = {}
    if device_type in (kDLCUDA, kDLCUDAManaged) and stream is not None:
        kwargs["stream"] = int(stream)
    try:
        capsule = obj.__dlpack__(**kwargs)
    except TypeError:
        capsule = obj.__dlpack__()
        kwargs = {}
    imported = import_capsule(capsule)
    imported.stream_ordered = stream is None or "stream" in kwargs
    return imported


# ----------------------------------------------------------------------------------------------
# export
# ----------------------------------------------------------------------------------------------
class _Export:
    """Keeps the C structs (and the memory owner) alive until the consumer calls the deleter."""

    __slots__ = ("managed", "shape", "strides", "owner")

    managed: DLManagedTensor
    shape: ctypes.Array
    strides: ctypes.Array | None
    owner: object


_exports: dict[int, _Export] = {}
_exports_lock = threading.Lock()


@_Deleter
def _export_deleter(managed_ptr):
    address = ctypes.cast(managed_ptr, ctypes.c_void_p).value
    if address is None:
        return
    with _exports_lock:
        _exports.pop(address, None)


@_CapsuleDestructor
def _capsule_destructor(capsule_ptr):
    # Runs when the capsule object dies: only an unconsumed capsule still owns the tensor.
    capsule = ctypes.cast(capsule_ptr, ctypes.py_object)
    if _api.PyCapsule_IsValid(capsule, b"dltensor"):
        address = _api.PyCapsule_GetPointer(capsule, b"dltensor")
        with _exports_lock:
            _exports.pop(address, None)


def export_capsule(ptr: int, shape, dtype, strides=None, device_type: int = kDLCUDA, device_id: int = 0, owner=None):
    """A legacy ``dltensor`` capsule for memory at ``ptr`` (``strides`` in bytes; None = C-contiguous)."""
    dtype = np.dtype(dtype)
    shape = tuple(int(s) for s in shape)
    record = _Export()
    record.shape = (ctypes.c_int64 * max(len(shape), 1))(*shape)
    record.strides = None
    if strides is not None:
        if any(s % dtype.itemsize for s in strides):
            raise BufferError("DLPack needs strides that are multiples of the item size")
        record.strides = (ctypes.c_int64 * max(len(shape), 1))(*(int(s) // dtype.itemsize for s in strides))
    managed = DLManagedTensor()
    managed.dl_tensor.data = ctypes.c_void_p(int(ptr))
    managed.dl_tensor.device = DLDevice(device_type, device_id)
    managed.dl_tensor.ndim = len(shape)
    managed.dl_tensor.dtype = dl_dtype(dtype)
    managed.dl_tensor.shape = ctypes.cast(record.shape, ctypes.POINTER(ctypes.c_int64))
    managed.dl_tensor.strides = (
        ctypes.cast(record.strides, ctypes.POINTER(ctypes.c_int64))
        if record.strides is not None
        else ctypes.POINTER(ctypes.c_int64)()
    )
    managed.dl_tensor.byte_offset = 0
    managed.manager_ctx = None
    managed.deleter = _export_deleter
    record.managed = managed
    record.owner = owner
    address = ctypes.addressof(managed)
    with _exports_lock:
        _exports[address] = record
    return _api.PyCapsule_New(address, b"dltensor", _capsule_destructor)


def live_exports() -> int:
    """Exported tensors whose consumer has not released them yet (for leak tests)."""
    with _exports_lock:
        return len(_exports)
