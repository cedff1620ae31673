"""Open a TensorRT engine: check its sidecar against this machine, then deserialise.

Why check first: TensorRT's own refusals are a log line and a ``None`` (wrong version,
wrong GPU, corrupt file), or a crash deep inside the first inference. The JSON sidecar
that ``deeplab-trt build`` writes next to every engine records what the engine was built
with and for, so the mismatch can be named before TensorRT is asked: *built with
TensorRT-RTX 1.7.1 for SM86, this machine runs TensorRT 10.3.0 on SM87: rebuild it here*.
The sidecar also records the engine's size and sha256, which catches truncated or
swapped files.

Sidecar location: ``OUT.engine`` → ``OUT.engine.json`` (the engine's full name plus
``.json``: works for any engine suffix, sorts next to the engine, never collides with the
model's own files).

The sidecar checks are pure functions and run on CPU; deserialising needs a CUDA GPU.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deeplab_trt.runtime.errors import ToolkitError
from deeplab_trt.runtime.spec import ModelSpec
from deeplab_trt.runtime.tensorrt_flavour import Flavour, current_gpu, detect, dtype_name, parse_version, sm_name

log = logging.getLogger(__name__)

SIDECAR_FORMAT = "deeplab-trt engine"
SIDECAR_VERSION = 1
_LABELS = {"tensorrt": "TensorRT", "tensorrt-rtx": "TensorRT-RTX"}


def sidecar_path(engine: str | Path) -> Path:
    """``model.engine`` → ``model.engine.json``."""
    engine = Path(engine)
    return engine.with_name(engine.name + ".json")


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def built_label(sidecar: dict[str, Any]) -> str:
    """``TensorRT-RTX 1.7.1`` from the sidecar's record."""
    rec = sidecar.get("tensorrt", {})
    version = ".".join(str(v) for v in parse_version(str(rec.get("version", "?")))[:3])
    return f"{_LABELS.get(rec.get('flavour'), rec.get('flavour', '?'))} {version}"


def read_sidecar(engine: str | Path) -> dict[str, Any]:
    """The sidecar of ``engine`` as a dict; missing/malformed → one-line :class:`ToolkitError`."""
    engine = Path(engine)
    if not engine.exists():
        raise ToolkitError(f"{engine}: no such file")
    if engine.is_dir():
        raise ToolkitError(f"{engine}: is a directory, expected a TensorRT engine file")
    path = sidecar_path(engine)
    if not path.exists():
        raise ToolkitError(
            f"{engine}: no sidecar {path.name} next to it (engines built by 'deeplab-trt build' "
            "have one: it carries the model spec and what the engine was built for)"
        )
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ToolkitError(
            f"{path}: not a valid engine sidecar ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
        ) from exc
    if not isinstance(data, dict) or data.get("format") != SIDECAR_FORMAT:
        raise ToolkitError(f"{path}: not a deeplab-trt engine sidecar (no format: {SIDECAR_FORMAT!r})")
    missing = [k for k in ("spec", "tensorrt", "engine", "io") if k not in data]
    if missing:
        raise ToolkitError(f"{path}: incomplete engine sidecar ({', '.join(missing)} missing)")
    if int(data.get("format_version", 0)) > SIDECAR_VERSION:
        raise ToolkitError(
            f"{path}: sidecar format {data.get('format_version')} is newer than this toolkit "
            f"reads ({SIDECAR_VERSION}); update deeplab-trt"
        )
    return data


def spec_from_sidecar(sidecar: dict[str, Any], source: str = "sidecar") -> ModelSpec:
    return ModelSpec.from_dict(sidecar["spec"], source=source)


def check_compatibility(
    sidecar: dict[str, Any], flavour: Flavour, gpu: tuple[int, int] | None, source: str = "engine", gpu_name: str = ""
) -> None:
    """Raise one clear :class:`ToolkitError` if the engine cannot load with ``flavour`` on ``gpu``.

    TensorRT engines load only in the TensorRT (flavour and major.minor.patch) that built
    them, and only on the compute capabilities they were built for.
    """
    rec = sidecar.get("tensorrt", {})
    built_with = built_label(sidecar)
    if rec.get("flavour") != flavour.name:
        raise ToolkitError(
            f"{source}: built with {built_with}, but this machine runs {flavour.label}; "
            f"rebuild it here from the ONNX with 'deeplab-trt build'"
        )
    built_version = parse_version(str(rec.get("version", "0")))[:3]
    if built_version != tuple(flavour.version[:3]):
        raise ToolkitError(
            f"{source}: built with {built_with}, but this machine runs {flavour.label}; engines load "
            "only in the TensorRT version that built them: rebuild it here with 'deeplab-trt build'"
        )
    if gpu is None:
        return
    targets = [str(t) for t in sidecar.get("compute_capabilities") or []]
    here = sm_name(gpu)
    if targets and here not in targets:
        where = f" ({gpu_name})" if gpu_name else ""
        fix = (
            f"rebuild with --compute-capability {here}"
            if flavour.has_compute_capability_targets
            else "rebuild it on this GPU"
        )
        raise ToolkitError(
            f"{source}: built for {', '.join(targets)} with {built_with}; this GPU{where} is {here}: {fix}"
        )


