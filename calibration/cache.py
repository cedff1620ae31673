"""TensorRT's text calibration cache: write it from our scales, read it into scales.

Why: the cache is how scales travel between tools. TensorRT 10's implicit INT8 (a calibrator
handed to the builder) reads it instead of calibrating, and writes one after calibrating;
``deeplab-trt calibrate --cache`` turns either kind into a Q/DQ model for TensorRT 11 / RTX.

Format (what ``IInt8EntropyCalibrator2::writeCalibrationCache`` produces)::

    TRT-100300-EntropyCalibration2
    input: 3c010a14
    /backbone/conv1/Relu_output_0: 3d8a3e8b

First line ``TRT-<version>-<algorithm>``, ``<version>`` the integer NV_TENSORRT_VERSION of the
writer (8.6.1 → 8601, 10.3.0 → 100300); then one ``tensor: scale`` line per tensor, the scale
(``amax / 127``) as the 8 hex digits of its big-endian IEEE float32. Tensor names may contain
spaces and colons (``(Unnamed Layer* 3) [Shuffle]_output``): the value is after the last ": ".
TensorRT ignores a cache whose header does not match its version and algorithm, so
:func:`write_cache` takes the version of the TensorRT that will read it.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path

import numpy as np

from deeplab_trt.runtime.atomic import write_text_atomic
from deeplab_trt.runtime.errors import ToolkitError

ALGORITHM = "EntropyCalibration2"
#: TensorRT 10.3: JetPack 6's TensorRT, the one most likely to read a cache written here.
DEFAULT_TRT_VERSION = 100300
_HEADER = re.compile(r"^TRT-(\d+)-(\w+)$")
_HEX = re.compile(r"^[0-9a-fA-F]{8}$")


def trt_version_number(version: str) -> int:
    """``"10.3.0.30"`` → 100300, ``"8.6.1"`` → 8601 (NV_TENSORRT_VERSION's encoding per major)."""
    parts = [int(p) for p in re.findall(r"\d+", version)[:3]] + [0, 0, 0]
    major, minor, patch = parts[:3]
    if major >= 10:
        return major * 10000 + minor * 100 + patch
    return major * 1000 + minor * 100 + patch


def scale_to_hex(scale: float) -> str:
    return struct.pack(">f", float(np.float32(scale))).hex()


def hex_to_scale(text: str) -> float:
    return float(struct.unpack(">f", bytes.fromhex(text))[0])


def format_cache(scales: dict[str, float], version: int = DEFAULT_TRT_VERSION, algorithm: str = ALGORITHM) -> str:
    lines = [f"TRT-{int(version)}-{algorithm}"]
    for name, scale in scales.items():
        if "\n" in name:
            raise ToolkitError(f"tensor name {name!r} cannot be stored in a calibration cache")
        lines.append(f"{name}: {scale_to_hex(scale)}")
    return "\n".join(lines) + "\n"


def parse_cache(text: str, source: str = "cache") -> tuple[dict[str, float], int, str]:
    """(tensor → scale, version, algorithm); errors name ``source`` and the line."""
    lines = text.splitlines()
    if not lines or not _HEADER.match(lines[0].strip()):
        first = lines[0][:60] if lines else "(empty file)"
        raise ToolkitError(
            f"{source}: not a TensorRT calibration cache (first line {first!r}, "
            "expected like 'TRT-100300-EntropyCalibration2')"
        )
    version_text, algorithm = _HEADER.match(lines[0].strip()).groups()
    scales: dict[str, float] = {}
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        name, sep, value = line.rstrip().rpartition(": ")
        if not sep or not name or not _HEX.match(value):
            raise ToolkitError(f"{source}:{number}: malformed line {line[:80]!r} (expected 'tensor: 8 hex digits')")
        scale = hex_to_scale(value)
        if not np.isfinite(scale) or scale < 0:
            raise ToolkitError(f"{source}:{number}: scale of {name!r} is {scale} (must be finite and >= 0)")
        scales[name] = scale
    if not scales:
        raise ToolkitError(f"{source}: calibration cache has no tensor scales")
    return scales, int(version_text), algorithm


def write_cache(
    path: str | Path, scales: dict[str, float], version: int = DEFAULT_TRT_VERSION, algorithm: str = ALGORITHM
) -> Path:
    """Write ``scales`` (tensor → amax/127) as a TensorRT cache, atomically."""
    path = Path(path)
    if path.is_dir():
        raise ToolkitError(f"{path}: is a directory, expected a calibration cache file path")
    write_text_atomic(path, format_cache(scales, version, algorithm))
    return path


def read_cache(path: str | Path) -> tuple[dict[str, float], int, str]:
    path = Path(path)
    if not path.is_file():
        raise ToolkitError(f"{path}: no such calibration cache")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ToolkitError(f"{path}: not a TensorRT calibration cache (binary data)") from exc
    return parse_cache(text, str(path))
