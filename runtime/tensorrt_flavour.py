"""Which TensorRT is installed, and what it can do: THE one place that knows.

Why one place: three flavours ship under different import names and ask for precision in
different ways (see DESIGN.md, "TensorRT flavours"):

* TensorRT 10.x (``tensorrt``; JetPack 6 ships 10.3): weak typing (``BuilderFlag.FP16/INT8``)
  and strongly typed networks; the legacy ``IInt8EntropyCalibrator2`` still exists.
* TensorRT 11.x (``tensorrt``): strongly typed only; ``BuilderFlag.FP16/INT8`` and the whole
  ``IInt8Calibrator`` family are removed.
* TensorRT-RTX 1.x (``tensorrt_rtx``, or ``tensorrt_rtx_bindings`` from the
  ``tensorrt-rtx-cu13-bindings`` wheel): strongly typed only, builds ahead of time without a
  GPU for a list of target compute capabilities; its timing cache is a no-op (since 1.2).

Every other module asks :func:`detect` and reads the :class:`Flavour`'s capability flags
instead of testing version numbers or ``hasattr`` itself. The capabilities are read from the
imported module (``hasattr``), not inferred from the version, so a point release that adds
or removes an API is handled by the same code. :meth:`Flavour.documented` builds the same
description without the module, from the documented API of a version, for unit tests of the
decisions on flavours that cannot be installed here.

This module imports no TensorRT at import time, so it works (and reports why) on machines
without any TensorRT.
"""

from __future__ import annotations

import functools
import importlib
import re
from dataclasses import dataclass, field
from typing import Any

from deeplab_trt.runtime.errors import NotInstalledError, ToolkitError

FLAVOURS = ("tensorrt", "tensorrt-rtx")
#: Import names tried per flavour, in order. ``tensorrt_rtx`` is what NVIDIA's docs import;
#: the pip wheels ``tensorrt-rtx-cu13-bindings`` install it as ``tensorrt_rtx_bindings``.
MODULE_NAMES = {"tensorrt": ("tensorrt",), "tensorrt-rtx": ("tensorrt_rtx", "tensorrt_rtx_bindings")}
#: ``auto`` tries these in order: a full TensorRT where one is installed, else TensorRT-RTX.
AUTO_ORDER = ("tensorrt", "tensorrt-rtx")
MIN_TENSORRT = (10, 0)

INSTALL_HINTS = {
    "tensorrt": (
        "install TensorRT 10/11 with 'pip install tensorrt' (or 'tensorrt-cu12' / 'tensorrt-cu13' "
        "to match your CUDA); on Jetson use JetPack's 'sudo apt install python3-libnvinfer' "
        "(a venv needs --system-site-packages to see it)"
    ),
    "tensorrt-rtx": (
        "install TensorRT-RTX with 'pip install tensorrt-rtx-cu13-libs tensorrt-rtx-cu13-bindings' "
        "(imports as tensorrt_rtx_bindings), or pip install deeplab-trt[rtx]"
    ),
}

_ALIASES = {
    "auto": "auto",
    "tensorrt": "tensorrt",
    "trt": "tensorrt",
    "tensorrt-rtx": "tensorrt-rtx",
    "tensorrt_rtx": "tensorrt-rtx",
    "rtx": "tensorrt-rtx",
    "tensorrt_rtx_bindings": "tensorrt-rtx",
}


def parse_version(text: str) -> tuple[int, ...]:
    """``"10.3.0.30"`` → ``(10, 3, 0, 30)``; ``"11.0.0b1"`` → ``(11, 0, 0)``."""
    parts: list[int] = []
    for piece in str(text).split("."):
        match = re.match(r"\d+", piece)
        if not match:
            break
        parts.append(int(match.group()))
        if match.end() != len(piece):
            break
    return tuple(parts) or (0,)


