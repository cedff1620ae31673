"""ONNX → TensorRT engine for each flavour, plus its record (the JSON sidecar, runtime.engine_record).

Why the decisions are pure functions: how precision is asked for differs per flavour
(DESIGN.md, "TensorRT flavours"), and only TensorRT-RTX can run here. :func:`plan_precision`,
:func:`plan_profile` and :func:`plan_compute_capabilities` take a
:class:`~deeplab_trt.runtime.tensorrt_flavour.Flavour` *description* and return what to do, so the
TensorRT 10 and 11 paths are unit-tested with documented descriptions, and
:func:`build_engine` only carries the plan out.

Precision per flavour:

=========  ==================================  ==========================================
precision  TensorRT 10 (weak typing)           TensorRT 11 / TensorRT-RTX (strongly typed)
=========  ==================================  ==========================================
fp32       ONNX as is                          ONNX as is
fp16       ``BuilderFlag.FP16`` on FP32 graph  strongly typed network from the FP16 pass
int8       Q/DQ graph + ``INT8|FP16`` flags;   Q/DQ graph, strongly typed (layers without
           ``--int8-mode implicit``: FP32      Q/DQ run in the graph's FP32)
           graph + entropy calibrator
=========  ==================================  ==========================================

The Q/DQ graph is the input when it has Q/DQ nodes, else the calibration package makes
it from ``--data``. Everything that can be checked before TensorRT runs (options, profile,
targets, data) is checked first, so a bad option costs no calibration and no build.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import platform
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from deeplab_trt.calibration.options import CalibrationOptions
from deeplab_trt.runtime import __version__
from deeplab_trt.runtime.atomic import write_bytes_atomic
from deeplab_trt.runtime.cli_types import parse_batch_range
from deeplab_trt.runtime.engine_record import EngineFile, EngineRecord, sha256_file, sidecar_path
from deeplab_trt.runtime.errors import ToolkitError
from deeplab_trt.runtime.spec import ModelSpec, load_onnx
from deeplab_trt.runtime.tensorrt_flavour import (
    Flavour,
    current_gpu,
    detect,
    dtype_name,
    parse_compute_capability,
    sm_name,
    supported_compute_capabilities,
)

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16", "int8")
INT8_MODES = ("explicit", "implicit")
#: TensorRT-RTX's documented default targets (engines portable across Ampere and later
#: RTX GPUs), written out explicitly so the sidecar states exactly what was targeted.
RTX_DEFAULT_TARGETS = ("SM80", "SM86", "SM89", "SM120")
#: Profile for a dynamic batch when neither ``--profile-batch`` nor the export recorded one.
DEFAULT_DYNAMIC_BATCH = (1, 1, 8)


# ----- decisions (pure) -------------------------------------------------------------------------
@dataclass(frozen=True)
class BuildPlan:
    """How one precision is realised on one flavour."""

    precision: str
    strongly_typed: bool
    builder_flags: tuple[str, ...] = ()  #: ``BuilderFlag`` member names to set
    #: ``BuilderFlag`` member names to clear where the flavour has them (TF32 is on by default)
    cleared_flags: tuple[str, ...] = ()
    onnx_pass: str | None = None  #: None | "fp16" (FP16 pass) | "qdq" (calibrate + Q/DQ)
    calibrator: bool = False  #: implicit INT8: hand an entropy calibrator to the builder
    int8_mode: str | None = None
    summary: str = ""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["builder_flags"] = list(self.builder_flags)
        d["cleared_flags"] = list(self.cleared_flags)
        return d


def plan_precision(
    flavour: Flavour,
    precision: str,
    int8_mode: str = "explicit",
    onnx_is_qdq: bool = False,
    *,
    has_data: bool = False,
    onnx_is_fp16: bool = False,
) -> BuildPlan:
    """Decide how to build ``precision`` on ``flavour``; impossible combinations are a :class:`ToolkitError`.

    ``has_data``: calibration data (or, for implicit INT8, an existing calibration cache).
    """
    if precision not in PRECISIONS:
        raise ToolkitError(f"--precision {precision}: expected one of {', '.join(PRECISIONS)}")
    if int8_mode not in INT8_MODES:
        raise ToolkitError(f"--int8-mode {int8_mode}: expected one of {', '.join(INT8_MODES)}")
    if not flavour.has_weak_typing and not flavour.has_strongly_typed:
        raise ToolkitError(f"{flavour.label} offers neither weak nor strong typing")  # pragma: no cover
    weak = flavour.has_weak_typing
    if onnx_is_qdq and precision != "int8":
        raise ToolkitError("the model has Q/DQ nodes (an INT8 graph): build it with --precision int8")
    # A Q/DQ graph with an FP16 rest ('calibrate --int8-rest fp16', the default on strongly typed flavours)
    # has an FP16 input too: it is an INT8 graph, not an FP16 one.
    if onnx_is_fp16 and precision != "fp16" and not (onnx_is_qdq and precision == "int8"):
        raise ToolkitError("the model is an FP16 graph: build it with --precision fp16 (or give the FP32 export)")
    if precision != "int8" and int8_mode == "implicit":
        raise ToolkitError("--int8-mode implicit applies to --precision int8 only")

    if precision == "fp32":
        # TF32 is on by default (Ampere and later): clear it so the FP32 reference really is FP32.
        return BuildPlan(
            "fp32", strongly_typed=not weak, cleared_flags=("TF32",), summary="FP32 graph as exported, TF32 off"
        )
    if precision == "fp16":
        if onnx_is_fp16:
            return BuildPlan(
                "fp16", strongly_typed=flavour.has_strongly_typed, summary="FP16 graph given: strongly typed, as is"
            )
        if weak:
            return BuildPlan(
                "fp16",
                strongly_typed=False,
                builder_flags=("FP16",),
                summary="BuilderFlag.FP16 on the FP32 graph (weak typing)",
            )
        return BuildPlan(
            "fp16", strongly_typed=True, onnx_pass="fp16", summary="strongly typed network from the FP16 ONNX pass"
        )

    # int8
    if int8_mode == "implicit":
        if not flavour.has_calibrator_api:
            raise ToolkitError(
                f"--int8-mode implicit needs TensorRT 10's calibrator API (IInt8EntropyCalibrator2); "
                f"{flavour.label} has none: use --int8-mode explicit (Q/DQ)"
            )
        if onnx_is_qdq:
            raise ToolkitError(
                "--int8-mode implicit calibrates an FP32 graph, but the model already has Q/DQ nodes: "
                "use --int8-mode explicit"
            )
        if not has_data:
            raise ToolkitError(
                "--int8-mode implicit needs calibration data (--data PATH...) or an existing --cache FILE"
            )
        return BuildPlan(
            "int8",
            strongly_typed=False,
            builder_flags=("INT8", "FP16"),
            calibrator=True,
            int8_mode="implicit",
            summary="implicit INT8: entropy calibrator (legacy API); unquantized layers may use FP16",
        )
    if not onnx_is_qdq and not has_data:
        raise ToolkitError(
            "--precision int8 needs calibration data (--data PATH...), an existing calibration "
            "--cache FILE, or a model with Q/DQ nodes (from 'deeplab-trt calibrate')"
        )
    onnx_pass = None if onnx_is_qdq else "qdq"
    source = "Q/DQ graph given" if onnx_is_qdq else "Q/DQ graph from entropy calibration"
    if weak:
        return BuildPlan(
            "int8",
            strongly_typed=False,
            builder_flags=("INT8", "FP16"),
            onnx_pass=onnx_pass,
            int8_mode="explicit",
            summary=f"{source}, weak typing with INT8|FP16 (unquantized layers may use FP16)",
        )
    return BuildPlan(
        "int8",
        strongly_typed=True,
        onnx_pass=onnx_pass,
        int8_mode="explicit",
        summary=f"{source}, strongly typed (unquantized layers in FP16, overflow guard in FP32)",
    )


Shape = tuple[int, ...]


def plan_profile(
    input_name: str, dims: list[int | None], spec: ModelSpec, batch: tuple[int, int, int] | None, source: str = "model"
) -> tuple[Shape, Shape, Shape] | None:
    """The optimization profile (min, opt, max shapes) for the image input, or None if static.

    ``dims``: the ONNX input dims (None where dynamic). A static batch admits only
    ``--profile-batch N`` equal to it; a dynamic batch takes ``--profile-batch``, else the export's
    ``spec.extra["dynamic_batch"]``, else :data:`DEFAULT_DYNAMIC_BATCH`. Other dynamic dims
    come from the spec (N×3×H×W).
    """
    if len(dims) != 4:
        if any(d is None for d in dims):
            raise ToolkitError(f"{source}: input {input_name!r} has dynamic dims {dims} and is not N×3×H×W")
        if batch is not None:
            raise ToolkitError(f"{source}: input {input_name!r} is {dims}, not N×3×H×W: --profile-batch does not apply")
        return None
    fixed = {1: 3, 2: spec.input_height, 3: spec.input_width}
    for axis, expected in fixed.items():
        if dims[axis] is not None and dims[axis] != expected:
            raise ToolkitError(
                f"{source}: input {input_name!r} is {dims} but the metadata says "
                f"3×{spec.input_height}×{spec.input_width}"
            )
    static_batch = dims[0]
    if static_batch is not None:
        if batch is None or batch == (static_batch,) * 3:
            if any(d is None for d in dims[1:]):
                return tuple((static_batch, *[fixed[a] for a in (1, 2, 3)]) for _ in range(3))  # type: ignore
            return None
        lo, opt, hi = batch
        excludes = not lo <= static_batch <= hi
        raise ToolkitError(
            f"{source}: input {input_name!r} has a static batch of {static_batch}"
            f"{', which --profile-batch ' + ':'.join(map(str, batch)) + ' excludes' if excludes else ''}; "
            f"a batch range needs a model exported with a dynamic batch "
            f"('deeplab-trt export --dynamic-batch MIN:OPT:MAX')"
        )
    if batch is None:
        hint = spec.extra.get("dynamic_batch") if isinstance(spec.extra, dict) else None
        batch = parse_batch_range(hint) if hint else DEFAULT_DYNAMIC_BATCH
        if not hint:
            log.debug("dynamic batch with no range recorded in the model: profile %s", ":".join(map(str, batch)))
    rest = tuple(fixed[a] for a in (1, 2, 3))
    return tuple((b, *rest) for b in batch)  # type: ignore[return-value]


def plan_compute_capabilities(
    flavour: Flavour, requested: list[str] | None, gpu: tuple[int, int] | None, gpu_reason: str = ""
) -> tuple[list[str], str]:
    """(target names, where they came from).

    TensorRT-RTX builds ahead of time for a list of targets: ``requested`` (``SM89``,
    ``current``, …), else the GPU present, else :data:`RTX_DEFAULT_TARGETS` (no GPU).
    TensorRT 10/11 build for the GPU they run on; ``--compute-capability`` is an error there.
    """
    if not flavour.has_compute_capability_targets:
        if requested:
            raise ToolkitError(
                f"--compute-capability applies to TensorRT-RTX; {flavour.label} builds for the GPU "
                "it runs on (build on the target device)"
            )
        return ([sm_name(gpu)] if gpu else []), "build GPU"
    supported = supported_compute_capabilities(flavour)
    if requested:
        names: list[str] = []
        for token in requested:
            for part in str(token).split(","):
                if not part.strip():
                    continue
                name = parse_compute_capability(part)
                if name == "current":
                    if gpu is None:
                        raise ToolkitError(f"--compute-capability current: no GPU here ({gpu_reason or 'none found'})")
                    name = sm_name(gpu)
                if name not in supported:
                    raise ToolkitError(
                        f"--compute-capability {part.strip()}: {flavour.label} targets "
                        f"{', '.join(supported)} (not {name})"
                    )
                if name not in names:
                    names.append(name)
        if not names:
            raise ToolkitError("--compute-capability: no target given")
        return names, "option"
    if gpu is not None and sm_name(gpu) in supported:
        return [sm_name(gpu)], "current GPU"
    defaults = [n for n in RTX_DEFAULT_TARGETS if n in supported]
    why = "no GPU" if gpu is None else f"this GPU is {sm_name(gpu)}, not a {flavour.label} target"
    return defaults, f"default ({why})"


def plan_user_allocation(flavour: Flavour) -> bool:
    """Whether to build with ``BuilderFlag.REQUIRE_USER_ALLOCATION`` (recorded as ``user_allocation``).

    Why: a TensorRT-RTX engine may allocate memory while it runs, which a CUDA stream capture
    cannot record, so ``cuda_graph=True`` (the GPU pipeline capturing preprocess + inference +
    postprocess into one graph) needs engines built with this flag (TensorRT-RTX 1.2 release
    notes: "required when using CUDA stream capture"). RTX's own ``IRuntimeConfig``
    ``cuda_graph_strategy`` captures only TensorRT's part, inside ``execute_async_v3``, and
    cannot be nested in the pipeline's capture, so it is not the route taken. The flag costs
    nothing on our models (no data-dependent shapes, whose build it would fail).
    TensorRT 10/11 engines capture static shapes as built: no flag.

    Args:
        flavour: the TensorRT that builds.
    """
    return flavour.capture_needs_user_allocation and flavour.has_user_allocation_flag


@dataclass(frozen=True)
class DlaPlan:
    """Run the engine on DLA core ``core`` (``--dla-core``); layers DLA cannot run go to the GPU
    only with ``gpu_fallback`` (without it such a layer fails the build)."""

    core: int
    gpu_fallback: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def plan_dla(flavour: Flavour, dla_core: int | None, gpu_fallback: bool, precision: str) -> DlaPlan | None:
    """The DLA part of a build, or None for a GPU engine; impossible requests are a :class:`ToolkitError`.

    Args:
        flavour: the TensorRT that builds.
        dla_core: ``--dla-core N`` (None: GPU only).
        gpu_fallback: ``--gpu-fallback``: layers DLA cannot run go to the GPU.
        precision: the plan's precision: DLA runs FP16 and INT8 layers only.
    """
    if dla_core is None:
        if gpu_fallback:
            raise ToolkitError("--gpu-fallback applies with --dla-core N only")
        return None
    if not flavour.has_dla:
        raise ToolkitError(
            f"--dla-core {dla_core}: {flavour.label} has no DLA (DLA engines need TensorRT 10 up to "
            "10.7, as on JetPack 6, on a Jetson with DLA cores); build without --dla-core"
        )
    if dla_core < 0:
        raise ToolkitError(f"--dla-core {dla_core}: expected a DLA core number (0, 1, ...)")
    if precision == "fp32":
        raise ToolkitError(f"--dla-core {dla_core}: DLA runs FP16 and INT8 layers only; use --precision fp16 or int8")
    return DlaPlan(core=dla_core, gpu_fallback=gpu_fallback)


# ----- options and results ----------------------------------------------------------------------
@dataclass
class BuildOptions:
    """How to build: precision, flavour, profile, targets, and the INT8 calibration.

    ``calibration``: the same options ``deeplab-trt calibrate`` takes (data, method, ...).
    ``profile_batch``: (MIN, OPT, MAX) of a dynamic batch (None: the range recorded at export).
    """

    precision: str = "fp32"
    flavour: str = "auto"
    int8_mode: str = "explicit"
    calibration: CalibrationOptions = field(default_factory=CalibrationOptions)
    profile_batch: tuple[int, int, int] | None = None
    workspace_mib: int | None = None
    timing_cache: str | None = None
    compute_capabilities: list[str] | None = None
    fp16_output: str = "float16"
    dla_core: int | None = None  #: run on this DLA core (TensorRT 10 on a Jetson with DLA)
    gpu_fallback: bool = False  #: with ``dla_core``: layers DLA cannot run go to the GPU
    verbose: bool = False
    progress: bool = True

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["profile_batch"] = list(self.profile_batch) if self.profile_batch else None
        d["calibration"] = self.calibration.to_dict()
        return d


def onnx_input_dims(model) -> tuple[str, list[int | None], str]:
    """(name, dims with None where dynamic, elem type name) of the one non-initializer input."""
    import onnx

    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise ToolkitError(f"expected one image input, the graph has {len(inputs)}")
    inp = inputs[0]
    dims = [
        d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in inp.type.tensor_type.shape.dim
    ]
    return inp.name, dims, onnx.TensorProto.DataType.Name(inp.type.tensor_type.elem_type).lower()


# ----- TensorRT plumbing ------------------------------------------------------------------------
_MONITORS: dict[int, type] = {}


def make_progress_monitor(trt: Any, show: bool):
    """An ``IProgressMonitor``: a tqdm bar (stderr, TTY only) over the top-level build phase."""
    cls = _MONITORS.get(id(trt))
    if cls is None:

        class BuildProgress(trt.IProgressMonitor):
            def __init__(self, show: bool) -> None:
                trt.IProgressMonitor.__init__(self)
                self.show = show
                self.root: str | None = None
                self.bar = None
                self.lock = threading.Lock()

            def phase_start(self, phase_name, parent_phase, num_steps):
                with self.lock:
                    log.debug(
                        "build phase: %s (%d steps)%s",
                        phase_name,
                        num_steps,
                        f" in {parent_phase}" if parent_phase else "",
                    )
                    if parent_phase is None and self.root is None:
                        from tqdm import tqdm

                        self.root = phase_name
                        self.bar = tqdm(
                            total=num_steps,
                            desc=phase_name,
                            file=sys.stderr,
                            leave=False,
                            disable=None if self.show else True,
                            unit="phase",
                        )
                    elif self.bar is not None:
                        self.bar.set_postfix_str(str(phase_name)[:40], refresh=False)

            def step_complete(self, phase_name, step):
                with self.lock:
                    if phase_name == self.root and self.bar is not None:
                        self.bar.update(max(0, step + 1 - self.bar.n))
                return True  # keep building

            def phase_finish(self, phase_name):
                with self.lock:
                    if phase_name == self.root and self.bar is not None:
                        self.bar.close()
                        self.bar = None

        cls = _MONITORS[id(trt)] = BuildProgress
    return cls(show)


def _parser_error(parser, flavour: Flavour, source: Path) -> ToolkitError:
    """The parser's first error as one line: node, op and what is wrong."""
    count = parser.num_errors
    if count == 0:
        return ToolkitError(f"{source}: {flavour.label} cannot parse it (no parser error reported)")
    err = parser.get_error(0)

    def call(attr, default=None):
        fn = getattr(err, attr, None)
        try:
            return fn() if callable(fn) else default
        except Exception:  # noqa: BLE001
            return default

    desc = (call("desc", "") or "").strip().splitlines()
    what = desc[0] if desc else ""
    code = call("code")
    code_text = getattr(code, "name", str(code or "")).lower().replace("_", " ")
    if not what or what.lower() in ("false", "true"):
        what = code_text or "unknown error"
    elif code_text and code_text not in what.lower():
        what = f"{code_text}: {what}"
    if len(what) > 300:
        what = what[:297] + "..."
    node, name, op = call("node", -1), call("node_name", ""), call("node_operator", "")
    where = ""
    if isinstance(node, int) and node >= 0:
        where = f" node {node}" + (f" {name!r}" if name else "") + (f" ({op})" if op else "")
    more = f" (+{count - 1} more error{'s' if count > 2 else ''})" if count > 1 else ""
    return ToolkitError(f"{source}: {flavour.label} cannot parse{where or ' it'}: {what}{more}")


