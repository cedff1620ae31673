"""Layer census of a parsed TensorRT network: how many compute layers run INT8, FP16 and FP32.

Why before the build: on strongly typed TensorRT (11, RTX) the parsed network's types *are*
the precisions the engine runs, so counting them proves the mixed INT8 + FP16 graph is what
we meant (no FP32 layer outside the overflow guard's list). Same counting rules and
:class:`~deeplab_trt.calibration.layer_census.Census` as the ONNX census (which lives in
calibration, since it needs only onnx and ``calibrate --report`` uses it).
"""

from __future__ import annotations

from typing import Any

from deeplab_trt.calibration.layer_census import Census

#: TensorRT LayerType names that are not compute (same idea as ONNX_NON_COMPUTE).
TRT_NON_COMPUTE = frozenset(
    {"QUANTIZE", "DEQUANTIZE", "CAST", "CONSTANT", "IDENTITY", "SHUFFLE", "SHAPE", "GATHER", "SLICE", "CONCATENATION"}
)
TRT_INT8_LAYERS = frozenset({"CONVOLUTION", "DECONVOLUTION", "MATRIX_MULTIPLY"})


def network_census(network: Any) -> Census:
    """Census of a parsed TensorRT ``INetworkDefinition`` (before build: the types it declares)."""
    census = Census(source="tensorrt network")
    producer: dict[str, Any] = {}
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        for j in range(layer.num_outputs):
            producer[layer.get_output(j).name] = layer
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        kind = layer.type.name
        if kind in TRT_NON_COMPUTE:
            continue
        first = layer.get_input(0) if layer.num_inputs else None
        src = producer.get(first.name) if first is not None else None
        while src is not None and src.type.name == "CAST" and src.num_inputs:  # DQ→Cast(FP16)
            src = producer.get(src.get_input(0).name)
        if kind in TRT_INT8_LAYERS and src is not None and src.type.name == "DEQUANTIZE":
            census.add("int8", layer.name)
            continue
        dtype = layer.get_output(0).dtype.name
        census.add({"HALF": "fp16", "FLOAT": "fp32"}.get(dtype, "other"), layer.name)
    return census


def parsed_census(trt: Any, onnx_path) -> Census:
    """Parse ``onnx_path`` strongly typed with the TensorRT module ``trt`` and count its layers.

    Args:
        trt: ``tensorrt`` or ``tensorrt_rtx`` bindings (parsing needs no GPU on TensorRT-RTX).
        onnx_path: the graph to parse.
    """
    from deeplab_trt.runtime.errors import ToolkitError

    logger = trt.Logger(trt.Logger.ERROR)
    builder = trt.Builder(logger)
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    network = builder.create_network(0 if flag is None else 1 << int(flag))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ToolkitError(f"{onnx_path}: TensorRT could not parse it ({errors})")
    return network_census(network)