@dataclass(frozen=True)
class Flavour:
    """One installed (or, for tests, documented) TensorRT and what its API offers."""

    name: str  #: "tensorrt" | "tensorrt-rtx"
    version: tuple[int, ...]
    module_name: str = ""
    #: ``IInt8EntropyCalibrator2`` exists (TensorRT 10 only): implicit INT8 is possible.
    has_calibrator_api: bool = False
    #: ``BuilderFlag.FP16`` and ``BuilderFlag.INT8`` exist (TensorRT <= 10): weak typing.
    has_weak_typing: bool = False
    #: ``NetworkDefinitionCreationFlag.STRONGLY_TYPED`` exists (TensorRT >= 9.1, RTX).
    has_strongly_typed: bool = True
    #: A timing cache that does something (TensorRT-RTX keeps the API but makes it a no-op).
    has_timing_cache: bool = True
    #: ``IBuilderConfig.set_compute_capability`` (TensorRT-RTX ahead-of-time targets).
    has_compute_capability_targets: bool = False
    has_progress_monitor: bool = True
    has_engine_inspector: bool = True
    #: ``Runtime.get_engine_validity`` (TensorRT-RTX): a header check before deserialising.
    has_engine_validity: bool = False
    #: Engines can run on a DLA core (``DeviceType.DLA``): TensorRT up to 10.7 (JetPack 6 ships
    #: 10.3) and from 11.4 where the platform has DLA; never TensorRT-RTX (its bindings keep
    #: ``DeviceType.DLA``, the product has no DLA). Whether *this* machine has DLA cores is the
    #: builder's ``num_DLA_cores``.
    has_dla: bool = False
    #: ``ICudaEngine.create_runtime_config`` + ``IRuntimeConfig.create_runtime_cache`` (TensorRT-RTX):
    #: the kernels it compiles at run time can be kept in a file and loaded at the next start.
    has_runtime_cache: bool = False
    #: Engines allocate memory at run time unless built with ``BuilderFlag.REQUIRE_USER_ALLOCATION``,
    #: so capturing ``execute_async_v3`` into the caller's CUDA graph needs that flag (TensorRT-RTX,
    #: per its 1.2 release notes; TensorRT 10/11 capture static shapes as built).
    capture_needs_user_allocation: bool = False
    #: ``BuilderFlag.REQUIRE_USER_ALLOCATION`` exists (TensorRT-RTX 1.2+).
    has_user_allocation_flag: bool = False
    #: The imported module (None for a :meth:`documented` description).
    module: Any = field(default=None, compare=False, repr=False)

    @property
    def major(self) -> int:
        return self.version[0]

    @property
    def strongly_typed_only(self) -> bool:
        """FP16/INT8 can only come from the graph's types (FP16 ONNX, Q/DQ nodes)."""
        return not self.has_weak_typing

    @property
    def version_string(self) -> str:
        return ".".join(str(v) for v in self.version)

    @property
    def label(self) -> str:
        """Human name for messages: ``TensorRT 10.3.0`` / ``TensorRT-RTX 1.7.1``."""
        pretty = "TensorRT-RTX" if self.name == "tensorrt-rtx" else "TensorRT"
        return f"{pretty} {'.'.join(str(v) for v in self.version[:3])}"

    def describe(self) -> dict[str, Any]:
        """JSON-ready record for sidecars and reports."""
        return {
            "flavour": self.name,
            "version": self.version_string,
            "module": self.module_name,
            "strongly_typed_only": self.strongly_typed_only,
            "has_calibrator_api": self.has_calibrator_api,
        }

    # ----- constructors ------------------------------------------------------------------
    @classmethod
    def from_module(cls, name: str, module: Any) -> Flavour:
        """Read the capabilities off an imported ``tensorrt`` / ``tensorrt_rtx`` module."""
        version = parse_version(getattr(module, "__version__", "0"))
        flags = getattr(module, "BuilderFlag", None)
        net_flags = getattr(module, "NetworkDefinitionCreationFlag", None)
        config = getattr(module, "IBuilderConfig", None)
        engine = getattr(module, "ICudaEngine", None)
        runtime = getattr(module, "Runtime", None)
        timing = config is not None and hasattr(config, "create_timing_cache")
        runtime_config = getattr(module, "IRuntimeConfig", None)
        if name == "tensorrt-rtx" and version >= (1, 2):
            timing = False  # "Timing cache operations are no-ops in TensorRT-RTX" (deprecated in 1.2)
        return cls(
            name=name,
            version=version,
            module_name=getattr(module, "__name__", ""),
            has_calibrator_api=hasattr(module, "IInt8EntropyCalibrator2"),
            has_weak_typing=flags is not None and hasattr(flags, "FP16") and hasattr(flags, "INT8"),
            has_strongly_typed=net_flags is not None and hasattr(net_flags, "STRONGLY_TYPED"),
            has_timing_cache=timing,
            has_compute_capability_targets=config is not None and hasattr(config, "set_compute_capability"),
            has_progress_monitor=hasattr(module, "IProgressMonitor"),
            has_engine_inspector=engine is not None and hasattr(engine, "create_engine_inspector"),
            has_engine_validity=runtime is not None and hasattr(runtime, "get_engine_validity"),
            has_dla=name == "tensorrt" and hasattr(getattr(module, "DeviceType", None), "DLA") and dla_release(version),
            has_runtime_cache=engine is not None
            and hasattr(engine, "create_runtime_config")
            and hasattr(runtime_config, "create_runtime_cache"),
            capture_needs_user_allocation=name == "tensorrt-rtx",
            has_user_allocation_flag=flags is not None and hasattr(flags, "REQUIRE_USER_ALLOCATION"),
            module=module,
        )

    @classmethod
    def documented(cls, name: str, version: tuple[int, ...] | str) -> Flavour:
        """The capabilities a flavour/version has *per NVIDIA's documentation*, without the module.

        For tests of decisions on flavours that cannot be installed here (TensorRT 10, 11);
        tests name these descriptions as fakes. Sources: TensorRT 10 API (weak typing,
        deprecated calibrators), TensorRT 11 migration notes (both removed), TensorRT-RTX docs
        (strongly typed only, compute-capability targets, timing cache a no-op since 1.2, runtime
        cache since 1.0, ``REQUIRE_USER_ALLOCATION`` since 1.2).
        """
        name = normalise_name(name)
        if name == "auto":
            raise ValueError("documented() needs a concrete flavour")
        version = parse_version(version) if isinstance(version, str) else tuple(version)
        if name == "tensorrt":
            legacy = version[0] <= 10
            return cls(
                name=name,
                version=version,
                module_name="tensorrt (documented)",
                has_calibrator_api=legacy,
                has_weak_typing=legacy,
                has_strongly_typed=version >= (9, 1),
                has_timing_cache=True,
                has_compute_capability_targets=False,
                has_progress_monitor=version >= (8, 6),
                has_engine_inspector=True,
                has_engine_validity=False,
                has_dla=dla_release(version),
            )
        return cls(
            name=name,
            version=version,
            module_name="tensorrt_rtx (documented)",
            has_calibrator_api=False,
            has_weak_typing=False,
            has_strongly_typed=True,
            has_timing_cache=version < (1, 2),
            has_compute_capability_targets=True,
            has_progress_monitor=True,
            has_engine_inspector=True,
            has_engine_validity=version >= (1, 1),
            has_runtime_cache=True,
            capture_needs_user_allocation=True,
            has_user_allocation_flag=version >= (1, 2),
        )


