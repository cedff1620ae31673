"""Engine size and build wall time per precision, built on this machine with ``build_engine``.

Why it is in the accuracy benchmark: issue #12 asks for size and build time next to the
accuracy of each precision, from one run. TensorRT-RTX builds engines ahead of time on a CPU,
so these numbers exist without a GPU; latency does not (``deeplab-trt bench`` on a GPU).

Size is **not** a speed proxy: measured on TensorRT-RTX 1.7.1, every INT8 engine of the demo
model is ≈ 34 MB whether its unquantized rest computes in FP32 or FP16, and the FP16 engine is
24.8 MB — an INT8 engine larger than the FP16 one says nothing about which runs faster
(:data:`SIZE_NOTE` is printed beside the numbers).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

#: Printed beside every engine table: what the numbers do not mean.
SIZE_NOTE = (
    "Engine size is not a speed proxy (RTX INT8 engines are ~34 MB whatever the rest's precision, FP16 24.8 MB): "
    "no speed is claimed from these numbers; latency needs a GPU (`deeplab-trt bench`). "
    "Build times are one build each on this machine."
)


def engines_unavailable(flavour: str = "auto") -> str | None:
    """None where a TensorRT flavour can build here, else the one-line reason why not."""
    from deeplab_trt.runtime.errors import ToolkitError
    from deeplab_trt.runtime.tensorrt_flavour import detect

    try:
        detect(flavour)
    except ToolkitError as exc:
        return f"engines skipped: {exc}"
    return None


#: One engine to build: (ONNX, precision, ``CalibrationOptions`` fields such as ``data``/``method``;
#: empty: no calibration in the build).
Target = tuple[Path, str, dict[str, Any]]


def build_engines(targets: dict[str, Target], out_dir: Path, *, flavour: str = "auto") -> dict[str, dict[str, Any]]:
    """Build each ``name: (onnx, precision, options)`` with ``build_engine``; returns size and time per name.

    Args:
        targets: row name → (ONNX to build, ``fp32`` | ``fp16`` | ``int8``, calibration options). An
            ``int8`` target is either a Q/DQ ONNX (its rest precision is the graph's; no calibration
            in its time) or the FP32 ONNX with ``data`` (``build_engine`` calibrates: its time
            includes calibration, ``engine_build_s`` does not).
        out_dir: where the engines are written (the caller's temporary folder).
        flavour: TensorRT flavour, as ``deeplab-trt build --flavour``.

    Returns:
        ``{name: {"precision", "engine_mib", "build_s", "engine_build_s", "flavour"}}``, or
        ``{name: {"precision", "error"}}`` (one line) where that build failed; ``build_s`` is the
        whole ``build_engine`` call (FP16 pass included for ``fp16``), ``engine_build_s`` the
        TensorRT build alone where the sidecar records it.
    """
    from deeplab_trt.builder.engine import BuildOptions, build_engine
    from deeplab_trt.calibration.options import CalibrationOptions
    from deeplab_trt.runtime.errors import ToolkitError

    out_dir.mkdir(parents=True, exist_ok=True)
    rows: dict[str, dict[str, Any]] = {}
    for index, (name, (onnx_path, precision, extra)) in enumerate(targets.items()):
        engine = out_dir / f"engine_{index}_{precision}.engine"
        options = BuildOptions(precision=precision, flavour=flavour, progress=False)
        if extra:
            options.calibration = CalibrationOptions(**extra)
        started = time.perf_counter()
        try:
            sidecar = build_engine(onnx_path, engine, options)
        except ToolkitError as exc:
            rows[name] = {"precision": precision, "error": str(exc).splitlines()[0]}
            continue
        seconds = time.perf_counter() - started
        rows[name] = {
            "precision": precision,
            "engine_mib": engine.stat().st_size / 2**20,
            "build_s": seconds,
            "engine_build_s": sidecar.get("engine_build_s"),
            "flavour": (sidecar.get("tensorrt") or {}).get("label"),
        }
    return rows


def engine_cells(row: dict[str, Any] | None) -> tuple[str, str]:
    """(engine MiB, build s) table cells for one row: numbers, the error, or ``—`` where not built."""
    if not row:
        return "—", "—"
    if "error" in row:
        return f"not built: {row['error'][:60]}", "—"
    return f"{row['engine_mib']:.1f}", f"{row['build_s']:.1f}"


def engine_table(rows: dict[str, dict[str, Any]]) -> str:
    """Markdown table of :func:`build_engines`' result, with :data:`SIZE_NOTE` under it."""
    lines = ["| engine | precision | engine MiB | build wall (s) | TensorRT build alone (s) |", "|---|---|--:|--:|--:|"]
    for name, row in rows.items():
        size, seconds = engine_cells(row)
        alone = row.get("engine_build_s")
        lines.append(
            f"| {name} | {row.get('precision', '—')} | {size} | {seconds} | "
            f"{'—' if alone is None else f'{alone:.1f}'} |"
        )
    return "\n".join(lines + ["", SIZE_NOTE])
