"""``deeplab-trt`` console entry point.

Why a separate package: the dispatcher needs every subcommand (builder, calibration,
runtime, benchmarks) but the layering forbids ``runtime`` from importing the higher
packages, so the table of subcommands lives above all of them. Each command module
exposes ``add_parser(subparsers)`` and keeps heavy imports (torch, tensorrt) inside the
function that runs, so ``deeplab-trt run`` works on a machine without torch.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from deeplab_trt.runtime import __version__
from deeplab_trt.runtime.errors import ToolkitError, opencv_import_hint

#: subcommand -> module defining ``add_parser(subparsers)`` (which sets ``func``), in ``--help`` order.
COMMANDS = {
    "export": "deeplab_trt.builder.export_command",
    "build": "deeplab_trt.builder.build_command",
    "calibrate": "deeplab_trt.calibration.command",
    "run": "deeplab_trt.runtime.run_command",
    "info": "deeplab_trt.info_command",
    "eval": "deeplab_trt.benchmarks.eval_command",
    "demo": "deeplab_trt.benchmarks.demo_command",
    "bench": "deeplab_trt.benchmarks.bench_command",
    "scenes": "deeplab_trt.benchmarks.scenes_command",
    "deploy": "deeplab_trt.builder.deploy_command",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deeplab-trt",
        description="DeepLab v3 from PyTorch to ONNX to TensorRT (FP32/FP16/INT8), real-time video segmentation, "
        "and per-precision benchmarks. Start with: deeplab-trt demo",
    )
    parser.add_argument("--version", action="version", version=f"deeplab-trt {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for module_name in COMMANDS.values():
        importlib.import_module(module_name).add_parser(sub)
    return parser


def describe_causes(exc: BaseException) -> str:
    """The chain of causes behind a ToolkitError, innermost last, for ``-v``; empty without one."""
    lines = []
    cause = exc.__cause__ or exc.__context__
    while cause is not None:
        lines.append(f"  caused by {type(cause).__module__}.{type(cause).__qualname__}: {cause}\n")
        cause = cause.__cause__ or cause.__context__
    return "".join(lines)


def main(argv: list[str] | None = None) -> int:
    try:
        parser = build_parser()
    except ImportError as exc:  # the command modules import OpenCV: a Jetson venv may lack it
        hint = opencv_import_hint(exc)
        if hint is None:
            raise
        print(f"deeplab-trt: error: {hint}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        return int(args.func(args) or 0)
    except ToolkitError as exc:
        print(f"deeplab-trt {args.command}: error: {exc}", file=sys.stderr)
        if args.verbose:
            print(describe_causes(exc), file=sys.stderr, end="")
        return exc.exit_code
    except ImportError as exc:
        hint = opencv_import_hint(exc)
        if hint is None:
            raise
        print(f"deeplab-trt {args.command}: error: {hint}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"deeplab-trt {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
