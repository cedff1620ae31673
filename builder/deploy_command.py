"""``deeplab-trt deploy``: files for NVIDIA's serving stack (``triton``: a model repository; ``deepstream``: nvinfer).

Why next to the builder: deploying packages what ``export`` and ``build`` produced; the writers
(:mod:`deeplab_trt.builder.triton`) only read model files and sidecars, so this runs without
TensorRT, torch or a GPU.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from deeplab_trt.runtime.cli_types import frame_size, positive_int
from deeplab_trt.runtime.preprocess import POLICIES

log = logging.getLogger(__name__)


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "deploy",
        help="write serving files: a Triton model repository, a DeepStream nvinfer config",
        description="Write what NVIDIA's serving stack loads, from an exported ONNX model or a built engine.",
    )
    targets = p.add_subparsers(dest="target", metavar="TARGET")
    targets.required = True
    t = targets.add_parser(
        "triton",
        help="a Triton Inference Server model repository (python-backend segmenter + tensorrt_plan model)",
        description="Write a Triton model repository: NAME, a python-backend model running deeplab-trt's runtime "
        "(FRAMES uint8 N×H×W×3 BGR in; LABELS uint8 N×H×W and OVERLAY uint8 N×H×W×3 out; ONNX Runtime on a "
        "CPU instance for .onnx, the TensorRT backend on a GPU instance for engines), and for a TensorRT "
        "(not TensorRT-RTX) engine NAME_plan, Triton's own tensorrt_plan model. The server's python stub "
        "finds deeplab-trt through DEEPLAB_TRT_TRITON_SITE (site directories, os.pathsep-separated).",
    )
    t.add_argument(
        "model", type=Path, metavar="MODEL", help="ONNX model (deeplab-trt export) or engine with its sidecar"
    )
    t.add_argument("-o", "--output", type=Path, required=True, metavar="REPO", help="model repository directory")
    t.add_argument("--name", default="segmenter", help="segmenter model name (default segmenter; plan: NAME_plan)")
    t.add_argument(
        "--max-batch",
        type=positive_int,
        metavar="B",
        help="Triton max_batch_size (default: the engine profile's maximum, else the ONNX model's, else 8)",
    )
    t.add_argument("--instances", type=positive_int, default=1, metavar="K", help="instances per device (default 1)")
    t.add_argument("--kind", choices=("cpu", "gpu"), help="instance kind (default: cpu for .onnx, gpu for engines)")
    t.add_argument(
        "--frame-size", type=frame_size, metavar="HxW", help="the size of every frame (default: any size, dims -1)"
    )
    t.add_argument(
        "--policy", choices=POLICIES, default="stretch", help="fit frames to the model input (default stretch)"
    )
    t.set_defaults(func=run_triton)
    d = targets.add_parser(
        "deepstream",
        help="a DeepStream nvinfer config (semantic segmentation) + labels file + sample pipeline",
        description="Write DIR/config_infer.txt (Gst-nvinfer [property] group, network-type=2), DIR/labels.txt, "
        "a copy of the engine and its sidecar, and DIR/pipeline.sh (gst-launch-1.0: file -> nvinfer -> "
        "nvsegvisual). nvinfer scales all channels by one net-scale-factor: a per-channel std is approximated "
        "by its mean (a warning says how far off). The engine must be a TensorRT (not TensorRT-RTX) engine.",
    )
    d.add_argument("engine", type=Path, metavar="ENGINE", help="engine from 'deeplab-trt build' with its sidecar")
    d.add_argument("-o", "--output", type=Path, required=True, metavar="DIR", help="directory to write")
    d.add_argument("--batch-size", type=positive_int, metavar="N", help="nvinfer batch-size (default: profile min)")
    d.add_argument("--gpu-id", type=int, default=0, help="nvinfer gpu-id (default 0)")
    d.add_argument("--policy", choices=POLICIES, default="stretch", help="stretch, or letterbox (keep aspect)")
    d.set_defaults(func=run_deepstream)
    return p


def run_deepstream(args: argparse.Namespace) -> int:
    from deeplab_trt.builder.deepstream import deploy_deepstream

    out = deploy_deepstream(
        args.engine, output=args.output, batch_size=args.batch_size, gpu_id=args.gpu_id, policy=args.policy
    )
    log.info("wrote %s (nvinfer config), labels, engine and pipeline.sh", out)
    return 0


def run_triton(args: argparse.Namespace) -> int:
    import sysconfig

    from deeplab_trt.builder.triton import SITE_ENV, deploy_triton

    written = deploy_triton(
        args.model,
        output=args.output,
        name=args.name,
        max_batch=args.max_batch,
        instances=args.instances,
        kind=args.kind,
        frame_size=args.frame_size,
        policy=args.policy,
    )
    for model in written:
        log.info(
            "wrote %s (%s)", model.path, "python-backend segmenter" if model.kind == "segmenter" else "tensorrt_plan"
        )
    log.info(
        "serve: %s=%s tritonserver --model-repository %s",
        SITE_ENV,
        sysconfig.get_paths()["purelib"],
        args.output,
    )
    return 0
