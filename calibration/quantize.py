"""FP32 ONNX + calibration data (or a TensorRT cache) → INT8 Q/DQ ONNX. The one entry point.

``deeplab-trt calibrate`` and ``deeplab-trt build --precision int8`` both call
:func:`quantize_onnx`; :func:`calibrate` is the statistics half, for callers that want the
scales without writing a model (benchmarks compare methods on one set of histograms).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from deeplab_trt.calibration.cache import DEFAULT_TRT_VERSION, read_cache, trt_version_number, write_cache
from deeplab_trt.calibration.collect import _input_batch, collect_histograms
from deeplab_trt.calibration.data import CalibrationData
from deeplab_trt.calibration.histogram import DEFAULT_BINS, AbsHistogram
from deeplab_trt.calibration.qdq import QdqPlan, insert_qdq, plan_qdq
from deeplab_trt.calibration.scales import METHODS, amax_from_scale, compute_amax, scale_from_amax
from deeplab_trt.runtime.atomic import atomic_path
from deeplab_trt.runtime.errors import ToolkitError
from deeplab_trt.runtime.spec import ModelSpec, spec_from_onnx
from deeplab_trt.runtime.tensorrt_flavour import detect

log = logging.getLogger(__name__)

METADATA_KEY = "int8_calibration"
#: What the layers without Q/DQ compute in: "fp16" (mixed INT8 + FP16, for strongly typed
#: TensorRT, where the ONNX types decide precision) or "fp32" (the graph as calibrated).
REST_PRECISIONS = ("fp16", "fp32")
#: Calibration batches used as probe frames for the FP16 overflow guard.
GUARD_BATCHES = 8


@dataclass
class CalibrationResult:
    """Scales for one model: the plan, amax per activation tensor, and where they came from."""

    plan: QdqPlan
    amax: dict[str, float]
    method: str
    percentile: float | None = None
    histograms: dict[str, AbsHistogram] = field(default_factory=dict)
    frames: int = 0
    seconds: float = 0.0
    source: str = "data"

    @property
    def scales(self) -> dict[str, float]:
        return {name: float(scale_from_amax(a)) for name, a in self.amax.items()}


def check_method(method: str, percentile: float) -> None:
    if method not in METHODS:
        raise ToolkitError(f"--method {method}: expected one of {', '.join(METHODS)}")
    if not 0.0 < percentile <= 100.0:
        raise ToolkitError(f"--percentile {percentile}: must be in (0, 100]")


def load_model(model_path: str | Path) -> tuple[onnx.ModelProto, ModelSpec]:
    """The FP32 model and its spec; one-line errors for missing / not-ONNX / not-ours / already-int8."""
    spec = spec_from_onnx(model_path)  # checks existence and readability, needs our metadata
    model = onnx.load(str(model_path))
    if any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node):
        raise ToolkitError(f"{model_path}: already has Q/DQ nodes; calibrate the FP32 model")
    return model, spec


def calibrate(
    model: onnx.ModelProto,
    data: CalibrationData,
    *,
    method: str = "entropy",
    percentile: float = 99.99,
    exclude: Sequence[str] = (),
    plan: QdqPlan | None = None,
    batch_size: int = 1,
    num_bins: int = DEFAULT_BINS,
    providers=None,
    progress: bool = True,
) -> CalibrationResult:
    """Histograms of the plan's activation tensors over ``data``, and their amax by ``method``."""
    check_method(method, percentile)
    plan = plan or plan_qdq(model, exclude)
    if not plan.tensors:
        raise ToolkitError("model has no quantizable Conv layers (all excluded or kept float)")
    _, fixed_batch = _input_batch(model)
    if fixed_batch and fixed_batch != batch_size:
        if batch_size != 1:
            log.warning("calibrate: the model takes batches of %d; using that instead of %d", fixed_batch, batch_size)
        batch_size = fixed_batch
    started = time.perf_counter()
    hists = collect_histograms(
        model,
        data.batches(batch_size, drop_last=bool(fixed_batch)),
        plan.tensors,
        total=len(data),
        num_bins=num_bins,
        providers=providers,
        progress=progress,
    )
    amax = {name: compute_amax(h, method, percentile) for name, h in hists.items()}
    return CalibrationResult(
        plan,
        amax,
        method,
        percentile if method == "percentile" else None,
        hists,
        frames=len(data),
        seconds=time.perf_counter() - started,
    )


def _cache_trt_version() -> int:
    """The installed TensorRT's version number (it is who reads the cache), else 10.3's.

    Asks :func:`deeplab_trt.runtime.tensorrt_flavour.detect`, the one place that finds TensorRT; only the
    full ``tensorrt`` reads calibration caches (TensorRT-RTX has no calibrator API).
    """
    try:
        flavour = detect("tensorrt")
    except ToolkitError:  # not installed, or too old/broken: the cache still gets a valid header
        return DEFAULT_TRT_VERSION
    return trt_version_number(flavour.version_string)


