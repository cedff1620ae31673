"""What the runtime needs to know about a model, carried with the model file.

Why: the ONNX file (``metadata_props``) and the engine's JSON sidecar carry the same
:class:`ModelSpec`, so ``run``, ``calibrate``, ``build`` and ``bench`` never ask the user for
class names, mean/std or the head form a second time. The ONNX metadata keys are flat and
human-readable (``netron`` shows them); each value is JSON.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deeplab_trt.runtime.errors import ToolkitError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: Head forms: ``logits`` = full-resolution logits (torchvision's output), ``lowres`` = the
#: logits before the final bilinear upsample, ``labels`` = an in-graph ArgMax.
HEADS = ("logits", "lowres", "labels")

VOC_CLASSES = (
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)


def voc_palette(n: int = 256) -> list[tuple[int, int, int]]:
    """The PASCAL VOC colour map (RGB), the one torchvision's VOC-label models are shown with."""
    palette = []
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette.append((r, g, b))
    return palette


METADATA_PREFIX = ""  # keys are plain: model, classes, palette, ...
_META_KEYS = {
    "model": "name",
    "classes": "classes",
    "palette": "palette",
    "mean": "mean",
    "std": "std",
    "input_layout": "layout",
    "input_channels": "channel_order",
    "input_size": None,  # [H, W]
    "head": "head",
    "output_stride": "output_stride",
    "input_name": "input_name",
    "output_name": "output_name",
    "toolkit_version": "toolkit_version",
    "exporter": "exporter",
}


@dataclass
class ModelSpec:
    """Model facts shared by every stage. Palette is RGB; frames are BGR (OpenCV)."""

    name: str
    classes: list[str]
    palette: list[tuple[int, int, int]]
    input_height: int
    input_width: int
    head: str = "logits"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    output_stride: int | None = None
    input_name: str = "input"
    output_name: str = "output"
    layout: str = "NCHW"
    channel_order: str = "RGB"
    toolkit_version: str = ""
    exporter: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.head not in HEADS:
            raise ToolkitError(f"unknown head form {self.head!r} (expected one of {', '.join(HEADS)})")
        self.classes = [str(c) for c in self.classes]
        self.palette = [_rgb_ints(p) for p in self.palette]
        if len(self.palette) < len(self.classes):
            self.palette = self.palette + voc_palette(len(self.classes))[len(self.palette) :]
        self.mean = _rgb_floats(self.mean, "mean")
        self.std = _rgb_floats(self.std, "std")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def input_size(self) -> tuple[int, int]:
        """(height, width) the model takes."""
        return self.input_height, self.input_width

    # ----- ONNX metadata_props -------------------------------------------------------------
    def to_metadata(self) -> dict[str, str]:
        """Flat str→str mapping for ONNX ``metadata_props`` (each value JSON)."""
        out: dict[str, str] = {}
        for key, attr in _META_KEYS.items():
            value = [self.input_height, self.input_width] if attr is None else getattr(self, attr)
            if isinstance(value, tuple):
                value = list(value)
            out[key] = json.dumps(value)
        if self.extra:
            out["extra"] = json.dumps(self.extra)
        return out

    @classmethod
    def from_metadata(cls, meta: dict[str, str], source: str = "model") -> ModelSpec:
        missing = [k for k in ("model", "classes", "input_size", "head") if k not in meta]
        if missing:
            raise ToolkitError(
                f"{source}: no deeplab-trt metadata ({', '.join(missing)} missing); export it with 'deeplab-trt export'"
            )
        try:
            kwargs: dict[str, Any] = {}
            for key, attr in _META_KEYS.items():
                if key in meta and attr is not None:
                    kwargs[attr] = json.loads(meta[key])
            kwargs["input_height"], kwargs["input_width"] = json.loads(meta["input_size"])
            if "extra" in meta:
                kwargs["extra"] = json.loads(meta["extra"])
            return cls(**kwargs)
        except (ValueError, TypeError) as exc:
            raise ToolkitError(f"{source}: malformed deeplab-trt metadata ({exc})") from exc

    # ----- JSON (engine sidecar) ------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["palette"] = [list(p) for p in self.palette]
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "sidecar") -> ModelSpec:
        names = {f.name for f in dataclasses.fields(cls)}
        try:
            return cls(**{k: v for k, v in d.items() if k in names})
        except TypeError as exc:
            raise ToolkitError(f"{source}: incomplete model spec ({exc})") from exc


def load_onnx(path: str | Path, load_external_data: bool = True):
    """An ONNX model, with one-line errors for missing, not-ONNX and truncated files."""
    import onnx  # optional at import time: engine-only deployments need not have it

    path = Path(path)
    if not path.exists():
        raise ToolkitError(f"{path}: no such file")
    if path.is_dir():
        raise ToolkitError(f"{path}: is a directory, expected an ONNX file")
    try:
        model = onnx.load(str(path), load_external_data=load_external_data)
    except Exception as exc:  # protobuf DecodeError, missing external data, ...  # noqa: BLE001
        raise ToolkitError(
            f"{path}: not a valid ONNX model ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else 'unreadable'})"
        ) from exc
    if not model.graph.node:
        raise ToolkitError(f"{path}: not a valid ONNX model (empty or truncated graph)")
    return model


def read_onnx_metadata(path: str | Path) -> dict[str, str]:
    """``metadata_props`` of an ONNX file (weights stored outside it are not read)."""
    return {p.key: p.value for p in load_onnx(path, load_external_data=False).metadata_props}


def spec_from_onnx(path: str | Path) -> ModelSpec:
    """The spec stored in an ONNX file by ``deeplab-trt export``."""
    return ModelSpec.from_metadata(read_onnx_metadata(path), source=str(path))


def _rgb_ints(colour) -> tuple[int, int, int]:
    """One palette colour as an (R, G, B) triple; a clear error for any other length."""
    values = tuple(int(v) for v in colour)
    if len(values) != 3:
        raise ToolkitError(f"model spec: palette colours need 3 values (R, G, B), got {list(values)}")
    return values[0], values[1], values[2]


def _rgb_floats(values, what: str) -> tuple[float, float, float]:
    """Per-channel (R, G, B) floats; a clear error for any other length (metadata may be hand-edited)."""
    values = tuple(float(v) for v in values)
    if len(values) != 3:
        raise ToolkitError(f"model spec: {what} needs 3 values (R, G, B), got {len(values)}")
    return values[0], values[1], values[2]