def _network_io(network, profile: tuple | None, input_name: str | None) -> list[dict[str, Any]]:
    io = []
    for i in range(network.num_inputs):
        t = network.get_input(i)
        rec = {"name": t.name, "mode": "input", "shape": list(t.shape), "dtype": dtype_name(t.dtype)}
        if profile is not None and t.name == input_name:
            rec["profile"] = {"min": list(profile[0]), "opt": list(profile[1]), "max": list(profile[2])}
        io.append(rec)
    for i in range(network.num_outputs):
        t = network.get_output(i)
        io.append({"name": t.name, "mode": "output", "shape": list(t.shape), "dtype": dtype_name(t.dtype)})
    return io


def _file_record(path: Path) -> dict[str, Any]:
    return {"path": str(path.resolve()), "bytes": path.stat().st_size, "sha256": sha256_file(path)}


def _count_qdq(model) -> int:
    return sum(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node)


def _run_calibration(source: Path, output: Path, options: BuildOptions, *, strongly_typed: bool = False) -> Path:
    from deeplab_trt.calibration.quantize import quantize_onnx

    result = quantize_onnx(
        source,
        output=output,
        rest="fp16" if strongly_typed else "fp32",  # strongly typed: the ONNX types are the precisions
        progress=options.progress,
        **options.calibration.quantize_kwargs(),
    )
    return Path(result or output)


