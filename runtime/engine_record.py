"""The engine record: the JSON sidecar ``X.engine.json`` that describes ``X.engine``.

Why one owner: the builder writes this file, the loader checks an engine against it before
TensorRT is asked, and ``deeplab-trt info`` prints it. With one type that writes, reads,
validates and describes it, the format has one definition; a malformed file is one
:class:`~deeplab_trt.runtime.errors.InvalidModelError` naming it, never a ``KeyError`` deep in
the loader.

Why check an engine against it: TensorRT's own refusals are a log line and a ``None`` (wrong
version, wrong GPU, corrupt file), or a crash in the first inference. The record says what
the engine was built with and for, so a mismatch is named first: *built with TensorRT-RTX
1.7.1 for SM86, this machine runs TensorRT 10.3.0 on SM87: rebuild it here*. Its size and
sha256 catch truncated or swapped files.

Location: ``OUT.engine`` → ``OUT.engine.json`` (the engine's full name plus ``.json``: works
for any engine suffix, sorts next to the engine, never collides with the model's files).

On disk: one JSON object, keys in the order of :class:`EngineRecord`'s fields after
``"format"`` and ``"format_version"``; keys this version does not know are kept and written
back. Every check here is pure and runs on CPU.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deeplab_trt.runtime.atomic import atomic_path
from deeplab_trt.runtime.errors import IncompatibleEngineError, InvalidModelError, ToolkitError
from deeplab_trt.runtime.spec import ModelSpec
from deeplab_trt.runtime.tensorrt_flavour import Flavour, parse_version, sm_name

FORMAT = "deeplab-trt engine"
FORMAT_VERSION = 1
#: keys without which a record cannot check or describe its engine
REQUIRED = ("engine", "tensorrt", "io", "spec")
_LABELS = {"tensorrt": "TensorRT", "tensorrt-rtx": "TensorRT-RTX"}
#: a serialized engine (``EngineFile.bytes`` is a field name, so the builtin gets an alias)
Blob = bytes | memoryview


def sidecar_path(engine: str | Path) -> Path:
    """``model.engine`` → ``model.engine.json``."""
    engine = Path(engine)
    return engine.with_name(engine.name + ".json")


def engine_of(path: str | Path) -> Path:
    """``model.engine.json`` → ``model.engine``; any other path as it is (``info`` accepts either)."""
    path = Path(path)
    if path.name.endswith((".engine.json", ".plan.json")):
        return path.with_name(path.name[: -len(".json")])
    return path


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file, read in chunks (engines and models are large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _first_line(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"


@dataclass(frozen=True)
class EngineFile:
    """The engine file a record describes: its name next to the record, size and sha256."""

    file: str
    bytes: int | None = None
    sha256: str | None = None

    @classmethod
    def of(cls, name: str, blob: Blob) -> EngineFile:
        """The description of ``blob`` (the serialized engine) stored as ``name``."""
        return cls(file=name, bytes=len(blob), sha256=hashlib.sha256(blob).hexdigest())

    def check(self, data: Blob, source: str = "engine") -> None:
        """Raise :class:`InvalidModelError` unless ``data`` is the file described (size and sha256)."""
        if self.bytes is not None and len(data) != int(self.bytes):
            raise InvalidModelError(
                f"{source}: {len(data)} bytes but its sidecar records {self.bytes} "
                "(truncated, modified, or a different engine): rebuild it"
            )
        if self.sha256 and hashlib.sha256(data).hexdigest() != self.sha256:
            raise InvalidModelError(
                f"{source}: contents do not match the sha256 in its sidecar (corrupt, or a different "
                "engine next to this sidecar): rebuild it"
            )


@dataclass(kw_only=True)
class EngineRecord:
    """What ``deeplab-trt build`` knows about one engine; the sidecar's content, typed.

    Only :data:`REQUIRED` fields must be present in a file; the rest default to "not recorded"
    (``None`` / empty), which :meth:`describe` shows as ``?``.
    """

    toolkit_version: str | None = None
    engine: EngineFile
    precision: str | None = None
    tf32: bool | None = None  #: may FP32 layers use TF32 math (None: the flavour has no such flag)
    #: built with ``BuilderFlag.REQUIRE_USER_ALLOCATION`` (TensorRT-RTX: needed to capture it into a
    #: CUDA graph); absent where the flavour does not need it, and in records from before it
    user_allocation: bool | None = field(default=None, metadata={"omit_if_none": True})
    plan: dict[str, Any] = field(default_factory=dict)  #: the builder's ``BuildPlan.to_dict()``
    tensorrt: dict[str, Any]  #: ``Flavour.describe()`` plus ``label``
    compute_capabilities: list[str] = field(default_factory=list)
    compute_capability_source: str | None = None
    #: ``{"core": N, "gpu_fallback": bool}`` for a DLA engine; absent (not null) for GPU engines,
    #: so that records from before DLA read and write back unchanged
    dla: dict[str, Any] | None = field(default=None, metadata={"omit_if_none": True})
    build_gpu: dict[str, Any] | None = None
    build_options: dict[str, Any] = field(default_factory=dict)
    io: list[dict[str, Any]]  #: name, mode, shape, dtype (and the input's ``profile``)
    input_dtype: str | None = None
    output_dtype: str | None = None
    source_onnx: dict[str, Any] | None = None  #: path, bytes, sha256 of the ONNX built from
    onnx_pass: dict[str, Any] | None = None  #: what the FP16 or Q/DQ pass did, if one ran
    engine_build_s: float | None = None
    build_time_s: float | None = None
    built_at: str | None = None
    host: dict[str, Any] | None = None
    spec: dict[str, Any]  #: ``ModelSpec.to_dict()``
    #: keys this version does not know, kept so that a newer writer's additions survive
    unknown: dict[str, Any] = field(default_factory=dict, repr=False)

    # ----- JSON ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The JSON object as stored (keys in field order, unknown keys last)."""
        d: dict[str, Any] = {"format": FORMAT, "format_version": FORMAT_VERSION}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name != "unknown" and not (value is None and f.metadata.get("omit_if_none")):
                d[f.name] = dataclasses.asdict(value) if isinstance(value, EngineFile) else value
        return {**d, **self.unknown}

    @classmethod
    def from_dict(cls, data: Any, source: str = "sidecar") -> EngineRecord:
        """Validate a parsed sidecar; anything malformed is one :class:`InvalidModelError` naming ``source``.

        Args:
            data: the parsed JSON.
            source: the file it came from, for messages.
        """
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise InvalidModelError(f"{source}: not a deeplab-trt engine sidecar (no format: {FORMAT!r})")
        version = data.get("format_version", 0)
        if not isinstance(version, int) or isinstance(version, bool):
            raise InvalidModelError(f"{source}: format_version is {version!r}, expected an integer")
        if version > FORMAT_VERSION:
            raise IncompatibleEngineError(
                f"{source}: sidecar format {version} is newer than this toolkit reads ({FORMAT_VERSION}); "
                "update deeplab-trt"
            )
        missing = [k for k in REQUIRED if k not in data]
        if missing:
            raise InvalidModelError(f"{source}: incomplete engine sidecar ({', '.join(missing)} missing)")
        hints = typing.get_type_hints(cls)
        names = [f.name for f in dataclasses.fields(cls) if f.name != "unknown"]
        kwargs: dict[str, Any] = {}
        for name in names:
            if name in data:
                _check_type(data[name], hints[name], f"{source}: {name}")
                kwargs[name] = data[name]
        engine = kwargs["engine"]
        file_hints = typing.get_type_hints(EngineFile)
        for key in ("file", "bytes", "sha256"):
            if key in engine:
                _check_type(engine[key], file_hints[key], f"{source}: engine.{key}")
        if "file" not in engine:
            raise InvalidModelError(f"{source}: incomplete engine sidecar (engine.file missing)")
        kwargs["engine"] = EngineFile(**{k: engine[k] for k in ("file", "bytes", "sha256") if k in engine})
        for index, tensor in enumerate(kwargs["io"]):
            if not isinstance(tensor, dict) or not {"name", "mode", "shape", "dtype"} <= tensor.keys():
                raise InvalidModelError(f"{source}: io[{index}] is not a tensor (name, mode, shape, dtype)")
        dla = kwargs.get("dla")
        if dla is not None and not (
            isinstance(dla.get("core"), int) and isinstance(dla.get("gpu_fallback", False), bool)
        ):
            raise InvalidModelError(f"{source}: dla is {json.dumps(dla)[:40]}, expected a core number and gpu_fallback")
        known = {"format", "format_version", *names}
        return cls(**kwargs, unknown={k: v for k, v in data.items() if k not in known})

    # ----- files --------------------------------------------------------------------------
    @classmethod
    def read(cls, engine_path: str | Path) -> EngineRecord:
        """The record next to ``engine_path``; a missing or malformed file is one line naming it.

        Args:
            engine_path: the engine (``X.engine``); the record is ``X.engine.json``.
        """
        engine = Path(engine_path)
        if not engine.exists():
            raise ToolkitError(f"{engine}: no such file")
        if engine.is_dir():
            raise ToolkitError(f"{engine}: is a directory, expected a TensorRT engine file")
        path = sidecar_path(engine)
        if not path.exists():
            raise InvalidModelError(
                f"{engine}: no sidecar {path.name} next to it (engines built by 'deeplab-trt build' "
                "have one: it carries the model spec and what the engine was built for)"
            )
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise InvalidModelError(f"{path}: not a valid engine sidecar ({_first_line(exc)})") from exc
        return cls.from_dict(data, source=str(path))

    def write(self, engine_path: str | Path, *, engine: bytes | memoryview | None = None) -> Path:
        """Write the record next to ``engine_path`` (and, given ``engine``, the engine itself).

        Atomic: with ``engine``, both files appear only once both are complete; any failure
        leaves neither (nor a temporary) behind. Returns the sidecar's path.

        Args:
            engine_path: the engine file (``X.engine``); the record goes to ``X.engine.json``.
            engine: the serialized engine to write to ``engine_path`` with it.
        """
        engine_path = Path(engine_path)
        text = json.dumps(self.to_dict(), indent=2) + "\n"
        if engine is None:
            with atomic_path(sidecar_path(engine_path)) as tmp:
                tmp.write_text(text, encoding="utf-8")
            return sidecar_path(engine_path)
        with atomic_path(engine_path) as engine_tmp, atomic_path(sidecar_path(engine_path)) as record_tmp:
            with open(engine_tmp, "wb") as handle:
                handle.write(engine)
            record_tmp.write_text(text, encoding="utf-8")
        return sidecar_path(engine_path)

    # ----- what it says -------------------------------------------------------------------
    @property
    def flavour_name(self) -> str | None:
        """``tensorrt`` / ``tensorrt-rtx``: the flavour that built the engine."""
        return self.tensorrt.get("flavour")

    @property
    def built_label(self) -> str:
        """``TensorRT-RTX 1.7.1``: what built the engine, for messages."""
        recorded = self.tensorrt.get("version")
        version = ".".join(str(v) for v in parse_version(str(recorded))[:3]) if recorded else "?"
        name = self.flavour_name
        return f"{_LABELS.get(name or '', name or '?')} {version}"

    def model_spec(self, source: str = "sidecar") -> ModelSpec:
        """The model spec the engine was built from (classes, palette, mean/std, I/O form)."""
        return ModelSpec.from_dict(self.spec, source=source)

    def describe(self) -> list[str]:
        """Text lines for ``deeplab-trt info``: the first is a headline clause, the rest details."""
        targets = ", ".join(self.compute_capabilities or ["-"])
        lines = [
            f"{self.precision or '?'}, built with {self.built_label} for {targets} ({self.compute_capability_source or '?'})",
            f"plan: {self.plan.get('summary', '?')}",
        ]
        if self.user_allocation is not None:
            graphs = "CUDA-graph capturable" if self.user_allocation else "not CUDA-graph capturable"
            lines.append(f"{graphs} (REQUIRE_USER_ALLOCATION {'on' if self.user_allocation else 'off'})")
        if self.dla is not None:
            fallback = (
                "layers DLA cannot run fall back to the GPU" if self.dla.get("gpu_fallback") else "no GPU fallback"
            )
            lines.append(f"DLA core {self.dla['core']} ({fallback})")
        for io in self.io:
            prof = io.get("profile")
            extra = f"  profile {prof['min'][0]}:{prof['opt'][0]}:{prof['max'][0]}" if prof else ""
            lines.append(f"{io['mode']:<7} {io['name']}: {shape_text(io['shape'])} {io['dtype']}{extra}")
        src = self.source_onnx or {}
        lines.append(f"source: {src.get('path', '?')} (sha256 {str(src.get('sha256', '?'))[:12]}…)")
        lines.append(
            f"built {self.built_at or '?'} in {_or_unknown(self.build_time_s)} s "
            f"(engine build {_or_unknown(self.engine_build_s)} s), toolkit {self.toolkit_version or '?'}"
        )
        return lines

    # ----- checks against this machine ----------------------------------------------------
    def check_compatibility(
        self, flavour: Flavour, gpu: tuple[int, int] | None, source: str = "engine", gpu_name: str = ""
    ) -> None:
        """Raise one :class:`IncompatibleEngineError` if the engine cannot load with ``flavour`` on ``gpu``.

        TensorRT engines load only in the TensorRT (flavour and major.minor.patch) that built
        them, and only on the compute capabilities they were built for.

        Args:
            flavour: the TensorRT that would deserialise it.
            gpu: this machine's compute capability, or None to skip the GPU check.
            source: the engine's name, for messages.
            gpu_name: the GPU's name, for messages.
        """
        built_with = self.built_label
        if self.flavour_name != flavour.name:
            raise IncompatibleEngineError(
                f"{source}: built with {built_with}, but this machine runs {flavour.label}; "
                f"rebuild it here from the ONNX with 'deeplab-trt build'"
            )
        if parse_version(str(self.tensorrt.get("version", "0")))[:3] != tuple(flavour.version[:3]):
            raise IncompatibleEngineError(
                f"{source}: built with {built_with}, but this machine runs {flavour.label}; engines load "
                "only in the TensorRT version that built them: rebuild it here with 'deeplab-trt build'"
            )
        if self.dla is not None and not flavour.has_dla:
            raise IncompatibleEngineError(
                f"{source}: built for DLA core {self.dla['core']}, but {flavour.label} has no DLA: "
                "rebuild it without --dla-core"
            )
        if gpu is None:
            return
        targets = [str(t) for t in self.compute_capabilities]
        here = sm_name(gpu)
        if targets and here not in targets:
            where = f" ({gpu_name})" if gpu_name else ""
            fix = (
                f"rebuild with --compute-capability {here}"
                if flavour.has_compute_capability_targets
                else "rebuild it on this GPU"
            )
            raise IncompatibleEngineError(
                f"{source}: built for {', '.join(targets)} with {built_with}; this GPU{where} is {here}: {fix}"
            )

    def check_dla_cores(self, cores: int, source: str = "engine") -> None:
        """Raise :class:`IncompatibleEngineError` if the engine's DLA core is not among this machine's ``cores``.

        Args:
            cores: the runtime's ``num_DLA_cores``.
            source: the engine's name, for messages.
        """
        if self.dla is not None and not 0 <= int(self.dla["core"]) < cores:
            raise IncompatibleEngineError(
                f"{source}: built for DLA core {self.dla['core']}, this machine has {cores} DLA "
                f"core{'s' if cores != 1 else ''}: rebuild it with --dla-core 0..{cores - 1}"
                if cores
                else f"{source}: built for DLA core {self.dla['core']}, this machine has no DLA: "
                "rebuild it without --dla-core"
            )

    def check_engine_bytes(self, data: bytes, source: str = "engine") -> None:
        """The engine file is the one this record describes (size and sha256)."""
        self.engine.check(data, source)