def dla_release(version: tuple[int, ...]) -> bool:
    """TensorRT releases with DLA support: up to 10.7 (the last 10.x with it), and 11.4 on (per platform).

    Args:
        version: a ``tensorrt`` version.
    """
    return tuple(version[:2]) < (10, 8) or tuple(version[:2]) >= (11, 4)


def normalise_name(preferred: str | None) -> str:
    key = (preferred or "auto").strip().lower()
    if key not in _ALIASES:
        raise ToolkitError(f"--flavour {preferred}: expected one of auto, {', '.join(FLAVOURS)}")
    return _ALIASES[key]


def _import_flavour(name: str) -> tuple[Any | None, str]:
    """(module, "") or (None, why not) for the first import name of ``name`` that works."""
    reasons = []
    for module_name in MODULE_NAMES[name]:
        try:
            return importlib.import_module(module_name), ""
        except ModuleNotFoundError as exc:
            if exc.name and exc.name != module_name:
                reasons.append(f"{module_name}: needs {exc.name}")  # installed but broken
        except Exception as exc:  # noqa: BLE001 - a stub or a missing shared library: not usable
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            reasons.append(f"{module_name}: {type(exc).__name__}: {first}")
    return None, "; ".join(reasons)


@functools.cache
def _load(name: str) -> Flavour | str:
    """The concrete flavour ``name`` (cached: one import, one object), or why it is unusable."""
    module, why = _import_flavour(name)
    if module is None:
        return why
    flavour = Flavour.from_module(name, module)
    if name == "tensorrt" and flavour.version[:2] < MIN_TENSORRT:
        return f"tensorrt {flavour.version_string} is too old (need 10.0 or newer)"
    return flavour


def detect(preferred: str | None = "auto") -> Flavour:
    """The TensorRT to use. ``auto``: ``tensorrt``, else ``tensorrt_rtx`` / ``tensorrt_rtx_bindings``.

    An explicitly asked flavour that is not installed, or no TensorRT at all, is a
    :class:`NotInstalledError` saying how to install one (several routes: pip, the extras,
    JetPack's apt packages, hence not :func:`~deeplab_trt.runtime.errors.require`'s one extra).
    """
    name = normalise_name(preferred)
    candidates = AUTO_ORDER if name == "auto" else (name,)
    problems = []
    for candidate in candidates:
        found = _load(candidate)
        if isinstance(found, Flavour):
            return found
        if found:
            problems.append(found)
    broken = f" ({'; '.join(problems)})" if problems else ""
    if name == "auto":
        raise NotInstalledError(
            f"no TensorRT found{broken}: {INSTALL_HINTS['tensorrt-rtx']}; or {INSTALL_HINTS['tensorrt']}"
        )
    raise NotInstalledError(f"--flavour {name}: not installed{broken}; {INSTALL_HINTS[name]}")


