"""``deeplab-trt calibrate``: FP32 ONNX + images/videos (or a TensorRT cache) → INT8 Q/DQ ONNX."""

from __future__ import annotations

import argparse
import sys
import time

from deeplab_trt.calibration.options import add_calibration_arguments, calibration_options
from deeplab_trt.runtime.cli_types import BATCH_IS_MODEL_BATCH, renamed_flag


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "calibrate",
        help="INT8 calibration: Q/DQ ONNX (and a TensorRT calibration cache)",
        description="Collect activation statistics on calibration images/videos with ONNX Runtime, "
        "choose INT8 scales (TensorRT's entropy method by default) and write a Q/DQ ONNX "
        "model that TensorRT 10/11 and TensorRT-RTX build as INT8. With --cache FILE and no "
        "--data, scales are read from a TensorRT calibration cache instead.",
    )
    p.add_argument("model", metavar="MODEL.onnx", help="FP32 ONNX exported by 'deeplab-trt export'")
    add_calibration_arguments(p)
    renamed_flag(p, "--batch", "--calib-batch", why=BATCH_IS_MODEL_BATCH)
    p.add_argument(
        "--weights",
        choices=("int8", "qdq"),
        default="int8",
        help="int8 initializers + DequantizeLinear (default) or float weights with Q/DQ",
    )
    p.add_argument(
        "--int8-rest",
        choices=("auto", "fp16", "fp32"),
        default="auto",
        help="precision of layers without Q/DQ: fp16 (mixed graph for strongly typed TensorRT 11/RTX), fp32 "
        "(TensorRT 10 picks it with INT8|FP16 flags); auto: fp16 unless the installed TensorRT is 10.x",
    )
    p.add_argument("--report", metavar="DIR", default=None, help="write the per-tensor report and plots here")
    p.add_argument(
        "-o", "--output", metavar="OUT.int8.onnx", default=None, help="output model (default: MODEL.int8.onnx)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    from deeplab_trt.calibration.quantize import (  # onnx / onnxruntime only when the command runs
        quantize_onnx,
        rest_for,
    )

    started = time.perf_counter()
    out = quantize_onnx(
        args.model,
        output=args.output,
        report_dir=args.report,
        weights=args.weights,
        rest=rest_for(args.int8_rest),
        progress=not args.no_progress and sys.stderr.isatty(),
        **calibration_options(args).quantize_kwargs(),
    )
    extras = []
    if args.cache and args.data:
        extras.append(f"cache {args.cache}")
    if args.report:
        extras.append(f"report {args.report}")
    print(
        f"calibrate: wrote {out}{' (' + ', '.join(extras) + ')' if extras else ''} "
        f"in {time.perf_counter() - started:.1f} s"
    )
    return 0
