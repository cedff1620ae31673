"""``deeplab-trt calibrate``: FP32 ONNX + images/videos (or a TensorRT cache) → INT8 Q/DQ ONNX."""

from __future__ import annotations

import argparse
import sys
import time

from deeplab_trt.calibration.histogram import DEFAULT_BINS
from deeplab_trt.calibration.scales import METHODS


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
    p.add_argument(
        "--data",
        nargs="+",
        metavar="PATH",
        default=None,
        help="image folders, image or video files, glob patterns (mixed)",
    )
    p.add_argument("--num", type=int, default=None, metavar="N", help="use N frames drawn with --seed (default: all)")
    p.add_argument("--every", type=int, default=1, metavar="K", help="use every K-th video frame (default 1)")
    p.add_argument("--seed", type=int, default=0, help="seed for --num sampling (default 0)")
    p.add_argument("--method", choices=METHODS, default="entropy", help="activation scale method (default entropy)")
    p.add_argument(
        "--percentile", type=float, default=99.99, metavar="P", help="for --method percentile (default 99.99)"
    )
    p.add_argument(
        "--cache", metavar="FILE", default=None, help="TensorRT calibration cache: written with --data, read without it"
    )
    p.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="PAT",
        help="keep nodes whose name matches this fnmatch pattern in float (repeatable)",
    )
    p.add_argument("--quantize-head", action="store_true", help="quantize the final classifier Conv too")
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
    p.add_argument("--batch", type=int, default=1, metavar="B", help="calibration batch size (dynamic-batch models)")
    p.add_argument("--bins", type=int, default=DEFAULT_BINS, help=f"histogram bins (default {DEFAULT_BINS})")
    p.add_argument(
        "--policy",
        choices=("stretch", "letterbox"),
        default="stretch",
        help="resize policy, as used at inference (default stretch)",
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
    from deeplab_trt.runtime.errors import ToolkitError

    if args.bins < 256:
        raise ToolkitError(f"--bins {args.bins}: need at least 256 (2 per int8 level)")
    started = time.perf_counter()
    out = quantize_onnx(
        args.model,
        data=args.data,
        output=args.output,
        num=args.num,
        method=args.method,
        percentile=args.percentile,
        exclude=args.exclude,
        cache=args.cache,
        report_dir=args.report,
        seed=args.seed,
        every=args.every,
        batch_size=args.batch,
        num_bins=args.bins,
        weights=args.weights,
        quantize_head=args.quantize_head,
        policy=args.policy,
        rest=rest_for(args.int8_rest),
        progress=not args.no_progress and sys.stderr.isatty(),
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