def plan_calibration_batch(profile: tuple[Shape, Shape, Shape] | None, dims: list[int | None]) -> int:
    """The batch TensorRT 10's implicit calibrator must hand over: TensorRT calibrates at the profile's
    kOPT shape (or the static batch) and reads that many images from each ``get_batch`` pointer, so a
    smaller batch makes it read past the buffer.

    Args:
        profile: :func:`plan_profile`'s (min, opt, max) shapes, or None for a static input.
        dims: the ONNX input dims (:func:`onnx_input_dims`).
    """
    if profile is not None:
        return int(profile[1][0])
    return int(dims[0]) if dims and dims[0] is not None else 1


def _make_calibrator(
    trt: Any,
    spec: ModelSpec,
    options: BuildOptions,
    *,
    profile: tuple[Shape, Shape, Shape] | None,
    dims: list[int | None],
):
    from deeplab_trt.calibration.trt_calibrator import make_entropy_calibrator

    cal = options.calibration
    cal.check_implicit()
    return make_entropy_calibrator(
        trt,
        data=list(cal.data),
        spec=spec,
        cache_path=cal.cache,
        batch_size=plan_calibration_batch(profile, dims),
        num=cal.num,
        every=cal.every,
        seed=cal.seed,
        policy=cal.policy,
    )