def result_from_cache(cache: Path, plan: QdqPlan) -> CalibrationResult:
    """Scales from a TensorRT cache for the plan's tensors; tensors it lacks stay float."""
    scales, version, algorithm = read_cache(cache)
    amax = {name: amax_from_scale(scales[name]) for name in plan.tensors if name in scales}
    if not amax:
        raise ToolkitError(
            f"{cache}: none of the model's {len(plan.tensors)} quantizable tensors are in "
            "the cache (was it made for another model?)"
        )
    missing = [name for name in plan.tensors if name not in scales]
    if missing:
        log.warning(
            "calibrate: %s has no scale for %d tensor(s) (e.g. %s); they stay float", cache, len(missing), missing[0]
        )
    return CalibrationResult(plan, amax, f"cache ({algorithm})", source=f"cache:{cache} (TRT {version})")


def _output_path(model_path: Path, output) -> Path:
    out = Path(output) if output is not None else model_path.with_name(model_path.stem + ".int8.onnx")
    if out.is_dir():
        raise ToolkitError(f"{out}: is a directory, expected an .onnx file path")
    if out.resolve() == model_path.resolve():
        raise ToolkitError(f"{out}: output would overwrite the input model")
    return out


def rest_for(choice: str = "auto", flavour: str | None = "auto") -> str:
    """``--int8-rest``: ``auto`` → fp16 unless ``flavour`` resolves to TensorRT 10 (weak typing).

    Why: TensorRT 10 chooses the unquantized layers' precision itself (``INT8|FP16`` flags) from
    an FP32-rest graph; strongly typed TensorRT (11, RTX) runs the types the ONNX gives, so
    there the rest must be FP16 in the graph. With no TensorRT installed, fp16 (the default
    target). Args: choice: auto|fp16|fp32; flavour: what ``runtime.tensorrt_flavour.detect`` takes.
    """
    if choice != "auto":
        return choice
    try:
        return "fp16" if detect(flavour).strongly_typed_only else "fp32"
    except ToolkitError:
        return "fp16"


def mixed_fp16(qmodel: onnx.ModelProto, batches: list, *, label: str = "model") -> tuple[onnx.ModelProto, list[str]]:
    """The Q/DQ graph with everything not quantized in FP16 (FP16 input and output).

    Why: strongly typed TensorRT (11, RTX) computes each layer in the type the ONNX gives it;
    left FP32, every activation between INT8 Convs moves and computes in FP32 (twice the
    bytes of the FP16 engine). Why Q/DQ stay FP32 with Casts around them (the converter's
    block list): opset < 19 QuantizeLinear takes only FP32 input, and TensorRT's rule is "DQ
    output type = scale type", so FP32 scales + a Cast after DQ give the same FP16 tensor;
    TensorRT fuses Cast→Q and DQ→Cast into the INT8 kernel's input/output reformat. The
    overflow guard is the FP16 pass's: nodes whose FP32 activations on ``batches`` (the first
    calibration frames, real data) exceed the FP16-safe range stay FP32.

    Returns (mixed model, names of the guard's FP32 nodes).
    """
    from deeplab_trt.calibration.fp16_graph import (
        QDQ_OPS,
        convert_graph_fp16,
        default_block_ops,
        hot_nodes,
        measure_fp32,
    )

    output_name = qmodel.graph.output[0].name
    _, peaks, producer = measure_fp32(qmodel, batches, output_name)
    hot = hot_nodes(peaks, producer)
    block = sorted(set(default_block_ops()) | QDQ_OPS)
    mixed, _ = convert_graph_fp16(qmodel, block_ops=block, block_nodes=hot, label=label)
    return mixed, hot


def _set_spec_dtypes(qmodel: onnx.ModelProto) -> None:
    """Record the FP16 I/O in the spec metadata, as the FP16 pass does (the runtime reads it)."""
    meta = {p.key: p.value for p in qmodel.metadata_props}
    spec = ModelSpec.from_metadata(meta)
    spec.extra = {**(spec.extra or {}), "precision": "int8", "input_dtype": "float16"}
    spec.extra["output_dtype"] = "int32" if spec.head == "labels" else "float16"
    meta.update(spec.to_metadata())
    del qmodel.metadata_props[:]
    for key, value in meta.items():
        qmodel.metadata_props.add(key=key, value=value)


