"""The FP16 graph rewrite shared by the FP16 pass and the mixed INT8 + FP16 Q/DQ graph.

Why here and not in ``builder/fp16.py``: calibration may import only runtime (DESIGN.md
layering), yet the mixed INT8 graph (:mod:`deeplab_trt.calibration.quantize`, ``rest="fp16"``)
needs exactly the FP16 pass's conversion and overflow guard. One converter, in the lower
layer; ``builder/fp16.py`` stays the owner of the FP16 *pass* (probe frames, the agreement
gate against FP32, the I/O conventions, the engine sidecar record) and calls this module.
"""

from __future__ import annotations

import warnings

import numpy as np

from deeplab_trt.runtime.errors import ToolkitError, require

FP16_MAX = 65504.0
#: A node whose FP32 output exceeds this (on the probe frames) is kept in FP32.
OVERFLOW_LIMIT = 4096.0
#: Resize/Upsample are removed from the converter's default block list (see builder/fp16.py).
ALLOW_FP16_OPS = frozenset({"Resize", "Upsample"})
QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})


def default_block_ops() -> list[str]:
    """onnxconverter-common's FP16 block list minus Resize/Upsample."""
    return sorted(set(_float16().DEFAULT_OP_BLOCK_LIST) - ALLOW_FP16_OPS)


def _float16():
    """onnxconverter-common's FP16 converter: every engine-building extra brings it, ``fp16`` alone too."""
    return require("onnxconverter_common.float16", extra="fp16", purpose="the FP16 pass")


def ort_session(model_bytes_or_path, threads: int = 2):
    """An ONNX Runtime CPU session with quiet logs."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = threads
    return ort.InferenceSession(model_bytes_or_path, opts, providers=["CPUExecutionProvider"])


def float_tensors(model) -> list[str]:
    """Names of every FP32 tensor a node produces (after shape inference)."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    types = {
        vi.name: vi.type.tensor_type.elem_type for vi in list(inferred.graph.value_info) + list(inferred.graph.output)
    }
    return [out for node in model.graph.node for out in node.output if out and types.get(out) == onnx.TensorProto.FLOAT]


def measure_fp32(model, batches: list[np.ndarray], output_name: str):
    """Run the FP32 graph with every float intermediate exposed.

    Returns (outputs per batch, {tensor: max |value|}, {tensor: producing node name}).
    """
    import onnx

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    names = float_tensors(probe)
    existing = {o.name for o in probe.graph.output}
    for name in names:
        if name not in existing:
            probe.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    session = ort_session(probe.SerializeToString())
    input_name = session.get_inputs()[0].name
    fetch = [output_name] + [n for n in names if n != output_name]
    peaks = dict.fromkeys(fetch[1:], 0.0)
    outputs = []
    for batch in batches:
        values = session.run(fetch, {input_name: batch})
        outputs.append(values[0])
        for name, value in zip(fetch[1:], values[1:]):
            if value.size:
                peaks[name] = max(peaks[name], float(np.max(np.abs(value))))
    producer = {
        out: node.name or f"{node.op_type}_{i}" for i, node in enumerate(model.graph.node) for out in node.output
    }
    return outputs, peaks, producer


def hot_nodes(peaks: dict[str, float], producer: dict[str, str], limit: float = OVERFLOW_LIMIT) -> list[str]:
    """The overflow guard: nodes whose FP32 output exceeded ``limit`` on the probe frames stay FP32."""
    return sorted({producer[t] for t, peak in peaks.items() if peak > limit and t in producer})


def convert_graph_fp16(model, *, block_ops: list[str], block_nodes: list[str], label: str):
    """``model`` with weights and compute in FP16 except ``block_ops``/``block_nodes``; FP16 I/O.

    Returns (converted model, number of constants clamped to the FP16 range). ``label`` names
    the source in the one-line error. Constants are clamped to ±65504, not the converter's ±1e4.
    """
    float16 = _float16()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            converted = float16.convert_float_to_float16(
                model,
                keep_io_types=False,
                op_block_list=block_ops,
                node_block_list=block_nodes,
                max_finite_val=FP16_MAX,
                min_positive_val=1e-7,
            )
        except Exception as exc:  # noqa: BLE001 - the converter raises ValueError/AssertionError
            raise ToolkitError(
                f"{label}: FP16 conversion failed ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
            ) from exc
    return converted, sum("truncated" in str(w.message) for w in caught)