def _apply_timing_cache(trt: Any, config, flavour: Flavour, path: str | None, notes: list[str]):
    """Attach the timing cache (loaded if the file exists); returns the cache to save, or None.

    ``notes`` collects warnings to show once the build succeeded (a failure prints one line).
    """
    if not path:
        return None
    if not flavour.has_timing_cache:
        notes.append(
            f"--timing-cache {path}: {flavour.label} has no working timing cache (its timing-cache "
            "calls are no-ops); not read or written"
        )
        return None
    cache_file = Path(path)
    blob = b""
    if cache_file.is_file():
        blob = cache_file.read_bytes()
    cache = None
    try:
        cache = config.create_timing_cache(blob)
    except Exception as exc:  # noqa: BLE001
        log.debug("create_timing_cache failed: %s", exc)
    if cache is None and blob:
        notes.append(f"--timing-cache {cache_file}: unreadable, started a new one")
        cache = config.create_timing_cache(b"")
    if cache is None or not config.set_timing_cache(cache, False):
        notes.append(f"--timing-cache {cache_file}: made for another GPU or TensorRT version, started a new one")
        cache = config.create_timing_cache(b"")
        config.set_timing_cache(cache, False)
    elif blob:
        log.debug("timing cache: loaded %s (%d bytes)", cache_file, len(blob))
    return cache


