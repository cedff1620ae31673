"""Read a PyTorch zip checkpoint (``torch.save``) into numpy arrays, without torch.

Why: the demo must run where torch is absent (a Jetson), yet the repository should ship the
demo's weights once, in ``demo_model.pt``. A checkpoint is a zip of ``<root>/data.pkl`` (the
object, pickled) and ``<root>/data/<key>`` (each tensor storage's raw bytes); the pickle names
its tensors by ``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)`` and its
storages by persistent ids ``('storage', torch.HalfStorage, key, location, numel)``.

The unpickler here resolves only those names plus ``collections.OrderedDict``: anything else
(a pickled class, a function) is refused with one line, the same safety as
``torch.load(weights_only=True)``. Tensors come back as C-contiguous numpy arrays holding the
very bytes torch would (checked in ``tests/test_torch_checkpoint.py``).
"""

from __future__ import annotations

import collections
import pickle
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from deeplab_trt.runtime.errors import InvalidModelError

#: torch storage type → numpy dtype (bfloat16 and complex types have no numpy twin: refused)
_STORAGE_DTYPES = {
    "HalfStorage": np.float16,
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class _StorageType:
    """Stand-in for ``torch.HalfStorage`` & co. in the pickle: it only carries the dtype."""

    def __init__(self, dtype: type) -> None:
        self.dtype = np.dtype(dtype)


def _rebuild_tensor_v2(storage: np.ndarray, offset: int, size: tuple, stride: tuple, *_: Any) -> np.ndarray:
    """``torch._utils._rebuild_tensor_v2``: a view of ``storage`` (in elements), copied contiguous."""
    size, stride = tuple(int(n) for n in size), tuple(int(s) for s in stride)
    if len(size) != len(stride) or offset < 0 or any(s < 0 for s in stride):
        raise ValueError(f"bad tensor layout (size {size}, stride {stride}, offset {offset})")
    last = offset + sum((n - 1) * s for n, s in zip(size, stride)) if all(size) else offset - 1
    if last >= storage.size:
        raise ValueError(f"tensor of size {size} runs past its storage of {storage.size} elements")
    if not size:  # a 0-d tensor (as_strided would read shape () as "keep the shape")
        return np.array(storage[offset], dtype=storage.dtype)
    item = storage.itemsize
    view = np.lib.stride_tricks.as_strided(
        storage[offset:] if all(size) else storage[:0], shape=size, strides=[s * item for s in stride]
    )
    return np.ascontiguousarray(view)


class _Unpickler(pickle.Unpickler):
    def __init__(self, file: Any, archive: zipfile.ZipFile, root: str) -> None:
        super().__init__(file)
        self._archive, self._root = archive, root
        self._storages: dict[str, np.ndarray] = {}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor_v2
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        raise pickle.UnpicklingError(f"refused to load {module}.{name} (only tensors and dicts are allowed)")

    def persistent_load(self, pid: Any) -> np.ndarray:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unsupported persistent id {str(pid)[:60]}")
        _, kind, key, _location, numel = pid
        if not isinstance(kind, _StorageType):
            raise pickle.UnpicklingError(f"storage of unsupported type {kind!r}")
        if key not in self._storages:
            raw = self._archive.read(f"{self._root}/data/{key}")
            if len(raw) < numel * kind.dtype.itemsize:
                raise pickle.UnpicklingError(f"storage {key}: {len(raw)} bytes, expected {numel} elements")
            self._storages[key] = np.frombuffer(raw, kind.dtype, count=numel)
        return self._storages[key]


def read_checkpoint(path: Path) -> Any:
    """The object ``torch.save`` wrote to ``path``, with numpy arrays for its tensors.

    Args:
        path: a ``.pt``/``.pth`` in torch's zip format (torch >= 1.6, little-endian).

    Raises:
        InvalidModelError: one line naming ``path``: not such a zip, or the pickle holds
            anything but dicts, lists, numbers, strings and tensors.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            pkl = next((n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1), None)
            if pkl is None:
                raise ValueError("no <root>/data.pkl: not a torch zip checkpoint")
            root = pkl.split("/")[0]
            order = (
                archive.read(f"{root}/byteorder").decode() if f"{root}/byteorder" in archive.namelist() else "little"
            )
            if order != "little":
                raise ValueError(f"{order}-endian storages are not supported")
            with archive.open(pkl) as file:
                return _Unpickler(file, archive, root).load()
    except (OSError, zipfile.BadZipFile, pickle.UnpicklingError, ValueError, KeyError, EOFError, TypeError) as exc:
        raise InvalidModelError(f"{path}: not a loadable PyTorch checkpoint ({exc})") from exc


def read_state_dict(path: Path) -> dict[str, np.ndarray]:
    """The state dict in the checkpoint at ``path`` (the object itself or its 'model'/'state_dict' entry).

    Args:
        path: as for :func:`read_checkpoint`.
    """
    obj = read_checkpoint(path)
    if isinstance(obj, dict):
        obj = next((obj[k] for k in ("model", "state_dict") if isinstance(obj.get(k), dict)), obj)
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, np.ndarray) for v in obj.values()):
        raise InvalidModelError(f"{path}: not a model state dict (expected tensors by parameter name)")
    return dict(obj)