def check_engine_bytes(data: bytes, sidecar: dict[str, Any], source: str = "engine") -> None:
    """The file is the one the sidecar describes (size and sha256)."""
    rec = sidecar.get("engine", {})
    expected_size = rec.get("bytes")
    if expected_size is not None and len(data) != int(expected_size):
        raise ToolkitError(
            f"{source}: {len(data)} bytes but its sidecar records {expected_size} "
            "(truncated, modified, or a different engine): rebuild it"
        )
    expected = rec.get("sha256")
    if expected and hashlib.sha256(data).hexdigest() != expected:
        raise ToolkitError(
            f"{source}: contents do not match the sha256 in its sidecar (corrupt, or a different "
            "engine next to this sidecar): rebuild it"
        )


def describe_validity(flavour: Flavour, diagnostics: int) -> str:
    """TensorRT-RTX ``EngineInvalidityDiagnostics`` bit flags → words."""
    enum = getattr(flavour.module, "EngineInvalidityDiagnostics", None)
    words = []
    for name, member in (getattr(enum, "__members__", {}) or {}).items():
        if int(diagnostics) & int(member):
            words.append(name.lower().replace("_", " "))
    return ", ".join(words) or "no reason given"


@dataclass
class LoadedEngine:
    """A deserialised engine and what keeps it alive (the runtime and logger must outlive it)."""

    path: Path
    engine: Any
    runtime: Any
    logger: Any
    sidecar: dict[str, Any]
    spec: ModelSpec
    flavour: Flavour


def load_engine(path: str | Path, *, flavour: Flavour | None = None, verbose: bool = False) -> LoadedEngine:
    """Check the sidecar, then ``trt.Runtime(logger).deserialize_cuda_engine``; one error for every refusal."""
    from deeplab_trt.runtime.tensorrt_log import make_logger

    path = Path(path)
    sidecar = read_sidecar(path)
    spec = spec_from_sidecar(sidecar, source=str(sidecar_path(path)))
    flavour = flavour or detect(sidecar["tensorrt"].get("flavour", "auto"))
    gpu, gpu_name = current_gpu()
    if gpu is None:
        raise ToolkitError(
            f"{path}: deserialising a TensorRT engine needs a CUDA GPU ({gpu_name}); "
            "'deeplab-trt info' shows its build record without one"
        )
    check_compatibility(sidecar, flavour, gpu, str(path), gpu_name)
    data = path.read_bytes()
    check_engine_bytes(data, sidecar, str(path))

    trt = flavour.module
    logger = make_logger(trt, verbose)
    runtime = trt.Runtime(logger)
    if flavour.has_engine_validity:
        try:
            validity, diagnostics = runtime.get_engine_validity(data)
        except Exception as exc:  # noqa: BLE001 - a header check that fails is not fatal by itself
            log.debug("get_engine_validity failed: %s", exc)
        else:
            if validity == trt.EngineValidity.INVALID:
                raise ToolkitError(
                    f"{path}: {flavour.label} says this engine cannot run here "
                    f"({describe_validity(flavour, diagnostics)}); rebuild it with 'deeplab-trt build'"
                )
            if validity == trt.EngineValidity.SUBOPTIMAL:
                log.warning(
                    "%s: %s says this engine may run slower here (%s)",
                    path,
                    flavour.label,
                    describe_validity(flavour, diagnostics),
                )
    try:
        engine = runtime.deserialize_cuda_engine(data)
    except Exception as exc:  # noqa: BLE001 - bindings raise RuntimeError/TypeError on bad blobs
        raise ToolkitError(
            f"{path}: {flavour.label} cannot deserialise it ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''})"
        ) from exc
    if engine is None:
        raise ToolkitError(f"{path}: {flavour.label} refused to deserialise it ({logger.first_error()})")
    return LoadedEngine(
        path=path, engine=engine, runtime=runtime, logger=logger, sidecar=sidecar, spec=spec, flavour=flavour
    )


def engine_io(engine: Any, trt: Any) -> list[dict[str, Any]]:
    """I/O tensors as the deserialised engine reports them (name, mode, shape, dtype)."""
    out = []
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        mode = engine.get_tensor_mode(name)
        out.append(
            {
                "name": name,
                "mode": "input" if mode == trt.TensorIOMode.INPUT else "output",
                "shape": list(engine.get_tensor_shape(name)),
                "dtype": dtype_name(engine.get_tensor_dtype(name)),
            }
        )
    return out