# ----- the build: the TensorRT samples' steps, each one function ----------------------------------
@dataclass
class _Decisions:
    """Step 1's answer: what is built, decided (pure ``plan_*``) before any expensive work."""

    source: Path
    output: Path
    spec: ModelSpec
    flavour: Flavour
    plan: BuildPlan
    input_name: str
    dims: list[int | None]
    profile: tuple[Shape, Shape, Shape] | None
    gpu: tuple[int, int] | None
    gpu_reason: str
    targets: list[str]
    target_source: str
    dla: DlaPlan | None = None


@dataclass
class _Parsed:
    """Step 3's answer: the network, and what must outlive the build (the parser holds the weights)."""

    logger: Any
    builder: Any
    network: Any
    parser: Any
    input: Any  #: the image input tensor


@dataclass
class _Configured:
    """Step 4's answer: the builder config and the objects it refers to (kept alive until the build ends)."""

    config: Any
    tf32: bool | None  #: may FP32 layers use TF32 math (None: the flavour has no such flag)
    #: built with ``REQUIRE_USER_ALLOCATION`` (None: the flavour captures without it)
    user_allocation: bool | None = None
    timing_cache: Any = None  #: to save after the build, or None
    calibrator: Any = None
    monitor: Any = None
    notes: list[str] = field(default_factory=list)  #: warnings to show once the build succeeded


