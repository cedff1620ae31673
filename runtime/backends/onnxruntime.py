"""ONNX Runtime backend: the CPU reference path (CUDA execution provider used when present).

Why it exists next to TensorRT: it runs everywhere ``pip install`` works, so it is the
reference every engine's output is compared with, and the way to run the toolkit on a
machine without a GPU.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from deeplab_trt.runtime.backends.base import BackendBase
from deeplab_trt.runtime.errors import ToolkitError
from deeplab_trt.runtime.spec import spec_from_onnx

log = logging.getLogger(__name__)

_DTYPES = {"tensor(float)": np.dtype(np.float32), "tensor(float16)": np.dtype(np.float16)}


def _first_line(exc: BaseException, limit: int = 300) -> str:
    text = str(exc).strip().splitlines()
    line = text[0] if text else type(exc).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."


def default_providers() -> list[str]:
    """CUDA first when this onnxruntime build has it, CPU always (ORT falls back to it)."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


class OrtBackend(BackendBase):
    """An ``onnxruntime.InferenceSession`` over a ``deeplab-trt export`` ONNX file.

    ``threads``: intra-op threads (``None``/0: ONNX Runtime's default, one per physical core).
    ``providers``: execution providers in priority order (default :func:`default_providers`).
    ``spinning``: let ORT's intra-op worker threads busy-wait for work after each ``Run``
    (ORT's own default). Off here: in the video loop preprocessing, argmax, overlay and sink
    run between two inferences, and spinning workers steal the cores they need. Measured with
    ``benchmarks/pipeline_overhead.py`` (mobilenet 512x1024, 2 shared cores): turning it off
    alone took the lockstep end-to-end / inference ratio from 1.193 to 1.105; back-to-back
    ``Run`` calls did not get slower (under load they got faster: fewer busy threads).
    """

    pipeline = "cpu"
    fresh_outputs = True  # session.run returns new arrays: the video loop may hold one across calls

    def __init__(
        self, path: str | Path, threads: int | None = None, providers: list[str] | None = None, spinning: bool = False
    ):
        import onnxruntime as ort

        self.path = Path(path)
        self.spec = spec_from_onnx(self.path)  # one-line errors for missing / not ONNX / truncated
        opts = ort.SessionOptions()
        opts.log_severity_level = 3  # errors only: warnings (e.g. CUDA EP fallback) are not the user's problem
        if threads:
            opts.intra_op_num_threads = int(threads)
        if not spinning:
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.spinning = spinning
        try:
            self.session = ort.InferenceSession(
                str(self.path), sess_options=opts, providers=providers or default_providers()
            )
        except Exception as exc:  # onnxruntime raises its own exception types (Fail, InvalidGraph, ...)  # noqa: BLE001
            raise ToolkitError(
                f"{self.path}: ONNX Runtime cannot load it ({type(exc).__name__}: {_first_line(exc)})"
            ) from exc
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1:
            raise ToolkitError(f"{self.path}: expected one image input, the graph has {len(inputs)}")
        inp = inputs[0]
        if inp.type not in _DTYPES:
            raise ToolkitError(f"{self.path}: input {inp.name!r} is {inp.type}; expected float or float16")
        self.input_name = inp.name
        self.input_dtype = _DTYPES[inp.type]
        shape = list(inp.shape)
        if len(shape) != 4:
            raise ToolkitError(f"{self.path}: input {inp.name!r} has shape {shape}; expected N×3×H×W")
        fixed_hw = [d for d in shape[2:] if isinstance(d, int)]
        if len(fixed_hw) == 2 and tuple(fixed_hw) != self.spec.input_size:
            raise ToolkitError(
                f"{self.path}: graph input is {shape[2]}×{shape[3]} but the metadata says "
                f"{self.spec.input_height}×{self.spec.input_width}"
            )
        self.fixed_batch = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None
        names = [o.name for o in outputs]
        self.output_name = self.spec.output_name if self.spec.output_name in names else names[0]
        self.providers = self.session.get_providers()
        self.name = f"onnxruntime ({self.providers[0]})"
        log.debug("%s: %s, input %s %s, output %s", self.path, self.name, self.input_name, shape, self.output_name)

    def infer(self, batch: np.ndarray) -> np.ndarray:
        batch = self.check_batch(batch)
        return self.session.run([self.output_name], {self.input_name: batch})[0]

    def close(self) -> None:
        self.session = None
