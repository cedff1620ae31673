"""A Triton Inference Server model repository from an exported model or a built engine.

Why: past one box, users serve on NVIDIA's stack (HTTP/gRPC, dynamic batching across clients,
metrics, Kubernetes), not on our process. Two models go into the repository:

* ``<name>`` -- the **segmenter**, Triton's python backend running this toolkit's runtime
  (:mod:`deeplab_trt.runtime.triton_python`): ``FRAMES`` (uint8 N×H×W×3 BGR) in, ``LABELS``
  (uint8 N×H×W, the frames' size) and optionally ``OVERLAY`` (uint8 N×H×W×3) out. ONNX models run
  on ONNX Runtime in a ``KIND_CPU`` instance, engines on the TensorRT backend in ``KIND_GPU``.
  Classes, palette and normalisation travel as config ``parameters`` (clients read them through
  the model-config API); the numerics come from the model file's own spec.
* ``<name>_plan`` (engines only) -- Triton's own ``tensorrt_plan`` model of the engine: input and
  output names, dtypes and dims and ``max_batch_size`` from the sidecar's profile, dynamic
  batching. Not for TensorRT-RTX engines: Triton's TensorRT backend links TensorRT, which cannot
  load them (the segmenter serves those).

Every ``config.pbtxt`` is text written here and parsed with Triton's own ``ModelConfig`` schema in
the tests. Each model directory is assembled next to the repository and renamed into it, so an
interrupted or refused deploy leaves no half-written model for Triton to trip over.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deeplab_trt.runtime.atomic import atomic_dir
from deeplab_trt.runtime.backends.base import ENGINE_SUFFIXES
from deeplab_trt.runtime.engine_record import EngineRecord, sidecar_path
from deeplab_trt.runtime.errors import ToolkitError
from deeplab_trt.runtime.preprocess import POLICIES
from deeplab_trt.runtime.spec import ModelSpec, spec_from_onnx

log = logging.getLogger(__name__)

#: os.pathsep-separated site directories the generated model.py puts first on ``sys.path``
#: (Triton's python stub runs the system interpreter and ignores PYTHONPATH).
SITE_ENV = "DEEPLAB_TRT_TRITON_SITE"
KINDS = ("cpu", "gpu")
DEFAULT_MAX_BATCH = 8
#: numpy dtype names (as sidecars write them) → Triton data types.
TRITON_TYPES = {
    "float32": "TYPE_FP32",
    "float16": "TYPE_FP16",
    "bfloat16": "TYPE_BF16",
    "int8": "TYPE_INT8",
    "uint8": "TYPE_UINT8",
    "int32": "TYPE_INT32",
    "int64": "TYPE_INT64",
    "bool": "TYPE_BOOL",
}

MODEL_PY = '''"""deeplab-trt segmenter for Triton's python backend (written by 'deeplab-trt deploy triton').

Triton's python stub runs the system interpreter and ignores PYTHONPATH: set {env} in the
server's environment to the site directories (os.pathsep-separated, first wins) where deeplab-trt
and numpy are installed; unset, the interpreter's own packages are used.
"""

import os
import site
import sys


def _add_site_dirs(value):
    added = []
    for directory in (d for d in value.split(os.pathsep) if d):
        before = set(sys.path)
        site.addsitedir(directory)  # runs the directory's .pth files (editable installs, chained venvs)
        added += [p for p in sys.path if p not in before]
    sys.path[:] = added + [p for p in sys.path if p not in added]


_add_site_dirs(os.environ.get("{env}", ""))

from deeplab_trt.runtime.triton_python import TritonPythonModel  # noqa: E402,F401
'''.replace("{env}", SITE_ENV)


@dataclass(frozen=True)
class TritonModel:
    """What :func:`deploy_triton` wrote: the model's name, directory and kind (``segmenter``/``plan``)."""

    name: str
    path: Path
    kind: str


def _quote(text: str) -> str:
    """A protobuf text-format string literal (class names may hold quotes or non-ASCII)."""
    from google.protobuf import text_encoding  # protobuf comes with onnx

    return '"' + text_encoding.CEscape(text, as_utf8=True) + '"'


def _dims(values) -> str:
    return "[ " + ", ".join(str(int(v)) for v in values) + " ]"


def _tensor(name: str, dtype: str, dims) -> str:
    return f"  {{ name: {_quote(name)} data_type: {dtype} dims: {_dims(dims)} }}"


def _parameters(values: dict[str, Any]) -> str:
    return "".join(
        f"parameters {{ key: {_quote(k)} value {{ string_value: {_quote(v if isinstance(v, str) else json.dumps(v))} }} }}\n"
        for k, v in values.items()
    )


def _triton_type(dtype: str, source: str) -> str:
    if dtype not in TRITON_TYPES:
        raise ToolkitError(f"{source}: tensor type {dtype!r} has no Triton equivalent")
    return TRITON_TYPES[dtype]