def build_engine(
    onnx_path: str | os.PathLike, output: str | os.PathLike, options: BuildOptions | None = None
) -> dict[str, Any]:
    """Build ``onnx_path`` into ``output`` (engine) + ``output``.json (its record); returns the record.

    The steps: decide, prepare the graph (FP16 or Q/DQ pass), parse, configure, build and
    serialize, write. Both files are written atomically, only after TensorRT produced an
    engine; any failure leaves neither behind.

    Args:
        onnx_path: the exported ONNX model (FP32, FP16 or Q/DQ).
        output: the engine file to write; its record goes to ``output``.json.
        options: precision, flavour, calibration data, profile, targets (:class:`BuildOptions`).

    Returns:
        The record as the JSON object written (:meth:`EngineRecord.to_dict`).
    """
    options = options or BuildOptions()
    started = time.perf_counter()
    decided = _decide(Path(onnx_path), Path(output), options)
    with tempfile.TemporaryDirectory(prefix="deeplab-trt-build-") as workdir:
        graph, pass_record = _prepare_graph(decided, options, Path(workdir))
        parsed = _parse(decided, graph, verbose=options.verbose)
        configured = _configure(decided, parsed, options)
        blob, engine_seconds = _serialize(decided, parsed, configured)
        record = _make_record(decided, options, parsed, configured, blob, pass_record, engine_seconds)
        record.build_time_s = round(time.perf_counter() - started, 3)
        record.write(decided.output, engine=blob)
        _save_timing_cache(configured.timing_cache, options.timing_cache)
    _report(decided, parsed, configured, record)
    return record.to_dict()


def _check_request(source: Path, output: Path, options: BuildOptions) -> None:
    """Options and paths that are wrong whatever the model: fail before reading it."""
    if output.exists() and output.is_dir():
        raise ToolkitError(f"{output}: is a directory, expected an engine file path (-o OUT.engine)")
    if output.resolve() == source.resolve() or sidecar_path(output).resolve() == source.resolve():
        raise ToolkitError(f"{output}: would overwrite the source model")
    if options.workspace_mib is not None and options.workspace_mib <= 0:
        raise ToolkitError(f"--workspace {options.workspace_mib}: must be a positive number of MiB")
    calibration = options.calibration
    if calibration.data and options.precision != "int8":
        raise ToolkitError("--data is calibration data: it applies to --precision int8 only")
    for item in calibration.data:
        if not any(ch in str(item) for ch in "*?[") and not Path(item).exists():
            raise ToolkitError(f"{item}: no such file or directory (--data)")


def _decide(source: Path, output: Path, options: BuildOptions) -> _Decisions:
    """Step 1: read the model's metadata and input, and make every ``plan_*`` decision."""
    _check_request(source, output, options)
    model = load_onnx(source)
    spec = ModelSpec.from_metadata({p.key: p.value for p in model.metadata_props}, source=str(source))
    input_name, dims, input_type = onnx_input_dims(model)
    qdq = _count_qdq(model)
    del model
    flavour = detect(options.flavour)
    # An existing calibration cache stands in for data (both calibration paths read it).
    calibration = options.calibration
    has_data = bool(calibration.data) or bool(calibration.cache and Path(calibration.cache).is_file())
    try:
        plan = plan_precision(
            flavour,
            options.precision,
            options.int8_mode,
            onnx_is_qdq=qdq > 0,
            has_data=has_data,
            onnx_is_fp16=input_type == "float16",
        )
    except ToolkitError as exc:
        raise ToolkitError(f"{source}: {exc}") from exc
    profile = plan_profile(input_name, dims, spec, options.profile_batch, str(source))
    gpu, gpu_reason = current_gpu()
    targets, target_source = plan_compute_capabilities(flavour, options.compute_capabilities, gpu, gpu_reason)
    dla = plan_dla(flavour, options.dla_core, options.gpu_fallback, plan.precision)
    if dla is not None:
        _check_dla_cores(flavour, dla)
    # Only debug lines until the build succeeded: a failure must print one line, the error.
    log.debug(
        "building %s: %s on %s (%s); targets %s (%s)",
        source.name,
        plan.precision,
        flavour.label,
        plan.summary,
        ",".join(targets) or "-",
        target_source,
    )
    return _Decisions(
        source, output, spec, flavour, plan, input_name, dims, profile, gpu, gpu_reason, targets, target_source, dla
    )


def _check_dla_cores(flavour: Flavour, dla: DlaPlan) -> None:
    """The machine has DLA core ``dla.core`` (asked before calibration, so a wrong core costs nothing)."""
    trt = flavour.module
    cores = int(getattr(trt.Builder(_make_logger(trt, False)), "num_DLA_cores", 0) or 0)
    if dla.core >= cores:
        raise ToolkitError(
            f"--dla-core {dla.core}: this machine has {cores} DLA core{'s' if cores != 1 else ''}"
            f"{f' (0..{cores - 1})' if cores else ''}"
        )


