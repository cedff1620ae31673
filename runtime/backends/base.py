"""The backend contract and the one function that opens a model file.

Why a protocol and not a base class: the TensorRT backend (device buffers, CUDA streams)
and the ONNX Runtime backend (host numpy) share no code, only this surface, which is all
the pipeline and the benchmarks touch.

Contract
--------
``name``         what runs the model, for reports (``"onnxruntime (CPUExecutionProvider)"``).
``spec``         the :class:`~deeplab_trt.runtime.spec.ModelSpec` carried by the model file.
``input_dtype``  the numpy dtype the model's input takes (float32 or float16); the
                 pipeline preprocesses straight into it.
``fixed_batch``  the batch size the model requires (``None``: a dynamic batch; any N the
                 model's profile allows).
``batch_limits`` (smallest, largest) batch one ``infer`` takes (largest ``None``: no limit); what a
                 run of N streams checks before it starts (one batched inference per tick).
``pipeline``     which stage of the one video loop (:func:`deeplab_trt.runtime.pipeline.run_video`)
                 drives it: ``"cpu"``: the numpy references around ``infer``; ``"gpu"``: the CUDA
                 kernels around ``runner`` (device buffers).
``fresh_outputs`` whether ``infer`` returns a new array per call (the loop may hold one while the
                 next inference runs); ``False``: the loop copies it.
``runner``       the device inference the GPU stage enqueues (``None``: the GPU stage wraps
                 ``infer`` through host staging buffers; CPU backends leave it ``None``).
``infer(batch)`` N×3×H×W array of ``input_dtype`` → the model's single output (host numpy,
                 batch dim kept: N×C×h×w logits, or N×H×W labels).
``close()``      release the session/engine; backends are also context managers.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from deeplab_trt.runtime.errors import ToolkitError
from deeplab_trt.runtime.spec import ModelSpec

BACKENDS = ("auto", "onnxruntime", "tensorrt")
ENGINE_SUFFIXES = (".engine", ".plan")


@runtime_checkable
class Backend(Protocol):
    name: str
    spec: ModelSpec
    input_dtype: np.dtype
    fixed_batch: int | None
    batch_limits: tuple[int, int | None]
    pipeline: str
    fresh_outputs: bool
    runner: object | None

    def infer(self, batch: np.ndarray) -> np.ndarray: ...

    def close(self) -> None: ...


class BackendBase:
    """Shared conveniences (context manager, input checks); implementing classes need not use it."""

    spec: ModelSpec
    input_dtype: np.dtype
    name = "backend"
    pipeline = "cpu"
    fixed_batch: int | None = None
    fresh_outputs = False
    runner: object | None = None

    @property
    def batch_limits(self) -> tuple[int, int | None]:
        """A fixed batch B: (B, B); a dynamic one: any N (backends with a profile override this)."""
        return (self.fixed_batch, self.fixed_batch) if self.fixed_batch is not None else (1, None)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:  # pragma: no cover - trivial default
        pass

    def check_batch(self, batch: np.ndarray) -> np.ndarray:
        """The batch as a contiguous array of ``input_dtype`` with the model's H×W, or a clear error."""
        spec = self.spec
        batch = np.asarray(batch)
        if batch.ndim != 4 or batch.shape[1] != 3 or batch.shape[2:] != spec.input_size:
            raise ToolkitError(
                f"{self.name}: expected an N×3×{spec.input_height}×{spec.input_width} batch, "
                f"got shape {tuple(batch.shape)}"
            )
        if self.fixed_batch is not None and batch.shape[0] != self.fixed_batch:
            raise ToolkitError(
                f"{self.name}: the model takes a fixed batch of {self.fixed_batch}, got {batch.shape[0]}"
            )
        return np.ascontiguousarray(batch, dtype=self.input_dtype)


def _kind_of(path: Path) -> str:
    return "tensorrt" if path.suffix.lower() in ENGINE_SUFFIXES else "onnxruntime"


def open_backend(model_path: str | Path, backend: str = "auto", *, threads: int | None = None, **options) -> Backend:
    """Open ``model_path`` with the backend its file type needs.

    ``backend``: ``auto`` (by suffix: ``.engine``/``.plan`` → TensorRT, anything else is read
    as ONNX), ``onnxruntime`` or ``tensorrt``; a choice that cannot run the file is a clear
    error rather than a surprise later. ``threads``: ONNX Runtime intra-op threads (ignored
    by TensorRT). Other ``options`` go to the chosen backend's constructor.

    A TensorRT backend module (``runtime/backends/tensorrt.py``) provides
    ``open_engine(path, **options) -> Backend``.
    """
    path = Path(model_path)
    if backend not in BACKENDS:
        raise ToolkitError(f"unknown backend {backend!r} (expected one of {', '.join(BACKENDS)})")
    if not path.exists():
        raise ToolkitError(f"{path}: no such file")
    if path.is_dir():
        raise ToolkitError(f"{path}: is a directory, expected a model file (.onnx, .engine or .plan)")
    kind = _kind_of(path)
    if backend == "onnxruntime" and kind == "tensorrt":
        raise ToolkitError(
            f"{path}: a TensorRT engine cannot run on ONNX Runtime; pass the .onnx model, or --backend tensorrt"
        )
    if backend == "tensorrt" and kind != "tensorrt":
        raise ToolkitError(
            f"{path}: --backend tensorrt needs a TensorRT engine (.engine/.plan, "
            "from 'deeplab-trt build'), not an ONNX model"
        )
    if kind == "onnxruntime":
        from deeplab_trt.runtime.backends.onnxruntime import OrtBackend

        return OrtBackend(path, threads=threads, **options)
    try:
        trt_backend = importlib.import_module("deeplab_trt.runtime.backends.tensorrt")
    except ModuleNotFoundError as exc:
        if exc.name not in (
            "deeplab_trt.runtime.backends.tensorrt",
            "tensorrt",
            "tensorrt_rtx",
            "tensorrt_rtx_bindings",
        ):
            raise
        raise ToolkitError(
            f"{path}: TensorRT engines need a CUDA GPU and tensorrt/tensorrt_rtx "
            "(this installation has no TensorRT backend); run the .onnx model instead"
        ) from exc
    return trt_backend.open_engine(path, **options)