def _engine_batch(record: EngineRecord, max_batch: int | None, source: str) -> tuple[int, dict[str, Any]]:
    """(Triton ``max_batch_size``, the input record): the profile's maximum, or 0 for a fixed batch."""
    inputs = [t for t in record.io if t.get("mode") == "input"]
    if len(inputs) != 1:
        raise ToolkitError(f"{source}: expected one engine input in the sidecar, found {len(inputs)}")
    inp = inputs[0]
    if int(inp["shape"][0]) != -1:
        if max_batch is not None and max_batch != int(inp["shape"][0]):
            raise ToolkitError(
                f"{source}: the engine's batch is fixed at {inp['shape'][0]}; --max-batch cannot change it"
            )
        return 0, inp
    limit = int(inp.get("profile", {}).get("max", [DEFAULT_MAX_BATCH])[0])
    if max_batch is not None and max_batch > limit:
        raise ToolkitError(f"{source}: --max-batch {max_batch} exceeds the engine profile's maximum batch {limit}")
    return (max_batch or limit), inp


def plan_config(record: EngineRecord, *, name: str, max_batch: int | None = None, instances: int = 1) -> str:
    """``config.pbtxt`` of Triton's ``tensorrt_plan`` model for an engine, from its sidecar.

    Args:
        record: the engine's record (:meth:`EngineRecord.read`).
        name: the Triton model name.
        max_batch: Triton's ``max_batch_size`` (default: the profile's maximum; must not exceed it).
        instances: execution instances on each GPU.
    """
    source = record.engine.file
    batch, _ = _engine_batch(record, max_batch, source)
    lines = [f"name: {_quote(name)}", 'platform: "tensorrt_plan"', f"max_batch_size: {batch}"]
    for mode in ("input", "output"):
        tensors = [t for t in record.io if t.get("mode") == mode]
        specs = [
            _tensor(t["name"], _triton_type(t["dtype"], source), t["shape"][1:] if batch else t["shape"])
            for t in tensors
        ]
        lines.append(f"{mode} [\n" + ",\n".join(specs) + "\n]")
    lines.append(f"instance_group [ {{ kind: KIND_GPU count: {int(instances)} }} ]")
    if batch:
        lines.append("dynamic_batching { max_queue_delay_microseconds: 1000 }")
    return "\n".join(lines) + "\n"


def segmenter_config(
    spec: ModelSpec,
    *,
    name: str,
    model_file: str,
    kind: str,
    max_batch: int = DEFAULT_MAX_BATCH,
    instances: int = 1,
    frame_size: tuple[int, int] | None = None,
    policy: str = "stretch",
    alpha: float = 0.5,
) -> str:
    """``config.pbtxt`` of the python-backend segmenter (frames in, labels and overlay out).

    Args:
        spec: the model's spec (classes, palette, mean/std become ``parameters``).
        name: the Triton model name.
        model_file: the model's file name inside the version directory.
        kind: ``cpu`` (ONNX Runtime) or ``gpu`` (TensorRT engine, or ONNX Runtime's CUDA provider).
        max_batch: Triton's ``max_batch_size``: the most frames one ``execute`` call may gather.
        instances: execution instances (per GPU for ``gpu``).
        frame_size: (height, width) every frame has; None accepts any size (dims -1).
        policy: ``stretch`` or ``letterbox`` (how frames are fitted to the model input).
        alpha: the overlay's blend weight.
    """
    if kind not in KINDS:
        raise ToolkitError(f"--kind {kind!r}: expected one of {', '.join(KINDS)}")
    if policy not in POLICIES:
        raise ToolkitError(f"unknown resize policy {policy!r} (expected one of {', '.join(POLICIES)})")
    if spec.num_classes > 256:
        raise ToolkitError(f"{model_file}: {spec.num_classes} classes do not fit the segmenter's uint8 LABELS")
    h, w = frame_size or (-1, -1)
    params = {
        "model_file": model_file,
        "policy": policy,
        "alpha": str(alpha),
        "classes": list(spec.classes),
        "palette": [list(p) for p in spec.palette[: spec.num_classes]],
        "mean": list(spec.mean),
        "std": list(spec.std),
        "input_size": [spec.input_height, spec.input_width],
        "head": spec.head,
    }
    return (
        "\n".join(
            [
                f"name: {_quote(name)}",
                'backend: "python"',
                f"max_batch_size: {int(max_batch)}",
                "input [\n" + _tensor("FRAMES", "TYPE_UINT8", (h, w, 3)) + "\n]",
                "output [\n"
                + _tensor("LABELS", "TYPE_UINT8", (h, w))
                + ",\n"
                + _tensor("OVERLAY", "TYPE_UINT8", (h, w, 3))
                + "\n]",
                f"instance_group [ {{ kind: KIND_{kind.upper()} count: {int(instances)} }} ]",
                "dynamic_batching { max_queue_delay_microseconds: 2000 }",
            ]
        )
        + "\n"
        + _parameters(params)
    )