def _prepare_graph(decided: _Decisions, options: BuildOptions, workdir: Path) -> tuple[Path, dict[str, Any] | None]:
    """Step 2: the graph TensorRT parses (the model, or the FP16 / Q/DQ pass's output) and what the pass did."""
    source, plan, calibration = decided.source, decided.plan, options.calibration
    if plan.onnx_pass == "fp16":
        from deeplab_trt.builder.fp16 import convert_fp16

        graph = workdir / f"{source.stem}.fp16.onnx"
        report = convert_fp16(source, graph, output_dtype=options.fp16_output)
        return graph, {"pass": "fp16", **report.to_dict()}
    if plan.onnx_pass == "qdq":
        graph = _run_calibration(
            source, workdir / f"{source.stem}.int8.onnx", options, strongly_typed=plan.strongly_typed
        )
        qdq_nodes = _count_qdq(load_onnx(graph))
        if qdq_nodes == 0:
            raise ToolkitError(f"{graph}: calibration produced no Q/DQ nodes")
        return graph, {
            "pass": "qdq",
            "scales_from": "data" if calibration.data else f"cache {calibration.cache}",
            "method": calibration.method,
            "num": calibration.num,
            "qdq_nodes": qdq_nodes,
            "data": [str(d) for d in calibration.data],
        }
    return source, None


def _parse(decided: _Decisions, graph: Path, *, verbose: bool) -> _Parsed:
    """Step 3: builder, network (strongly typed where the plan says so) and the ONNX parser."""
    flavour, source = decided.flavour, decided.source
    trt = flavour.module
    logger = _make_logger(trt, verbose)
    builder = trt.Builder(logger)
    flags = 0
    strongly_typed_flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if decided.plan.strongly_typed and strongly_typed_flag is not None:  # 11.x: deprecated, always on
        flags |= 1 << int(strongly_typed_flag)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    try:
        ok = parser.parse_from_file(str(graph))
    except Exception as exc:  # noqa: BLE001 - bindings raise on unreadable files
        raise ToolkitError(f"{source}: {flavour.label} cannot parse it ({type(exc).__name__}: {exc})") from exc
    if not ok:
        raise _parser_error(parser, flavour, source)
    if network.num_outputs == 0:
        raise ToolkitError(f"{source}: {flavour.label} found no network outputs")
    net_input = next(
        (network.get_input(i) for i in range(network.num_inputs) if network.get_input(i).name == decided.input_name),
        network.get_input(0),
    )
    return _Parsed(logger, builder, network, parser, net_input)


def _configure(decided: _Decisions, parsed: _Parsed, options: BuildOptions) -> _Configured:
    """Step 4: flags, memory, targets, timing cache, profile, calibrator, progress."""
    trt, flavour, plan = decided.flavour.module, decided.flavour, decided.plan
    config = parsed.builder.create_builder_config()
    for name in plan.builder_flags:
        config.set_flag(getattr(trt.BuilderFlag, name))
    for name in plan.cleared_flags:
        if hasattr(trt.BuilderFlag, name):  # a flavour without the flag has nothing to clear
            config.clear_flag(getattr(trt.BuilderFlag, name))
    tf32 = config.get_flag(trt.BuilderFlag.TF32) if hasattr(trt.BuilderFlag, "TF32") else None
    configured = _Configured(config, tf32=None if tf32 is None else bool(tf32))
    if options.workspace_mib:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(options.workspace_mib) << 20)
    if hasattr(trt, "ProfilingVerbosity"):
        config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED  # layer info for 'deeplab-trt info'
    if flavour.has_compute_capability_targets:
        config.num_compute_capabilities = len(decided.targets)
        for index, name in enumerate(decided.targets):
            if not config.set_compute_capability(getattr(trt.ComputeCapability, name), index):
                raise ToolkitError(f"--compute-capability {name}: {flavour.label} refused it")
    if decided.dla is not None:
        _apply_dla(trt, config, decided.dla)
    if flavour.capture_needs_user_allocation:
        configured.user_allocation = plan_user_allocation(flavour)
        if configured.user_allocation:
            config.set_flag(trt.BuilderFlag.REQUIRE_USER_ALLOCATION)  # CUDA-graph capturable
    configured.timing_cache = _apply_timing_cache(trt, config, flavour, options.timing_cache, configured.notes)
    opt_profile = None
    if decided.profile is not None:
        opt_profile = parsed.builder.create_optimization_profile()
        opt_profile.set_shape(parsed.input.name, *decided.profile)
        config.add_optimization_profile(opt_profile)
    if plan.calibrator:
        configured.calibrator = _make_calibrator(trt, decided.spec, options, profile=decided.profile, dims=decided.dims)
        config.int8_calibrator = configured.calibrator
        if opt_profile is not None and hasattr(config, "set_calibration_profile"):
            config.set_calibration_profile(opt_profile)
    if flavour.has_progress_monitor:
        configured.monitor = make_progress_monitor(trt, options.progress)
        config.progress_monitor = configured.monitor
    else:
        log.info("building (this TensorRT reports no progress) ...")
    return configured


def _apply_dla(trt: Any, config: Any, dla: DlaPlan) -> None:
    """Every layer to DLA core ``dla.core``; with ``gpu_fallback``, layers DLA cannot run to the GPU."""
    config.default_device_type = trt.DeviceType.DLA
    config.DLA_core = dla.core
    if dla.gpu_fallback:
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)