def shape_text(shape: list[int]) -> str:
    """``[-1, 3, 64, 128]`` → ``N×3×64×128``."""
    return "×".join("N" if v == -1 else str(v) for v in shape)


def _or_unknown(value: Any) -> str:
    return "?" if value is None else str(value)


def _json_types(hint: Any) -> tuple[type, ...]:
    """The JSON value types an annotation admits (``dict[str, Any] | None`` → ``(dict, NoneType)``)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return tuple(t for arg in typing.get_args(hint) for t in _json_types(arg))
    if hint is type(None):
        return (type(None),)
    origin = typing.get_origin(hint) or hint
    if origin is float:
        return (int, float)  # JSON has one number type
    if origin is EngineFile:
        return (dict,)
    return (origin,)


def _check_type(value: Any, hint: Any, where: str) -> None:
    if hint is Any:
        return
    allowed = _json_types(hint)
    wrong = not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed)
    if wrong:
        names = " or ".join("null" if t is type(None) else t.__name__ for t in allowed)
        raise InvalidModelError(f"{where} is {type(value).__name__} {json.dumps(value)[:40]}, expected {names}")
    if isinstance(value, list) and typing.get_origin(hint) is list:
        (item_hint,) = typing.get_args(hint)
        for index, item in enumerate(value):
            _check_type(item, item_hint, f"{where}[{index}]")