def write_qdq_model(
    model: onnx.ModelProto,
    result: CalibrationResult,
    output: Path,
    *,
    weights: str = "int8",
    extra: dict | None = None,
    rest: str = "fp32",
    guard_batches: list | None = None,
) -> Path:
    """Insert Q/DQ per ``result``, record how in the metadata, check, and write atomically.

    Args:
        rest: "fp32" (unquantized layers as exported) or "fp16" (:func:`mixed_fp16`).
        guard_batches: preprocessed FP32 input batches for the FP16 overflow guard (rest="fp16").
    """
    if rest not in REST_PRECISIONS:
        raise ToolkitError(f"--int8-rest {rest}: expected one of {', '.join(REST_PRECISIONS)}")
    qmodel = insert_qdq(model, result.plan, result.amax, weights=weights)
    fp32_nodes: list[str] = []
    if rest == "fp16":
        if not guard_batches:
            raise ToolkitError(f"{output}: --int8-rest fp16 needs calibration frames for the FP16 overflow guard")
        qmodel, fp32_nodes = mixed_fp16(qmodel, guard_batches, label=str(output))
    info = {
        "method": result.method,
        "source": result.source,
        "frames": result.frames,
        "activations": len(result.amax),
        "weights": weights,
        "rest": rest,
        **({"fp32_nodes": fp32_nodes} if rest == "fp16" else {}),
        **(extra or {}),
    }
    if result.percentile is not None:
        info["percentile"] = result.percentile
    props = [p for p in qmodel.metadata_props if p.key != METADATA_KEY]
    del qmodel.metadata_props[:]
    qmodel.metadata_props.extend(props)
    qmodel.metadata_props.add(key=METADATA_KEY, value=json.dumps(info))
    if rest == "fp16":
        _set_spec_dtypes(qmodel)
    try:
        onnx.checker.check_model(qmodel)
    except Exception as exc:  # a bug in the pass, but say which model  # noqa: BLE001
        raise ToolkitError(f"{output}: onnx.checker rejected the Q/DQ model ({str(exc).splitlines()[0]})") from exc
    with atomic_path(output) as tmp:
        onnx.save(qmodel, str(tmp))
    return output


def quantize_onnx(
    model_path,
    data=None,
    output=None,
    num=None,
    method="entropy",
    percentile=99.99,
    exclude=(),
    cache=None,
    report_dir=None,
    seed=0,
    *,
    every: int = 1,
    batch_size: int = 1,
    num_bins: int = DEFAULT_BINS,
    weights: str = "int8",
    quantize_head: bool = False,
    policy: str = "stretch",
    rest: str = "fp32",
    providers=None,
    progress: bool = True,
) -> Path:
    """Calibrate ``model_path`` and write its INT8 Q/DQ version to ``output``; returns ``output``.

    ``data``: image/video files, folders, globs (see :mod:`deeplab_trt.calibration.data`). ``cache``: a
    TensorRT calibration cache — written when ``data`` is given, read (instead of
    calibrating) when it is not. ``exclude``: fnmatch patterns of node names kept float.
    ``report_dir``: per-tensor amax table (JSON, Markdown) and histogram plots.
    Default output: ``<model>.int8.onnx`` next to the model. ``rest``: "fp32" keeps the
    unquantized layers FP32 (TensorRT 10 with INT8|FP16 flags picks their precision itself);
    "fp16" writes the mixed INT8 + FP16 graph strongly typed TensorRT needs (:func:`mixed_fp16`).
    """
    model_path = Path(model_path)
    check_method(method, percentile)
    if report_dir is not None:
        from deeplab_trt.calibration.report import pyplot

        pyplot()  # the report's PNGs need the plots extra: say so before calibrating, not after
    if num is not None and num < 1:
        raise ToolkitError(f"--num {num}: must be at least 1")
    if num_bins < 256:
        raise ToolkitError(f"--bins {num_bins}: need at least 256 (2 per int8 level)")
    model, spec = load_model(model_path)
    output = _output_path(model_path, output)
    cache = Path(cache) if cache is not None else None
    exclude = tuple(exclude or ())
    plan = plan_qdq(model, exclude, quantize_head=quantize_head)
    if not plan.tensors:
        raise ToolkitError(f"{model_path}: no quantizable Conv layers (all excluded or kept float)")

    if data:
        calib_data = CalibrationData(data, spec, num=num, every=every, seed=seed, policy=policy)
        result = calibrate(
            model,
            calib_data,
            method=method,
            percentile=percentile,
            plan=plan,
            batch_size=batch_size,
            num_bins=num_bins,
            providers=providers,
            progress=progress,
        )
        if cache is not None:
            write_cache(cache, result.scales, version=_cache_trt_version())
    elif cache is not None:
        if not cache.exists():
            raise ToolkitError(f"{cache}: no such calibration cache (give --data to create it)")
        result = result_from_cache(cache, plan)
    else:
        raise ToolkitError(
            "no calibration data: give --data PATH (images, videos, globs) "
            "or --cache FILE with an existing TensorRT calibration cache"
        )

    extra = {"exclude": list(exclude)} if exclude else {}
    guard = None
    if rest == "fp16":
        if not data:
            raise ToolkitError("--int8-rest fp16 needs --data: the FP16 overflow guard measures activations on frames")
        guard = [b for b, _ in zip(calib_data.batches(1), range(GUARD_BATCHES))]
    write_qdq_model(model, result, output, weights=weights, extra=extra, rest=rest, guard_batches=guard)
    if report_dir is not None:
        from deeplab_trt.calibration.layer_census import onnx_census
        from deeplab_trt.calibration.report import write_report

        write_report(report_dir, result, title=f"{spec.name} ({model_path.name})", census=onnx_census(output))
    return output