#: Forget what was found (tests that hide modules call this).
detect.cache_clear = _load.cache_clear  # type: ignore[attr-defined]


def available() -> list[Flavour]:
    """Every flavour that imports here (for ``info`` and reports)."""
    found = []
    for name in FLAVOURS:
        try:
            found.append(detect(name))
        except ToolkitError:
            pass
    return found


# ----- the GPU a flavour would target ----------------------------------------------------------
@functools.lru_cache(maxsize=1)
def current_gpu() -> tuple[tuple[int, int] | None, str]:
    """((major, minor), device name) of CUDA device 0, or (None, why there is none).

    Used to pick the default build target and to check an engine against the GPU it is
    about to be loaded on. Asks the CUDA runtime through cuda-python; never raises.
    """
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        return None, "cuda-python is not installed"
    try:
        err, count = cudart.cudaGetDeviceCount()
        if int(err) != 0:
            return None, f"no CUDA device ({cudart.cudaGetErrorString(err)[1].decode()})"
        if count == 0:
            return None, "no CUDA device"
        err, props = cudart.cudaGetDeviceProperties(0)
        if int(err) != 0:
            return None, f"cannot query CUDA device 0 ({cudart.cudaGetErrorString(err)[1].decode()})"
        name = props.name.decode(errors="replace").rstrip("\x00") if isinstance(props.name, bytes) else str(props.name)
        return (int(props.major), int(props.minor)), name
    except Exception as exc:  # noqa: BLE001 - a driver problem means "no usable GPU" here
        return None, f"CUDA query failed ({type(exc).__name__}: {exc})"


def sm_name(cc: tuple[int, int]) -> str:
    """(8, 9) → ``"SM89"``; (12, 0) → ``"SM120"``."""
    return f"SM{cc[0]}{cc[1]}"


#: TensorRT-RTX targets per its docs (1.5+: SM75, SM80, SM86, SM89, SM120, SM121; no SM90).
DOCUMENTED_RTX_TARGETS = ("SM75", "SM80", "SM86", "SM89", "SM120", "SM121")


def _sm_number(name: str) -> int:
    return int(name[2:])


def supported_compute_capabilities(flavour: Flavour) -> list[str]:
    """Target names (``SM89`` …) the flavour can build for, from its ``ComputeCapability`` enum."""
    if not flavour.has_compute_capability_targets:
        return []
    enum = getattr(flavour.module, "ComputeCapability", None) if flavour.module is not None else None
    if enum is None:
        return list(DOCUMENTED_RTX_TARGETS)
    names = [n for n in getattr(enum, "__members__", {}) if re.fullmatch(r"SM\d+", n)]
    return sorted(names, key=_sm_number)


def parse_compute_capability(token: str) -> str:
    """``SM89`` / ``sm_89`` / ``89`` / ``8.9`` → ``SM89``; ``current`` stays ``current``."""
    text = token.strip()
    if text.lower() == "current":
        return "current"
    match = re.fullmatch(r"(?:sm_?|compute_?)?(\d{2,3})", text, flags=re.IGNORECASE)
    if match:
        return f"SM{int(match.group(1))}"
    match = re.fullmatch(r"(\d{1,2})\.(\d)", text)
    if match:
        return f"SM{int(match.group(1))}{int(match.group(2))}"
    raise ToolkitError(f"--compute-capability {token}: expected names like SM89, sm_120, 8.6 or 'current'")


_DTYPE_NAMES = {
    "FLOAT": "float32",
    "HALF": "float16",
    "BF16": "bfloat16",
    "INT8": "int8",
    "UINT8": "uint8",
    "INT32": "int32",
    "INT64": "int64",
    "BOOL": "bool",
    "FP8": "fp8",
    "INT4": "int4",
    "FP4": "fp4",
}


def dtype_name(trt_dtype: Any) -> str:
    """TensorRT ``DataType.HALF`` → ``"float16"`` (numpy's names, which sidecars use)."""
    name = getattr(trt_dtype, "name", str(trt_dtype)).split(".")[-1]
    return _DTYPE_NAMES.get(name, name.lower())
