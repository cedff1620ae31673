"""Child side of the NVIDIA ModelOpt contender: FP32 ONNX + calibration .npy → ModelOpt Q/DQ ONNX.

Why a separate process and interpreter: ``nvidia-modelopt``'s ``onnx`` extra pins
``onnxruntime-gpu`` and CuPy, which would replace the CPU ``onnxruntime`` the project runs on.
ModelOpt therefore lives in a venv of its own (with the CPU ``onnxruntime``), and
``calibration_accuracy`` runs this file with that venv's python (``--modelopt-python``).

The protocol, kept small so either side can change without the other:

* the parent writes the calibration batch it gives every contender as one ``float32`` ``.npy``
  (N×3×H×W, already through the runtime's preprocessing);
* it runs ``PYTHON modelopt_child.py --onnx FP32 --calib CALIB.npy --method entropy|max
  --high-precision fp32|fp16 --out OUT.onnx --result RESULT.json``;
* this side imports only the standard library, numpy and ModelOpt (never ``deeplab_trt``: it is
  not installed in that venv), calls ``modelopt.onnx.quantization.quantize`` with CPU
  calibration, and writes ``RESULT.json`` = ``{"seconds", "peak_rss_mb", "modelopt_version"}``
  (``seconds``: the quantize call only, imports excluded) once ``OUT.onnx`` exists;
* a failure is a non-zero exit and its last stderr line; nothing is written to ``RESULT.json``.

``python modelopt_child.py --check`` exits 0 where ModelOpt's ONNX quantizer imports, else prints
why on one line and exits 3: the parent's probe before any work.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

#: Exit status of ``--check`` when ModelOpt's ONNX quantizer does not import.
NOT_IMPORTABLE = 3


def peak_rss_mb() -> float:
    """This process's peak resident memory in MB since it started.

    ``VmHWM`` (Linux) rather than ``ru_maxrss``: ``subprocess`` forks (or vforks) the parent, and
    ``ru_maxrss`` carries the parent's peak across ``exec``, so a child started from a large
    parent would report the parent's memory. ``ru_maxrss`` (KiB on Linux) is the fallback.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def check() -> int:
    """0 where ``modelopt.onnx.quantization`` imports; else one line on stdout and 3."""
    try:
        import modelopt
        import modelopt.onnx.quantization  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - any import failure (missing dependency, CUDA-only wheel) = unusable
        print(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
        return NOT_IMPORTABLE
    print(modelopt.__version__)
    return 0


def quantize(onnx_path: Path, calib: Path, method: str, high_precision: str, out: Path) -> dict:
    """Run ModelOpt's INT8 PTQ; returns the result record.

    Settings, chosen to match the other contenders: INT8, ``calibration_method`` as asked,
    calibration on ONNX Runtime's CPU provider only (``calibration_eps=['cpu']``: no CUDA here),
    ``high_precision_dtype`` = what the unquantized rest computes in; everything else ModelOpt's
    defaults (its own Q/DQ placement is what is being compared).
    """
    import numpy as np

    data = np.load(calib)
    import modelopt
    from modelopt.onnx.quantization import quantize as mo_quantize

    started = time.perf_counter()
    mo_quantize(
        str(onnx_path),
        quantize_mode="int8",
        calibration_data=data,
        calibration_method=method,
        calibration_eps=["cpu"],
        high_precision_dtype=high_precision,
        output_path=str(out),
        log_level="WARNING",
    )
    seconds = time.perf_counter() - started
    if not out.is_file():
        raise RuntimeError(f"{out}: ModelOpt returned without writing the quantized model")
    return {"seconds": seconds, "peak_rss_mb": peak_rss_mb(), "modelopt_version": modelopt.__version__}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only say whether ModelOpt imports")
    parser.add_argument("--onnx", type=Path)
    parser.add_argument("--calib", type=Path, help="float32 .npy, N x 3 x H x W")
    parser.add_argument("--method", choices=("entropy", "max"), default="entropy")
    parser.add_argument("--high-precision", choices=("fp32", "fp16"), default="fp32")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--result", type=Path)
    args = parser.parse_args(argv)
    if args.check:
        return check()
    if not (args.onnx and args.calib and args.out and args.result):
        parser.error("--onnx, --calib, --out and --result are required")
    record = quantize(args.onnx, args.calib, args.method, args.high_precision, args.out)
    tmp = args.result.with_name(args.result.name + ".tmp")
    tmp.write_text(json.dumps(record) + "\n")
    os.replace(tmp, args.result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
