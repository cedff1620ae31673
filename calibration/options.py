"""The calibration options, defined once for every command and library call that calibrates.

Why one module: ``deeplab-trt calibrate`` and ``deeplab-trt build --precision int8`` run the same
calibration, so they take the same flags with the same types and defaults (Polygraphy's reusable
argument groups are the model). :func:`add_calibration_arguments` adds the two groups (data,
method) to a parser; :func:`calibration_options` turns the parsed flags into
:class:`CalibrationOptions`, the object the library takes (``BuildOptions.calibration``, and
``quantize_onnx(**options.quantize_kwargs())``). A flag added here reaches both commands.

The calibration batch is ``--calib-batch``: ``--batch`` is the export's fixed batch (and bench's
inference batch), ``build --profile-batch`` the engine's optimization profile.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass, field
from typing import Any

from deeplab_trt.calibration.histogram import DEFAULT_BINS
from deeplab_trt.calibration.scales import METHODS
from deeplab_trt.runtime.cli_types import positive_int
from deeplab_trt.runtime.errors import ToolkitError
from deeplab_trt.runtime.preprocess import POLICIES


@dataclass
class CalibrationOptions:
    """What to calibrate on and how to choose the INT8 scales.

    Args:
        data: image/video files, folders, globs (mixed); empty: scales come from ``cache``.
        num: calibrate on this many frames, drawn with ``seed`` (None: all).
        every: keep every k-th video frame.
        seed: seed of the ``num`` draw.
        policy: resize policy, as used at inference (``stretch``/``letterbox``).
        batch_size: ONNX Runtime batch while collecting statistics (dynamic-batch models).
        method: ``entropy`` (TensorRT's), ``percentile`` or ``max``.
        percentile: for ``method="percentile"``.
        bins: histogram bins (at least 256).
        exclude: fnmatch patterns of node names kept in float.
        quantize_head: quantize the final classifier Conv too.
        cache: TensorRT calibration cache: written when ``data`` is given, read instead of calibrating
            when it is not.
    """

    data: list[str] = field(default_factory=list)
    num: int | None = None
    every: int = 1
    seed: int = 0
    policy: str = "stretch"
    batch_size: int = 1
    method: str = "entropy"
    percentile: float = 99.99
    bins: int = DEFAULT_BINS
    exclude: list[str] = field(default_factory=list)
    quantize_head: bool = False
    cache: str | None = None

    def quantize_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of :func:`deeplab_trt.calibration.quantize.quantize_onnx` these stand for."""
        return {
            "data": [str(d) for d in self.data],
            "num": self.num,
            "every": self.every,
            "seed": self.seed,
            "policy": self.policy,
            "batch_size": self.batch_size,
            "method": self.method,
            "percentile": self.percentile,
            "num_bins": self.bins,
            "exclude": list(self.exclude),
            "quantize_head": self.quantize_head,
            "cache": self.cache,
        }

    def check_implicit(self) -> None:
        """Refuse the options TensorRT 10's implicit calibrator cannot honour.

        Why: that calibrator chooses its scales itself (entropy, over the whole graph, at the batch
        TensorRT asks for); a ``--method max`` or ``--exclude`` there would be silently ignored.
        Only the data options (and the cache) reach it.
        """
        defaults = CalibrationOptions()
        ignored = [
            flag
            for flag, attr in (
                ("--method", "method"),
                ("--percentile", "percentile"),
                ("--bins", "bins"),
                ("--exclude", "exclude"),
                ("--quantize-head", "quantize_head"),
                ("--calib-batch", "batch_size"),
            )
            if getattr(self, attr) != getattr(defaults, attr)
        ]
        if ignored:
            raise ToolkitError(
                f"{', '.join(ignored)}: explicit INT8 only; --int8-mode implicit hands TensorRT 10's own "
                "entropy calibrator the frames (at the profile's OPT batch)"
            )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (the engine sidecar records it)."""
        return {**asdict(self), "data": [str(d) for d in self.data]}


def add_calibration_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the "calibration data" and "calibration method" groups to ``parser``.

    Args:
        parser: a subcommand's parser (``calibrate``, ``build``).
    """
    defaults = CalibrationOptions()
    data = parser.add_argument_group("calibration data")
    data.add_argument(
        "--data",
        nargs="+",
        default=[],
        metavar="PATH",
        help="calibration images, videos, folders or glob patterns (mixed)",
    )
    data.add_argument(
        "--num", type=positive_int, default=None, metavar="N", help="use N frames drawn with --seed (default: all)"
    )
    data.add_argument(
        "--every", type=positive_int, default=defaults.every, metavar="K", help="use every K-th video frame (default 1)"
    )
    data.add_argument("--seed", type=int, default=defaults.seed, help="seed for --num sampling (default 0)")
    data.add_argument(
        "--policy",
        choices=POLICIES,
        default=defaults.policy,
        help="resize policy, as used at inference (default stretch)",
    )
    data.add_argument(
        "--calib-batch",
        type=positive_int,
        default=defaults.batch_size,
        metavar="B",
        help="ONNX Runtime batch while collecting statistics (dynamic-batch models; default 1)",
    )
    data.add_argument(
        "--cache",
        metavar="FILE",
        default=None,
        help="TensorRT calibration cache (text): written with --data, read instead of calibrating without it",
    )
    method = parser.add_argument_group("calibration method")
    method.add_argument(
        "--method", choices=METHODS, default=defaults.method, help="activation scale method (default entropy)"
    )
    method.add_argument(
        "--percentile",
        type=float,
        default=defaults.percentile,
        metavar="P",
        help="for --method percentile (default 99.99)",
    )
    method.add_argument(
        "--bins", type=positive_int, default=defaults.bins, metavar="N", help=f"histogram bins (default {DEFAULT_BINS})"
    )
    method.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="PAT",
        help="keep nodes whose name matches this fnmatch pattern in float (repeatable)",
    )
    method.add_argument("--quantize-head", action="store_true", help="quantize the final classifier Conv too")


def calibration_options(args: argparse.Namespace) -> CalibrationOptions:
    """The :class:`CalibrationOptions` that :func:`add_calibration_arguments`' flags were parsed into.

    Args:
        args: the parsed namespace of a parser given :func:`add_calibration_arguments`.
    """
    return CalibrationOptions(
        data=list(args.data),
        num=args.num,
        every=args.every,
        seed=args.seed,
        policy=args.policy,
        batch_size=args.calib_batch,
        method=args.method,
        percentile=args.percentile,
        bins=args.bins,
        exclude=list(args.exclude),
        quantize_head=args.quantize_head,
        cache=args.cache,
    )
