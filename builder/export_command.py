"""``deeplab-trt export``: torchvision DeepLab v3 → ONNX with metadata and a parity check.

Why here: the command sits next to the code it drives (:mod:`deeplab_trt.builder.export`); torch is
imported only when the command runs, so ``deeplab-trt --help`` stays fast.
"""

from __future__ import annotations

import argparse

from deeplab_trt.builder.models import MODELS
from deeplab_trt.runtime.cli_types import batch_range, positive_int
from deeplab_trt.runtime.spec import HEADS


def _grid(text: str) -> tuple[int, ...]:
    """argparse type for ``--multi-grid 1,2,4``."""
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated integers, e.g. 1,2,4") from exc
    if len(values) != 3 or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected three positive integers, e.g. 1,2,4")
    return values


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "export",
        help="export a torchvision DeepLab v3 to ONNX (metadata, checker, parity)",
        description="Export a torchvision DeepLab v3 to ONNX with the model spec in its metadata, then run "
        "onnx.checker and an ONNX Runtime vs PyTorch parity check. The aux head is dropped.",
    )
    p.add_argument(
        "--model",
        required=True,
        choices=MODELS,
        help="network; 'demo' = the small trained demo model in builder/assets",
    )
    p.add_argument(
        "--weights",
        default="none",
        metavar="SPEC",
        help="'none' (random init, default), a torchvision weights name (DEFAULT, "
        "COCO_WITH_VOC_LABELS_V1; torch hub cache), or a checkpoint file (state dict, or a dict "
        "holding 'model'/'state_dict')",
    )
    p.add_argument(
        "--num-classes",
        type=positive_int,
        metavar="N",
        help="number of classes (default: from the weights; 21 with --weights none)",
    )
    p.add_argument("--height", type=positive_int, metavar="H", help="input height (default 520; demo: its own)")
    p.add_argument("--width", type=positive_int, metavar="W", help="input width (default 520; demo: its own)")
    batch = p.add_mutually_exclusive_group()
    batch.add_argument("--batch", type=positive_int, default=1, metavar="N", help="fixed batch size (default 1)")
    batch.add_argument(
        "--dynamic-batch",
        type=batch_range,
        metavar="MIN:OPT:MAX",
        help="dynamic batch dimension; the range is recorded for the engine's optimization profile",
    )
    p.add_argument(
        "--output-stride",
        type=int,
        choices=(8, 16),
        help="ResNet: 8 = layer3+layer4 dilated, ASPP 12/24/36 (default); 16 = layer4 dilated, "
        "ASPP 6/12/18. MobileNetV3: 16 only (ASPP 12/24/36, torchvision's)",
    )
    p.add_argument(
        "--head",
        choices=HEADS,
        default="logits",
        help="logits = full-resolution logits (torchvision's output); lowres = before the final "
        "bilinear upsample; labels = in-graph ArgMax (int32 N×H×W)",
    )
    p.add_argument(
        "--opset",
        type=int,
        default=17,
        metavar="N",
        help="ONNX opset (default 17; <=20 TorchScript exporter, above that torch.export)",
    )
    p.add_argument(
        "--multi-grid",
        type=_grid,
        metavar="R1,R2,R3",
        help="ResNet block 4 unit rates (DeepLab v3 Multi_Grid, e.g. 1,2,4: dilations = base rate x these; "
        "torchvision's pretrained weights were trained without it, so their accuracy changes)",
    )
    p.add_argument(
        "--fold-normalization",
        action="store_true",
        help="put (x/255 - mean)/std into the graph: the input is 0-255 RGB (what DeepStream's nvinfer "
        "feeds, which has no per-channel std); parity-checked against the unfolded model",
    )
    p.add_argument(
        "--no-check",
        dest="check",
        action="store_false",
        help="skip the ONNX Runtime parity check (onnx.checker still runs)",
    )
    p.add_argument("-o", "--output", required=True, metavar="OUT.onnx", help="output ONNX file")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    if (args.height is None) != (args.width is None):
        from deeplab_trt.runtime.errors import ToolkitError

        raise ToolkitError("--height and --width go together: give both or neither")
    from deeplab_trt.builder.export import export_onnx

    export_onnx(
        args.output,
        model=args.model,
        weights=args.weights,
        num_classes=args.num_classes,
        height=args.height,
        width=args.width,
        batch=args.batch,
        dynamic_batch=args.dynamic_batch,
        output_stride=args.output_stride,
        head=args.head,
        opset=args.opset,
        check=args.check,
        fold_normalization=args.fold_normalization,
        multi_grid=args.multi_grid,
    )
    return 0
