"""``deeplab-trt eval``: pixel accuracy, per-class IoU and mIoU of a model against ground truth.

Why: "the INT8 engine is fast" means nothing without "and this accurate". Data is either
synthetic street scenes (``--synthetic N --seed S``, rendered at the model's input size
unless ``--height/--width`` say otherwise) or a folder in the layout of
:mod:`deeplab_trt.benchmarks.labelled_dir` (``DIR/images/NAME.png|jpg``, ``DIR/labels/NAME.png``).
Scoring is done at the ground truth's resolution, with the runtime's pre/postprocessing, so
the number is what ``deeplab-trt run`` would achieve.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from deeplab_trt.runtime.cli_types import positive_int

log = logging.getLogger(__name__)


def add_parser(sub) -> argparse.ArgumentParser:
    from deeplab_trt.runtime.backends import BACKENDS
    from deeplab_trt.runtime.preprocess import POLICIES

    p = sub.add_parser(
        "eval", help="mIoU / pixel accuracy / per-class IoU against ground truth", description=__doc__.splitlines()[0]
    )
    p.add_argument("model", type=Path, metavar="MODEL", help="ONNX model (from export) or TensorRT engine")
    src = p.add_mutually_exclusive_group()
    src.add_argument(
        "--synthetic",
        type=positive_int,
        metavar="N",
        help="evaluate on N synthetic street scenes (default when no --data: 32)",
    )
    src.add_argument(
        "--data",
        type=Path,
        metavar="DIR",
        help="labelled folder: DIR/images/NAME.png|jpg + DIR/labels/NAME.png (class indices, 255 = ignore)",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=10_000_000,
        metavar="S",
        help="synthetic scene seed (default 10000000: held out from the demo model's training)",
    )
    p.add_argument("--height", type=positive_int, metavar="H", help="synthetic scene height (default: model input)")
    p.add_argument("--width", type=positive_int, metavar="W", help="synthetic scene width (default: model input)")
    p.add_argument("--backend", choices=BACKENDS, default="auto", help="inference backend (default: by file type)")
    p.add_argument("--policy", choices=POLICIES, default="stretch", help="resize policy (default stretch)")
    p.add_argument("--threads", type=positive_int, metavar="N", help="ONNX Runtime intra-op threads")
    p.add_argument("--json", type=Path, metavar="OUT", help="write the metrics as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
    return p


def format_table(summary: dict) -> list[str]:
    lines = [
        f"mIoU {summary['miou']:.4f}   pixel accuracy {summary['pixel_accuracy']:.4f}   ({summary['images']} images)"
    ]
    width = max((len(k) for k in summary["per_class_iou"]), default=5)
    for name, iou in summary["per_class_iou"].items():
        lines.append(f"  {name:<{width}}  {'   n/a' if iou is None else f'{iou:.4f}'}")
    return lines


def run(args) -> int:
    from deeplab_trt.benchmarks.accuracy import evaluate, folder_samples, synthetic_samples
    from deeplab_trt.runtime.atomic import write_text_atomic
    from deeplab_trt.runtime.backends import open_backend
    from deeplab_trt.runtime.errors import ToolkitError

    if args.json is not None and args.json.is_dir():
        raise ToolkitError(f"{args.json}: is a directory, expected a JSON file name")
    if args.data is not None and (args.height or args.width):
        raise ToolkitError("--height/--width apply to --synthetic scenes only")
    options = {"threads": args.threads} if args.threads else {}
    # the data layout is checked before the model is loaded: errors come fast
    if args.data is not None:
        total, samples = folder_samples(args.data)
        source = {"data": str(args.data)}
    backend = open_backend(args.model, args.backend, **options)
    try:
        spec = backend.spec
        if args.data is None:
            total = args.synthetic or 32
            h, w = args.height or spec.input_height, args.width or spec.input_width
            samples = synthetic_samples(total, args.seed, h, w)
            source = {"synthetic": total, "seed": args.seed, "size": [h, w]}
        else:
            _warn_class_mismatch(args.data, spec.classes)
        result = evaluate(backend, samples, args.policy, total=total, progress=not args.no_progress)
        summary = result.summary(spec.classes)
        summary.update(
            model=str(args.model), backend=backend.name, policy=args.policy, input_size=list(spec.input_size), **source
        )
    finally:
        backend.close()
    for line in format_table(summary):
        print(line)
    if args.json is not None:
        write_text_atomic(args.json, json.dumps(summary, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


def _warn_class_mismatch(root: Path, model_classes) -> None:
    from deeplab_trt.benchmarks.labelled_dir import CLASSES_FILE, read_classes

    classes = read_classes(root)
    if classes and classes != list(model_classes):
        log.warning(
            "%s: the data's classes %s differ from the model's %s; scores compare indices",
            Path(root) / CLASSES_FILE,
            classes,
            list(model_classes),
        )
