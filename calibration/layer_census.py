"""Layer census of an ONNX graph: how many compute layers run INT8, FP16 and FP32 in a graph.

Why: on strongly typed TensorRT (11, RTX) the parsed network's types *are* the precisions the
engine runs, so counting them before the build proves the mixed INT8 + FP16 graph is what
we meant (no FP32 layer outside the overflow guard's list). Where no TensorRT is installed,
the ONNX graph's tensor types give the same count (:func:`onnx_census`).

Counting rules (one for both sources): data-movement and bookkeeping layers (Q/DQ, Cast,
Constant, Shuffle/Reshape, Identity, Shape, Gather, ...) are not compute and not counted; a
Conv/MatMul whose activation input comes from a DequantizeLinear runs INT8; every other
compute layer runs in its output's type. The TensorRT network census is
``deeplab_trt.builder.census`` (it needs TensorRT, which calibration does not import).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

#: ONNX ops that move or describe data rather than compute on it.
ONNX_NON_COMPUTE = frozenset(
    {
        "QuantizeLinear", "DequantizeLinear", "Cast", "Constant", "Identity", "Reshape", "Shape", "Gather",
        "Unsqueeze", "Squeeze", "Flatten", "Transpose", "Slice", "Concat", "ConstantOfShape", "Expand",
    }
)  # fmt: skip
ONNX_INT8_OPS = frozenset({"Conv", "ConvTranspose", "MatMul", "Gemm"})


@dataclass
class Census:
    """Compute layers per precision and the names of the FP32 ones (to compare with the guard)."""

    int8: int = 0
    fp16: int = 0
    fp32: int = 0
    other: int = 0
    fp32_layers: list[str] = field(default_factory=list)
    source: str = "onnx"

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        """``INT8 69 / FP16 103 / FP32 0`` (for tables and logs)."""
        return f"INT8 {self.int8} / FP16 {self.fp16} / FP32 {self.fp32}"

    def counts(self) -> dict[str, int]:
        """{"int8": n, "fp16": n, "fp32": n}: the columns bench and the calibration report show."""
        return {"int8": self.int8, "fp16": self.fp16, "fp32": self.fp32}

    def add(self, kind: str, name: str) -> None:
        setattr(self, kind, getattr(self, kind) + 1)
        if kind == "fp32":
            self.fp32_layers.append(name)


def onnx_census(model) -> Census:
    """Census of an ONNX model from its tensor types (after shape inference).

    Args:
        model: an ``onnx.ModelProto`` or a path.
    """
    import onnx

    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model))
    inferred = onnx.shape_inference.infer_shapes(model)
    graph = inferred.graph
    types = {vi.name: vi.type.tensor_type.elem_type for vi in [*graph.value_info, *graph.output, *graph.input]}
    types.update({t.name: t.data_type for t in graph.initializer})
    producer = {o: n for n in graph.node for o in n.output}
    census = Census(source="onnx")
    names = {onnx.TensorProto.FLOAT16: "fp16", onnx.TensorProto.FLOAT: "fp32"}
    for k, node in enumerate(graph.node):
        if node.op_type in ONNX_NON_COMPUTE:
            continue
        name = node.name or f"{node.op_type}_{k}"
        src = producer.get(node.input[0]) if node.input else None
        while src is not None and src.op_type == "Cast":  # the mixed graph's DQ→Cast(FP16)
            src = producer.get(src.input[0])
        if node.op_type in ONNX_INT8_OPS and src is not None and src.op_type == "DequantizeLinear":
            census.add("int8", name)
            continue
        census.add(names.get(types.get(node.output[0]), "other"), name)
    return census
