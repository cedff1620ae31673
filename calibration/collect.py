"""Activation statistics: ONNX Runtime runs the calibration batches, histograms take the values.

Why ONNX Runtime: it runs the FP32 ONNX graph the Q/DQ pass rewrites, on CPU anywhere and on
CUDA where ``onnxruntime-gpu`` is installed, without TensorRT. The tensors to observe (the
activation inputs of quantized ops, from :func:`deeplab_trt.calibration.qdq.plan_qdq`) are added as extra
graph outputs of an in-memory copy of the model; each batch's values go straight into the
per-tensor :class:`~deeplab_trt.calibration.histogram.AbsHistogram` and are dropped, so memory is one
batch of activations plus ``num_bins`` counters per tensor, whatever the number of frames.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, Sequence

import numpy as np
import onnx
from onnx import helper

from deeplab_trt.calibration.histogram import DEFAULT_BINS, AbsHistogram
from deeplab_trt.runtime.errors import ToolkitError

log = logging.getLogger(__name__)


def default_providers() -> list[str]:
    """CUDA EP first where ONNX Runtime has it, CPU always."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


def _observed_model(model: onnx.ModelProto, tensors: Sequence[str]) -> tuple[bytes, list[str]]:
    """Serialized copy of ``model`` that also outputs ``tensors`` (those that are not graph inputs)."""
    observed = onnx.ModelProto()
    observed.CopyFrom(model)
    graph = observed.graph
    inputs = {i.name for i in graph.input}
    outputs = {o.name for o in graph.output}
    fetched = []
    for name in tensors:
        if name in inputs:
            continue
        if name not in outputs:
            # Type only: shapes are whatever the run produces (ONNX Runtime accepts that).
            graph.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
        fetched.append(name)
    return observed.SerializeToString(), fetched


def _input_batch(model: onnx.ModelProto) -> tuple[str, int | None]:
    """(input name, fixed batch size or None when dynamic)."""
    initializers = {t.name for t in model.graph.initializer}
    real = [i for i in model.graph.input if i.name not in initializers]
    if len(real) != 1:
        raise ToolkitError(f"model has {len(real)} inputs; calibration supports single-input models")
    dims = real[0].type.tensor_type.shape.dim
    batch = dims[0].dim_value if dims and dims[0].HasField("dim_value") else None
    return real[0].name, batch


def collect_histograms(
    model: onnx.ModelProto,
    batches: Iterable[np.ndarray],
    tensors: Sequence[str],
    *,
    total: int | None = None,
    num_bins: int = DEFAULT_BINS,
    providers=None,
    progress: bool = True,
    threads: int = 0,
) -> dict[str, AbsHistogram]:
    """Run ``batches`` through ``model`` and histogram ``tensors``; returns name → histogram.

    ``total``: number of frames, for the progress bar. ``threads``: ONNX Runtime intra-op
    threads (0 = its default).
    """
    import onnxruntime as ort
    from tqdm import tqdm

    input_name, _ = _input_batch(model)
    payload, fetched = _observed_model(model, tensors)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    session = ort.InferenceSession(payload, opts, providers=providers or default_providers())
    del payload
    hists = {name: AbsHistogram(num_bins) for name in tensors}
    seen = 0
    with tqdm(
        total=total,
        unit="frame",
        desc="calibrate",
        file=sys.stderr,
        disable=not progress,
        leave=False,
        dynamic_ncols=True,
    ) as bar:
        for batch in batches:
            if input_name in hists:
                hists[input_name].update(batch)
            values = session.run(fetched, {input_name: batch})
            for name, value in zip(fetched, values):
                hists[name].update(value)
            del values
            seen += batch.shape[0]
            bar.update(batch.shape[0])
    if seen == 0:
        raise ToolkitError("calibration data yielded no frames")
    for name, h in hists.items():
        if h.nonfinite:
            log.warning("calibrate: %s had %d NaN/inf values (ignored)", name, h.nonfinite)
    return hists
