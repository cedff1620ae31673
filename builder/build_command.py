"""``deeplab-trt build``: ONNX → TensorRT engine + JSON sidecar, for the installed TensorRT flavour.

Why here: the command sits next to :mod:`deeplab_trt.builder.engine`, which it drives; TensorRT is
imported only when the command runs. Every option is checked (by the pure planning
functions) before calibration or the build starts.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from deeplab_trt.builder.engine import INT8_MODES, PRECISIONS, BuildOptions
from deeplab_trt.calibration.options import add_calibration_arguments, calibration_options
from deeplab_trt.runtime.cli_types import BATCH_IS_MODEL_BATCH, batch_range, positive_int, renamed_flag

FLAVOUR_CHOICES = ("auto", "tensorrt", "tensorrt-rtx")


def default_output(model: Path, precision: str) -> Path:
    """``model.onnx`` → ``model.fp16.engine`` next to it."""
    return model.with_name(f"{model.stem}.{precision}.engine")


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "build",
        help="build a TensorRT engine (fp32/fp16/int8) from an exported ONNX model",
        description="Build a TensorRT engine from a 'deeplab-trt export' ONNX model with the installed TensorRT "
        "(10.x, 11.x or TensorRT-RTX), and write OUT.engine.json next to it (model spec, precision, "
        "TensorRT version, targets, I/O, source sha256). FP16 on TensorRT 11/RTX goes through an FP16 "
        "ONNX pass; INT8 uses Q/DQ nodes (from --data calibration, or a Q/DQ model given).",
    )
    p.add_argument(
        "model",
        type=Path,
        metavar="MODEL.onnx",
        help="ONNX model from 'deeplab-trt export' "
        "(or its Q/DQ version from 'deeplab-trt calibrate' for --precision int8)",
    )
    p.add_argument(
        "-o",
        "--output",
        type=Path,
        metavar="OUT.engine",
        help="engine file (default: MODEL.<precision>.engine); the sidecar is OUT.engine.json",
    )
    p.add_argument("--precision", choices=PRECISIONS, default="fp16", help="engine precision (default fp16)")
    p.add_argument(
        "--flavour",
        choices=FLAVOUR_CHOICES,
        default="auto",
        help="TensorRT to build with (auto: tensorrt, else TensorRT-RTX)",
    )
    add_calibration_arguments(p)  # the same flags, types and defaults as 'deeplab-trt calibrate'
    p.add_argument(
        "--int8-mode",
        choices=INT8_MODES,
        default="explicit",
        help="explicit = Q/DQ graph (every flavour, default); implicit = legacy entropy calibrator (TensorRT 10 "
        "only; it calibrates at the profile's OPT batch)",
    )
    p.add_argument(
        "--profile-batch",
        type=batch_range,
        metavar="MIN:OPT:MAX",
        help="optimization profile for a dynamic-batch model, or N for N:N:N (default: the range recorded at export)",
    )
    renamed_flag(p, "--batch", "--profile-batch", why=BATCH_IS_MODEL_BATCH)
    p.add_argument("--workspace", type=positive_int, metavar="MIB", help="builder workspace limit in MiB")
    p.add_argument(
        "--timing-cache",
        metavar="FILE",
        help="timing cache to load and update (TensorRT 10/11; TensorRT-RTX ignores it)",
    )
    p.add_argument(
        "--compute-capability",
        nargs="+",
        metavar="SM",
        help="TensorRT-RTX targets, e.g. SM89 SM120 or SM86,SM89, or 'current' (default: the GPU "
        "present, else SM80,SM86,SM89,SM120)",
    )
    p.add_argument(
        "--dla-core",
        type=int,
        metavar="N",
        help="run the engine on DLA core N (TensorRT 10 on a Jetson with DLA; fp16/int8 only)",
    )
    p.add_argument("--gpu-fallback", action="store_true", help="with --dla-core: layers DLA cannot run go to the GPU")
    p.add_argument(
        "--fp16-output",
        choices=("float16", "float32"),
        default="float16",
        help="output dtype of the FP16 ONNX pass (TensorRT 11/RTX fp16; default float16)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--verbose", dest="build_verbose", action="store_true", help="show TensorRT's INFO/VERBOSE log")
    p.set_defaults(func=run)
    return p


def build_options(args: argparse.Namespace) -> BuildOptions:
    """The :class:`BuildOptions` the parsed ``build`` flags stand for (calibration flags included).

    Args:
        args: the namespace :func:`add_parser`'s parser produced.
    """
    return BuildOptions(
        precision=args.precision,
        flavour=args.flavour,
        int8_mode=args.int8_mode,
        calibration=calibration_options(args),
        profile_batch=args.profile_batch,
        workspace_mib=args.workspace,
        timing_cache=args.timing_cache,
        compute_capabilities=args.compute_capability,
        fp16_output=args.fp16_output,
        dla_core=args.dla_core,
        gpu_fallback=args.gpu_fallback,
        verbose=bool(getattr(args, "verbose", False) or args.build_verbose),
        progress=not args.no_progress,
    )


def run(args: argparse.Namespace) -> int:
    from deeplab_trt.builder.engine import build_engine

    options = build_options(args)
    if options.verbose:
        logging.getLogger().setLevel(logging.DEBUG)
    build_engine(args.model, args.output or default_output(args.model, args.precision), options)
    return 0
