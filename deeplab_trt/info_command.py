"""``deeplab-trt info FILE``: what an ONNX model or a TensorRT engine is, in one screen.

Why: before running, benchmarking or shipping a file, the first question is "what is
this?": classes, input size and dtype, precision, which TensorRT built it for which GPUs.
ONNX files answer from their graph and metadata; engines answer from their sidecar and,
where a GPU and the right TensorRT are present, from the deserialised engine itself
(I/O and per-layer information from ``IEngineInspector``). Deserialising needs a GPU, so
without one the sidecar's build record is shown and the output says so.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from deeplab_trt.runtime.errors import ToolkitError

ONNX_SUFFIXES = (".onnx",)


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "info",
        help="describe an ONNX model or a TensorRT engine",
        description="Describe an ONNX model (spec from metadata, I/O, opset, node and Q/DQ counts) "
        "or a TensorRT engine (its sidecar; with a GPU also the engine's own I/O and "
        "layers).",
    )
    p.add_argument("file", type=Path, metavar="FILE", help="model.onnx, model.engine (or its .engine.json sidecar)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.add_argument("--layers", action="store_true", help="engines, with a GPU: list every layer")
    p.set_defaults(func=run)
    return p


# ----- ONNX ------------------------------------------------------------------------------------
def _value_info(vi) -> dict[str, Any]:
    import onnx

    t = vi.type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in t.shape.dim]
    return {
        "name": vi.name,
        "shape": dims,
        "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name if t.elem_type else "?",
    }


def describe_onnx(path: Path) -> dict[str, Any]:
    import onnx

    from deeplab_trt.runtime.spec import ModelSpec, load_onnx

    model = load_onnx(path, load_external_data=False)
    meta = {p.key: p.value for p in model.metadata_props}
    try:
        spec = ModelSpec.from_metadata(meta, source=str(path)).to_dict()
        spec_note = None
    except ToolkitError as exc:
        spec, spec_note = None, str(exc)
    inits = {i.name for i in model.graph.initializer}
    ops = Counter(n.op_type for n in model.graph.node)
    weight_types = Counter(onnx.TensorProto.DataType.Name(i.data_type).lower() for i in model.graph.initializer)
    return {
        "kind": "onnx",
        "file": str(path),
        "bytes": path.stat().st_size,
        "producer": f"{model.producer_name} {model.producer_version}".strip(),
        "opset": {(o.domain or "ai.onnx"): o.version for o in model.opset_import},
        "inputs": [_value_info(i) for i in model.graph.input if i.name not in inits],
        "outputs": [_value_info(o) for o in model.graph.output],
        "nodes": len(model.graph.node),
        "qdq_nodes": ops.get("QuantizeLinear", 0) + ops.get("DequantizeLinear", 0),
        "cast_nodes": ops.get("Cast", 0),
        "initializers": dict(weight_types),
        "top_ops": dict(ops.most_common(8)),
        "spec": spec,
        "spec_note": spec_note,
    }


# ----- engines -----------------------------------------------------------------------------------
def describe_engine(path: Path, layers: bool = False) -> dict[str, Any]:
    from deeplab_trt.runtime.engine_record import EngineRecord, engine_of, sidecar_path
    from deeplab_trt.runtime.tensorrt_flavour import current_gpu

    path = engine_of(path)
    record = EngineRecord.read(path)
    info: dict[str, Any] = {
        "kind": "engine",
        "file": str(path),
        "bytes": path.stat().st_size,
        "sidecar": str(sidecar_path(path)),
        "built_with": record.built_label,
        "record": record.to_dict(),
        "engine": None,
    }
    try:
        record.check_engine_bytes(path.read_bytes(), str(path))
        info["integrity"] = "size and sha256 match the sidecar"
    except ToolkitError as exc:
        info["integrity"] = str(exc)
    gpu, why = current_gpu()
    if gpu is None:
        info["engine_note"] = f"deserialising needs a CUDA GPU ({why}); showing the build record from the sidecar"
        return info
    from deeplab_trt.runtime.engine_loader import engine_io, load_engine

    try:
        loaded = load_engine(path)
    except ToolkitError as exc:
        info["engine_note"] = f"not loadable here: {exc}"
        return info
    trt, engine = loaded.flavour.module, loaded.engine
    report: dict[str, Any] = {"io": engine_io(engine, trt), "layers": getattr(engine, "num_layers", None)}
    if loaded.flavour.has_engine_inspector:
        try:
            inspector = engine.create_engine_inspector()
            text = inspector.get_engine_information(trt.LayerInformationFormat.JSON)
            parsed = json.loads(text)
            layer_list = parsed.get("Layers", []) if isinstance(parsed, dict) else []
            report["layer_info"] = (
                layer_list
                if layers
                else [(entry.get("Name") if isinstance(entry, dict) else str(entry)) for entry in layer_list]
            )
        except Exception as exc:  # noqa: BLE001 - inspector output differs between versions
            report["layer_info_note"] = f"engine inspector failed ({type(exc).__name__}: {exc})"
    info["engine"] = report
    return info


def format_text(info: dict[str, Any]) -> str:
    from deeplab_trt.runtime.engine_record import EngineRecord, shape_text

    lines = []
    if info["kind"] == "onnx":
        lines.append(
            f"{info['file']}: ONNX, {info['bytes'] / 1e6:.1f} MB, {info['producer'] or 'unknown producer'}, "
            f"opset {', '.join(f'{k} {v}' for k, v in info['opset'].items())}"
        )
        for io in info["inputs"]:
            lines.append(f"  input   {io['name']}: {shape_text(io['shape'])} {io['dtype']}")
        for io in info["outputs"]:
            lines.append(f"  output  {io['name']}: {shape_text(io['shape'])} {io['dtype']}")
        lines.append(
            f"  nodes {info['nodes']} (Q/DQ {info['qdq_nodes']}, Cast {info['cast_nodes']}); "
            f"initializers {', '.join(f'{k} {v}' for k, v in info['initializers'].items()) or 'none'}"
        )
        lines.append(f"  ops: {', '.join(f'{k} {v}' for k, v in info['top_ops'].items())}")
        spec = info["spec"]
    else:
        headline, *details = EngineRecord.from_dict(info["record"], source=info["sidecar"]).describe()
        lines.append(f"{info['file']}: TensorRT engine, {info['bytes'] / 1e6:.1f} MB, {headline}")
        lines += [f"  {line}" for line in details]
        lines.append(f"  file: {info.get('integrity', '?')}")
        if info.get("engine_note"):
            lines.append(f"  engine: {info['engine_note']}")
        if info.get("engine"):
            eng = info["engine"]
            lines.append(f"  engine reports {eng.get('layers')} layers; I/O:")
            for io in eng["io"]:
                lines.append(f"    {io['mode']:<7} {io['name']}: {shape_text(io['shape'])} {io['dtype']}")
            for layer in eng.get("layer_info") or []:
                lines.append(f"    layer {layer if isinstance(layer, str) else json.dumps(layer)}")
        spec = info["record"].get("spec")
    if spec:
        classes = spec["classes"]
        shown = ", ".join(classes[:8]) + (f", … ({len(classes)} classes)" if len(classes) > 8 else "")
        lines.append(
            f"  model: {spec['name']}, head {spec['head']}, input {spec['input_height']}×{spec['input_width']} "
            f"{spec.get('channel_order', 'RGB')}, classes: {shown}"
        )
    elif info.get("spec_note"):
        lines.append(f"  model: {info['spec_note']}")
    return "\n".join(lines)


def describe(path: Path, layers: bool = False) -> dict[str, Any]:
    """ONNX by suffix (or content), engines by suffix/sidecar."""
    if path.is_dir():
        raise ToolkitError(f"{path}: is a directory, expected an .onnx or engine file")
    if path.suffix.lower() in ONNX_SUFFIXES:
        return describe_onnx(path)
    from deeplab_trt.runtime.engine_record import sidecar_path

    if path.suffix.lower() == ".json" or sidecar_path(path).exists():
        return describe_engine(path, layers)
    if not path.exists():
        raise ToolkitError(f"{path}: no such file")
    try:
        return describe_onnx(path)
    except ToolkitError as exc:
        raise ToolkitError(
            f"{path}: neither an ONNX model nor an engine with a sidecar "
            f"({path.name}.json); engines come from 'deeplab-trt build'"
        ) from exc


def run(args: argparse.Namespace) -> int:
    info = describe(args.file, layers=args.layers)
    if args.json:
        json.dump(info, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
    else:
        print(format_text(info))
    return 0