def _serialize(decided: _Decisions, parsed: _Parsed, configured: _Configured) -> tuple[memoryview, float]:
    """Step 5: ``build_serialized_network``; (the engine's bytes, seconds TensorRT took)."""
    flavour, source = decided.flavour, decided.source
    started = time.perf_counter()
    try:
        serialized = parsed.builder.build_serialized_network(parsed.network, configured.config)
    except Exception as exc:  # noqa: BLE001
        raise ToolkitError(
            f"{source}: {flavour.label} failed to build ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''})"
        ) from exc
    finally:
        monitor = configured.monitor
        if monitor is not None and monitor.bar is not None:
            monitor.bar.close()
    seconds = time.perf_counter() - started
    if serialized is None:
        raise ToolkitError(f"{source}: {flavour.label} could not build the engine ({parsed.logger.first_error()})")
    return memoryview(serialized), seconds


def _make_record(
    decided: _Decisions,
    options: BuildOptions,
    parsed: _Parsed,
    configured: _Configured,
    blob: memoryview,
    pass_record: dict[str, Any] | None,
    engine_seconds: float,
) -> EngineRecord:
    """Step 6: the engine's record (``build_time_s`` is set by the caller, just before writing)."""
    flavour, plan, gpu = decided.flavour, decided.plan, decided.gpu
    io = _network_io(parsed.network, decided.profile, parsed.input.name)
    in_dtype = next((t["dtype"] for t in io if t["mode"] == "input"), "float32")
    out_dtype = next((t["dtype"] for t in io if t["mode"] == "output"), "float32")
    spec = decided.spec.to_dict()
    spec["extra"] = {**spec["extra"], "precision": plan.precision, "input_dtype": in_dtype, "output_dtype": out_dtype}
    return EngineRecord(
        toolkit_version=__version__,
        engine=EngineFile.of(decided.output.name, blob),
        precision=plan.precision,
        tf32=configured.tf32,
        user_allocation=configured.user_allocation,
        plan=plan.to_dict(),
        tensorrt={**flavour.describe(), "label": flavour.label},
        compute_capabilities=decided.targets,
        compute_capability_source=decided.target_source,
        dla=None if decided.dla is None else decided.dla.to_dict(),
        build_gpu={"compute_capability": sm_name(gpu), "name": decided.gpu_reason} if gpu else None,
        build_options=options.to_dict(),
        io=io,
        input_dtype=in_dtype,
        output_dtype=out_dtype,
        source_onnx=_file_record(decided.source),
        onnx_pass=pass_record,
        engine_build_s=round(engine_seconds, 3),
        built_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        host={"platform": platform.platform(), "python": platform.python_version()},
        spec=spec,
    )


def _save_timing_cache(cache: Any, path: str | None) -> None:
    """Step 7 (after the engine): keep the timing cache; failing to is a warning, the engine is fine."""
    if cache is None or not path:
        return
    try:
        write_bytes_atomic(path, bytes(memoryview(cache.serialize())))
        log.info("timing cache: saved %s", path)
    except OSError as exc:
        log.warning("--timing-cache %s: not saved (%s)", path, exc)


def _report(decided: _Decisions, parsed: _Parsed, configured: _Configured, record: EngineRecord) -> None:
    """What the build did, once it succeeded: TensorRT's warnings, notes, the FP16 pass, the files."""
    for warning in dict.fromkeys(_first_lines(parsed.logger.warnings)).keys():
        log.warning("TensorRT: %s", warning)
    for note in configured.notes:
        log.warning("%s", note)
    fp16 = record.onnx_pass
    if fp16 and fp16["pass"] == "fp16":
        log.info(
            "fp16 pass: label agreement with FP32 %.3f%% on %d probe frames (ONNX Runtime CPU)%s",
            fp16["agreement"] * 100,
            fp16["frames"],
            f"; kept in FP32: {', '.join(fp16['kept_fp32_nodes'])}" if fp16["kept_fp32_nodes"] else "",
        )
    flavour, plan, targets = decided.flavour, decided.plan, decided.targets
    note = ""
    if flavour.has_compute_capability_targets and decided.target_source.startswith("default"):
        note = f" ({decided.target_source}: TensorRT-RTX's portable set; --compute-capability picks others)"
    if decided.dla is not None:
        note += f", DLA core {decided.dla.core}{' with GPU fallback' if decided.dla.gpu_fallback else ''}"
    log.info(
        "wrote %s (%.1f MB) + %s in %.1f s (engine build %.1f s): %s on %s (%s), targets %s%s",
        decided.output,
        (record.engine.bytes or 0) / 1e6,
        sidecar_path(decided.output).name,
        record.build_time_s,
        record.engine_build_s,
        plan.precision,
        flavour.label,
        plan.summary,
        ",".join(targets) or "-",
        note,
    )


def _first_lines(messages: list[str], limit: int = 5) -> list[str]:
    lines = [m.strip().splitlines()[0] for m in messages if m.strip()]
    return lines[:limit]


def _make_logger(trt: Any, verbose: bool):
    from deeplab_trt.runtime.tensorrt_log import make_logger

    return make_logger(trt, verbose)
