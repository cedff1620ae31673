"""Open a TensorRT engine: check its record against this machine, then deserialise.

Why check first: TensorRT's own refusals are a log line and a ``None`` (wrong version,
wrong GPU, corrupt file), or a crash deep inside the first inference. The engine's record
(:class:`~deeplab_trt.runtime.engine_record.EngineRecord`, the ``X.engine.json`` sidecar that
``deeplab-trt build`` writes) says what it was built with and for, so the mismatch is named
before TensorRT is asked. The record's checks run on CPU; deserialising needs a CUDA GPU.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deeplab_trt.runtime.engine_record import EngineRecord, sidecar_path
from deeplab_trt.runtime.errors import IncompatibleEngineError, InvalidModelError, ToolkitError
from deeplab_trt.runtime.spec import ModelSpec
from deeplab_trt.runtime.tensorrt_flavour import Flavour, current_gpu, detect, dtype_name

log = logging.getLogger(__name__)


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
    record: EngineRecord
    spec: ModelSpec
    flavour: Flavour


def load_engine(path: str | Path, *, flavour: Flavour | None = None, verbose: bool = False) -> LoadedEngine:
    """Check the engine's record, then ``trt.Runtime(logger).deserialize_cuda_engine``; one error per refusal.

    Args:
        path: the engine file (its record ``PATH.json`` next to it).
        flavour: the TensorRT to deserialise with (default: the one that built it, if installed).
        verbose: show TensorRT's log.
    """
    from deeplab_trt.runtime.tensorrt_log import make_logger

    path = Path(path)
    record = EngineRecord.read(path)
    spec = record.model_spec(source=str(sidecar_path(path)))
    flavour = flavour or detect(record.flavour_name or "auto")
    gpu, gpu_name = current_gpu()
    if gpu is None:
        raise ToolkitError(
            f"{path}: deserialising a TensorRT engine needs a CUDA GPU ({gpu_name}); "
            "'deeplab-trt info' shows its build record without one"
        )
    record.check_compatibility(flavour, gpu, str(path), gpu_name)
    data = path.read_bytes()
    record.check_engine_bytes(data, str(path))

    trt = flavour.module
    logger = make_logger(trt, verbose)
    runtime = trt.Runtime(logger)
    if record.dla is not None:  # the engine runs on the DLA core it was built for
        record.check_dla_cores(int(getattr(runtime, "num_DLA_cores", 0) or 0), str(path))
        runtime.DLA_core = int(record.dla["core"])
    if flavour.has_engine_validity:
        try:
            validity, diagnostics = runtime.get_engine_validity(data)
        except Exception as exc:  # noqa: BLE001 - a header check that fails is not fatal by itself
            log.debug("get_engine_validity failed: %s", exc)
        else:
            if validity == trt.EngineValidity.INVALID:
                raise IncompatibleEngineError(
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
        raise InvalidModelError(
            f"{path}: {flavour.label} cannot deserialise it ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''})"
        ) from exc
    if engine is None:
        raise InvalidModelError(f"{path}: {flavour.label} refused to deserialise it ({logger.first_error()})")
    return LoadedEngine(
        path=path, engine=engine, runtime=runtime, logger=logger, record=record, spec=spec, flavour=flavour
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
