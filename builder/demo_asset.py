"""The demo model shipped as a weights-free ONNX template, so ``deeplab-trt demo`` runs without torch.

Why a template and not the plain export: the FP32 export (``deeplab-trt export --model demo
--head lowres``) is 44 MB, twice the checkpoint, because the exporter folds each BatchNorm into
its convolution and the folded weights are no longer FP16 numbers; and the checkpoint's FP16
weights are already in the repository, in ``demo_model.pt``. Each folded weight is exactly
``float32(w16) * scale`` (one IEEE multiply by the per-channel BatchNorm scale the exporter
computed), so the template is the export's graph with the weights rebuilt by ``Cast`` → ``Mul``
nodes from FP16 initializers, and each FP16 initializer that is a checkpoint tensor is an empty
placeholder whose ``doc_string`` names its state-dict key. What it does hold: the graph, the
metadata, the FP32 scales and the few initializers that are not checkpoint tensors (a few
hundred KB).

:func:`expand_onnx` fills the placeholders from ``demo_model.pt`` (read without torch by
:mod:`deeplab_trt.builder.torch_checkpoint`) and folds the ``Cast``/``Mul`` nodes with numpy
back into the very initializers of the export: same names, same bytes, same graph (the
metadata differs only in naming the checkpoint by its repository path), so labels and engines
are those of the export. The scales are stored rather than recomputed because torch's CPU
``sqrt`` is not always the correctly rounded one numpy uses (measured: 27 of the 53 folded
weights would differ by an ulp or two).

The template is derived from ``demo_model.pt`` by :func:`write_demo_onnx` (needs torch)::

    python -m deeplab_trt.builder.demo_asset          # rewrites builder/assets/demo_model.template.onnx

It records the checkpoint's SHA-256, so a retrained checkpoint without a regenerated template is
noticed (the demo then exports with torch, as it did before this file existed).

``expand_onnx(..., dynamic_batch=(1, 8, 8))`` gives the same model with a symbolic batch dimension,
as ``export_onnx(dynamic_batch=...)`` would (the multi-stream benchmark batches N streams in one
inference). Why no second template: the graph holds no batch-sized constant (its one shape-dependent
op, the ASPP pooling branch's ``Resize``, takes the batch from ``Shape`` of its input), so only the
declared input/output dimension and the metadata change. Measured with ONNX Runtime CPU: each
image of a batch of 1, 2, 4 or 8 gives bit for bit its batch-1 output, the torch export with a
dynamic batch gives the same outputs bit for bit and the same metadata, and the fixed-batch file
the same labels (its logits differ by an ulp or two: ORT plans static shapes its own way);
``tests/test_demo_asset.py``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from deeplab_trt.builder.torch_checkpoint import read_state_dict
from deeplab_trt.runtime.atomic import atomic_path
from deeplab_trt.runtime.cli_types import parse_batch_range
from deeplab_trt.runtime.engine_record import sha256_file
from deeplab_trt.runtime.errors import InvalidModelError

DEMO_ONNX_PATH = Path(__file__).resolve().parent / "assets" / "demo_model.template.onnx"
#: metadata key holding the SHA-256 of the checkpoint the template was derived from
SOURCE_KEY = "source_sha256"
_FP16, _SCALE = "/fp16", "/scale"  # suffixes of the compact file's own initializers
#: ``doc_string`` prefix of a placeholder initializer; the rest is its key in the checkpoint's state dict
_KEY = "state_dict key: "


def source_sha256(path: Path = DEMO_ONNX_PATH) -> str | None:
    """The checkpoint SHA-256 recorded in the template (None when absent or unrecorded)."""
    import onnx

    if not path.is_file():
        return None
    model = onnx.load(str(path), load_external_data=False)
    return next((p.value for p in model.metadata_props if p.key == SOURCE_KEY), None)


def expand_onnx(
    source: Path, output: Path, *, checkpoint: Path | None = None, dynamic_batch: tuple[int, int, int] | None = None
) -> None:
    """Write ``source`` (the template) to ``output`` with its weights filled in and folded.

    The placeholders get their tensors from ``checkpoint``; then the ``Cast``/``Mul`` nodes
    whose inputs are all initializers are folded with numpy's IEEE cast and multiply, which is
    what the exporter did. ``output`` is written atomically.

    Args:
        source: the template (:data:`DEMO_ONNX_PATH`).
        output: where the plain FP32 ONNX goes.
        checkpoint: the ``.pt`` the template was derived from (default: the demo checkpoint).
        dynamic_batch: ``(min, opt, max)``: a symbolic batch dimension, the range recorded as
            ``export_onnx(dynamic_batch=...)`` records it (:func:`set_dynamic_batch`); default: batch 1.
    """
    import onnx

    dyn = parse_batch_range(dynamic_batch, flag="dynamic_batch")
    if checkpoint is None:
        from deeplab_trt.builder.models import DEMO_PATH

        checkpoint = DEMO_PATH
    try:
        model = onnx.load(str(source))
    except Exception as exc:  # DecodeError, OSError ...  # noqa: BLE001
        raise InvalidModelError(f"{source}: not a readable ONNX model ({type(exc).__name__})") from exc
    fill_weights(model, read_state_dict(checkpoint), source=source)
    fold_weights(model)
    props = [p for p in model.metadata_props if p.key != SOURCE_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(props)
    if dyn is not None:
        set_dynamic_batch(model, dyn)
    with atomic_path(output) as tmp:
        onnx.save(model, str(tmp))


def set_dynamic_batch(model, batch_range: tuple[int, int, int]) -> None:
    """Make ``model``'s batch dimension symbolic (in place) and record the range in its metadata.

    What ``export_onnx(dynamic_batch=...)`` writes: input and output dimension 0 named ``batch``,
    ``extra["dynamic_batch"] = [min, opt, max]`` in place of ``extra["batch"]``, and ``batch`` as the
    first entry of ``extra["output_shape"]``. Only for a graph that takes its batch from its input
    (the demo graph does: see the module docstring).

    Args:
        model: the expanded demo ONNX (``onnx.ModelProto``).
        batch_range: ``(min, opt, max)``, the optimization profile an engine builder will use.
    """
    for value in (*model.graph.input, *model.graph.output):
        dim = value.type.tensor_type.shape.dim[0]
        dim.Clear()
        dim.dim_param = "batch"
    for prop in model.metadata_props:
        if prop.key == "extra":
            extra = {  # where the export puts it, in place of "batch"
                ("dynamic_batch" if k == "batch" else k): (list(batch_range) if k == "batch" else v)
                for k, v in json.loads(prop.value).items()
            }
            if isinstance(extra.get("output_shape"), list):
                extra["output_shape"][0] = "batch"
            prop.value = json.dumps(extra)


def fill_weights(model, state_dict: dict[str, np.ndarray], *, source: Path) -> None:
    """Fill each placeholder initializer of ``model`` (changed in place) with its checkpoint tensor.

    Args:
        model: a template (``onnx.ModelProto``).
        state_dict: the checkpoint's tensors by key (:func:`read_state_dict`).
        source: the template's path, for the error message.
    """
    from onnx import helper, numpy_helper

    for tensor in model.graph.initializer:
        if not tensor.doc_string.startswith(_KEY):
            continue
        key = tensor.doc_string[len(_KEY) :]
        value = state_dict.get(key)
        want = (helper.tensor_dtype_to_np_dtype(tensor.data_type), tuple(tensor.dims))
        if value is None or (value.dtype, value.shape) != want:
            got = "absent" if value is None else f"{value.dtype} {value.shape}"
            raise InvalidModelError(f"{source}: {tensor.name} wants checkpoint tensor {key!r} ({want}), it is {got}")
        tensor.CopyFrom(numpy_helper.from_array(value, tensor.name))


def fold_weights(model) -> None:
    """Fold ``model``'s ``Cast``/``Mul`` nodes over initializers (in place) into the export's initializers.

    Args:
        model: a filled template (``onnx.ModelProto``).
    """
    from onnx import numpy_helper

    graph = model.graph
    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    kept = []
    for node in graph.node:
        if node.op_type in ("Cast", "Mul") and all(name in values for name in node.input):
            args = [values[name] for name in node.input]
            values[node.output[0]] = args[0].astype(np.float32) if node.op_type == "Cast" else args[0] * args[1]
        else:
            kept.append(node)
    used = {name for node in kept for name in node.input}
    # The export's initializer order, so the file is the export's byte for byte: each compact
    # initializer stands where its weight stood, under the weight's name plus a suffix.
    order = dict.fromkeys(_base_name(t.name) for t in graph.initializer)
    del graph.node[:]
    graph.node.extend(kept)
    del graph.initializer[:]
    graph.initializer.extend(numpy_helper.from_array(values[name], name) for name in order if name in used)


def template_onnx(model, state_dict: dict[str, np.ndarray]):
    """Replace each FP16 initializer of the compact ``model`` (in place) that is a checkpoint tensor by a placeholder.

    A placeholder keeps name, type and shape, no data, and names its state-dict key in its
    ``doc_string``; :func:`fill_weights` undoes this.

    Args:
        model: a compact ONNX (:func:`compact_onnx`).
        state_dict: the checkpoint's tensors by key (:func:`read_state_dict`).
    """
    from onnx import TensorProto, numpy_helper

    keys: dict[tuple, str] = {}
    for key, value in state_dict.items():
        if value.dtype == np.float16:  # the weights; not e.g. an int64 counter equal to a shape constant
            keys.setdefault((value.dtype.str, value.shape, value.tobytes()), key)
    for tensor in model.graph.initializer:
        a = numpy_helper.to_array(tensor)
        key = keys.get((a.dtype.str, a.shape, a.tobytes()))
        if key is not None:
            placeholder = TensorProto(name=tensor.name, data_type=tensor.data_type, doc_string=_KEY + key)
            placeholder.dims.extend(tensor.dims)
            tensor.CopyFrom(placeholder)
    return model


def _base_name(name: str) -> str:
    for suffix in (_FP16, _SCALE):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def compact_onnx(model, scales: dict[str, tuple[np.ndarray, np.ndarray]]):
    """Re-encode the FP32 ``model`` (an ``onnx.ModelProto``, changed in place) as the compact form.

    ``scales`` maps a folded weight's initializer name to ``(w16, scale)`` with
    ``float32(w16) * scale == weight`` exactly (checked); other FP32 initializers that are
    FP16 numbers become FP16 behind a ``Cast``; the rest stay as they are.
    """
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits = [], []
    for tensor in model.graph.initializer:
        a = numpy_helper.to_array(tensor)
        name = tensor.name
        if name in scales:
            w16, scale = scales[name]
            if not np.array_equal(w16.astype(np.float32) * scale, a):
                raise InvalidModelError(f"{name}: float32(w16) * scale does not rebuild the exported weight")
            inits += [numpy_helper.from_array(w16, name + _FP16), numpy_helper.from_array(scale, name + _SCALE)]
            nodes += [
                helper.make_node("Cast", [name + _FP16], [name + "/cast"], to=TensorProto.FLOAT),
                helper.make_node("Mul", [name + "/cast", name + _SCALE], [name]),
            ]
        elif a.dtype == np.float32 and np.array_equal(a.astype(np.float16).astype(np.float32), a):
            inits.append(numpy_helper.from_array(a.astype(np.float16), name + _FP16))
            nodes.append(helper.make_node("Cast", [name + _FP16], [name], to=TensorProto.FLOAT))
        else:
            inits.append(tensor)
    graph = model.graph
    old_nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes + old_nodes)
    del graph.initializer[:]
    graph.initializer.extend(inits)
    return model


def folded_scales(net, state_dict) -> dict[bytes, tuple[np.ndarray, np.ndarray]]:
    """For each Conv→BatchNorm pair of ``net``: the folded weight's bytes → ``(w16, scale)``.

    The scale is computed with torch's own ops in the exporter's order
    (``gamma / sqrt(var + eps)``, torch's ``_jit_pass_onnx_eval_peephole``); the pair is found
    by the checkpoint's key order (a BatchNorm follows its convolution's weight).
    """
    import torch

    modules = dict(net.named_modules())
    out, conv = {}, None
    for key, value in state_dict.items():
        if key.endswith(".running_var"):
            prefix = key[: -len(".running_var")]
            gamma, var = (state_dict[f"{prefix}.{s}"].float() for s in ("weight", "running_var"))
            scale = gamma.div(var.add(modules[prefix].eps).sqrt())
            w = state_dict[conv].float().clone()
            for i in range(w.size(0)):
                w[i] = w[i].mul(scale[i])
            shape = (-1,) + (1,) * (w.dim() - 1)
            out[w.numpy().tobytes()] = (state_dict[conv].numpy(), scale.numpy().reshape(shape))
        elif key.endswith("weight") and torch.is_tensor(value) and value.dim() == 4:
            conv = key
    return out


def write_demo_onnx(output: Path = DEMO_ONNX_PATH, *, progress: bool = True) -> Path:
    """Export the demo checkpoint (low-res head) and write its template to ``output`` (needs torch).

    The result is checked before it is renamed into place: :func:`expand_onnx` of it and the
    checkpoint must give the export's initializers byte for byte.

    Args:
        output: where the template goes (default: the shipped asset).
        progress: print the export's steps on stderr.
    """
    import onnx
    from onnx import numpy_helper

    from deeplab_trt.builder.export import export_onnx
    from deeplab_trt.builder.models import DEMO_PATH, build_model, load_checkpoint, state_dict_of

    with tempfile.TemporaryDirectory() as tmp:
        plain = Path(tmp) / "demo.onnx"
        export_onnx(plain, model="demo", head="lowres", progress=progress)
        model = onnx.load(str(plain))
        sd = state_dict_of(load_checkpoint(DEMO_PATH), DEMO_PATH)
        by_bytes = folded_scales(build_model("demo", "none").net, sd)
        scales = {
            t.name: by_bytes[raw]
            for t in model.graph.initializer
            if (raw := numpy_helper.to_array(t).tobytes()) in by_bytes
        }
        compact_onnx(model, scales)
        template_onnx(model, read_state_dict(DEMO_PATH))
        for prop in model.metadata_props:  # the export names the checkpoint by this machine's path
            prop.value = prop.value.replace(str(DEMO_PATH), "builder/assets/demo_model.pt")
        model.metadata_props.add(key=SOURCE_KEY, value=sha256_file(DEMO_PATH))
        with atomic_path(output) as compact:
            onnx.save(model, str(compact))
            expanded = Path(tmp) / "expanded.onnx"
            expand_onnx(compact, expanded, checkpoint=DEMO_PATH)
            if _weights(expanded) != _weights(plain):
                raise InvalidModelError(f"{output}: the template does not expand to the export's weights")
    if progress:
        print(f"wrote {output} ({output.stat().st_size / 1e3:.0f} KB; {len(scales)} folded weights)", file=sys.stderr)
    return output


def _weights(path: Path) -> dict[str, bytes]:
    """Initializer name → dtype and bytes: what "the same weights" means for two ONNX files."""
    import onnx
    from onnx import numpy_helper

    out = {}
    for t in onnx.load(str(path)).graph.initializer:
        a = numpy_helper.to_array(t)
        out[t.name] = a.dtype.str.encode() + str(a.shape).encode() + a.tobytes()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Regenerate the demo model's ONNX template from its checkpoint.")
    parser.add_argument("--output", type=Path, default=DEMO_ONNX_PATH, help="default: the shipped asset")
    args = parser.parse_args(argv)
    write_demo_onnx(args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