def _check_name(name: str) -> None:
    if not name or name.startswith(".") or any(c in name for c in "/\\\0") or name.strip() != name:
        raise ToolkitError(f"--name {name!r}: not a usable Triton model (directory) name")


def _stage_model(model_dir: Path, config: str, files: dict[str, Path]) -> None:
    """A model directory: ``config.pbtxt`` and version ``1`` holding ``files``."""
    version = model_dir / "1"
    version.mkdir()
    (model_dir / "config.pbtxt").write_text(config)
    for target, source in files.items():
        shutil.copyfile(source, version / target)


def deploy_triton(
    model: str | os.PathLike,
    *,
    output: str | os.PathLike,
    name: str = "segmenter",
    max_batch: int | None = None,
    instances: int = 1,
    kind: str | None = None,
    frame_size: tuple[int, int] | None = None,
    policy: str = "stretch",
) -> list[TritonModel]:
    """Write Triton models for ``model`` into the repository ``output``; returns what was written.

    Everything is checked (file type, sidecar, options) before anything is written; each model
    directory appears whole or not at all (an existing one of the same name is replaced).

    Args:
        model: a ``deeplab-trt export`` ONNX file, or an engine from ``deeplab-trt build`` with its sidecar.
        output: the model repository directory (created; other models in it are left alone).
        name: the segmenter's model name; an engine's plan model is ``<name>_plan``.
        max_batch: Triton ``max_batch_size`` (default: the engine profile's maximum, else 8).
        instances: execution instances per device.
        kind: ``cpu`` or ``gpu`` (default: cpu for ONNX, gpu for engines; engines need gpu).
        frame_size: (height, width) of every frame; None accepts frames of any size.
        policy: ``stretch`` or ``letterbox``.
    """
    path, repo = Path(model), Path(output)
    _check_name(name)
    if instances < 1 or (max_batch is not None and max_batch < 1):
        raise ToolkitError("--instances and --max-batch must be at least 1")
    if repo.exists() and not repo.is_dir():
        raise ToolkitError(f"{repo}: exists and is not a directory (expected a Triton model repository)")
    suffix = path.suffix.lower()
    if not path.exists():
        raise ToolkitError(f"{path}: no such file")
    if suffix in ENGINE_SUFFIXES:
        record = EngineRecord.read(path)
        spec = record.model_spec(source=str(sidecar_path(path)))
        kind = kind or "gpu"
        if kind != "gpu":
            raise ToolkitError(f"{path}: a TensorRT engine runs only on a GPU instance (--kind gpu)")
        batch, _ = _engine_batch(record, max_batch, str(path))
        model_file = "model.engine"
        files = {model_file: path, model_file + ".json": sidecar_path(path)}
        plans: list[tuple[str, str]] = []
        if record.flavour_name == "tensorrt-rtx":
            log.warning(
                "%s: built with TensorRT-RTX, which Triton's TensorRT backend cannot load: no %s_plan model "
                "(the %s model serves it with deeplab-trt's runtime)",
                path,
                name,
                name,
            )
        else:
            plans.append(
                (f"{name}_plan", plan_config(record, name=f"{name}_plan", max_batch=max_batch, instances=instances))
            )
        seg_batch = batch or 1
    elif suffix == ".onnx":
        spec = spec_from_onnx(path)
        kind = kind or "cpu"
        model_file, files, plans = "model.onnx", {"model.onnx": path}, []
        seg_batch = max_batch or int(spec.extra.get("dynamic_batch", [0, 0, DEFAULT_MAX_BATCH])[2])
    else:
        raise ToolkitError(
            f"{path}: unknown model file type {path.suffix or '(none)'!r}; expected .onnx, .engine or .plan"
        )
    config = segmenter_config(
        spec,
        name=name,
        model_file=model_file,
        kind=kind,
        max_batch=seg_batch,
        instances=instances,
        frame_size=frame_size,
        policy=policy,
    )
    # Every model directory is staged first; they replace the old ones only once all are written.
    with contextlib.ExitStack() as staged:
        segmenter_dir = staged.enter_context(atomic_dir(repo / name))
        _stage_model(segmenter_dir, config, files)
        (segmenter_dir / "1" / "model.py").write_text(MODEL_PY)
        for plan_name, plan_text in plans:
            _stage_model(staged.enter_context(atomic_dir(repo / plan_name)), plan_text, {"model.plan": path})
    written = [TritonModel(name, repo / name, "segmenter")]
    written += [TritonModel(n, repo / n, "plan") for n, _ in plans]
    return written
