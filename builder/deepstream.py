"""A DeepStream ``nvinfer`` configuration for a built engine: semantic segmentation in a GStreamer pipeline.

Why: on Jetson and in video-analytics deployments the pipeline is DeepStream's (decode, mux,
``nvinfer``, ``nvsegvisual``), not ours; what it needs from us is the engine and a config file
that states what the engine is. :func:`deploy_deepstream` writes, into one directory:

* ``config_infer.txt`` -- the ``[property]`` group of ``Gst-nvinfer``: ``network-type=2``
  (segmentation), ``output-blob-names``, ``num-detected-classes``, ``infer-dims``,
  ``model-color-format``, ``network-mode``, ``segmentation-threshold``, ``model-engine-file``,
  ``batch-size``, ``labelfile-path`` and the preprocessing keys. Every key is one NVIDIA documents
  (checked in the tests against the key list of the Gst-nvinfer configuration specification).
* ``labels.txt`` -- one class name per line;
* the engine (and its sidecar), copied, so the directory is self-contained;
* ``pipeline.sh`` -- a sample ``gst-launch-1.0`` pipeline (file → nvinfer → nvsegvisual → display).

Normalisation: nvinfer computes ``y = net-scale-factor * (x - offsets[c])`` on 0-255 pixels, one
scale for all channels. torchvision's ``(x/255 - mean) / std`` has a per-channel std, so it is exact
only when the three stds are equal; otherwise the mean std is used and a warning says how far off
the scale is. ``deeplab-trt export --fold-normalization`` puts the normalisation into the graph
(input 0-255): then ``net-scale-factor=1`` and ``offsets=0;0;0`` are exact.

Heads: nvinfer's segmentation parser takes per-class scores (C×H×W) and takes the argmax at the
output's resolution, so the ``logits`` and ``lowres`` heads work (``lowres`` gives a low-resolution
mask that nvsegvisual scales); an in-graph ``labels`` head does not. TensorRT-RTX engines cannot be
loaded by nvinfer (it links TensorRT): build the engine with TensorRT on the target.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from deeplab_trt.runtime.atomic import atomic_dir
from deeplab_trt.runtime.backends.base import ENGINE_SUFFIXES
from deeplab_trt.runtime.engine_record import EngineRecord, sidecar_path
from deeplab_trt.runtime.errors import ToolkitError
from deeplab_trt.runtime.preprocess import POLICIES

log = logging.getLogger(__name__)

CONFIG_NAME, LABELS_NAME, PIPELINE_NAME = "config_infer.txt", "labels.txt", "pipeline.sh"
#: nvinfer ``network-mode``: 0 FP32, 1 INT8, 2 FP16.
NETWORK_MODES = {"fp32": 0, "int8": 1, "fp16": 2}
#: nvinfer ``model-color-format``: 0 RGB, 1 BGR, 2 GRAY.
COLOR_FORMATS = {"RGB": 0, "BGR": 1}
#: below any logit: every pixel gets its argmax class (nvinfer marks pixels under the threshold -1).
SEGMENTATION_THRESHOLD = -1e30
#: how far the one nvinfer scale may be from a channel's 1/(255·std) before it is worth a warning.
STD_TOLERANCE = 1e-6


def _normalisation(mean, std, source: str) -> tuple[float, list[float]]:
    """(net-scale-factor, offsets) for nvinfer; warns when the per-channel std cannot be kept."""
    offsets = [255.0 * m for m in mean]
    scale_std = sum(std) / 3.0
    worst = max(abs(s - scale_std) / s for s in std)
    if worst > STD_TOLERANCE:
        log.warning(
            "%s: nvinfer applies one net-scale-factor to all channels; the model's std %s differs per channel, "
            "so the mean std %.6f is used (up to %.2f%% off per channel); for exact preprocessing export with "
            "'deeplab-trt export --fold-normalization' and build from that",
            source,
            list(std),
            scale_std,
            100 * worst,
        )
    return 1.0 / (255.0 * scale_std), offsets


def _fmt(value: float) -> str:
    return repr(float(value))


def _pick_batch(io_input: dict, batch: int | None, source: str) -> int:
    shape = [int(v) for v in io_input["shape"]]
    if shape[0] != -1:
        if batch not in (None, shape[0]):
            raise ToolkitError(f"{source}: the engine's batch is fixed at {shape[0]}; --batch-size must be {shape[0]}")
        return shape[0]
    lo, hi = (int(io_input.get("profile", {}).get(k, [1])[0]) for k in ("min", "max"))
    chosen = batch if batch is not None else max(1, lo)
    if not lo <= chosen <= hi:
        raise ToolkitError(f"{source}: --batch-size {chosen} is outside the engine profile's batch range {lo}..{hi}")
    return chosen


def nvinfer_config(
    record: EngineRecord,
    *,
    engine_file: str,
    labels_file: str = LABELS_NAME,
    batch_size: int | None = None,
    gpu_id: int = 0,
    policy: str = "stretch",
    source: str = "engine",
) -> str:
    """The text of an nvinfer config file for the engine the sidecar describes.

    Args:
        record: the engine's record (:meth:`EngineRecord.read`).
        engine_file: ``model-engine-file`` (relative paths are read from the config's directory).
        labels_file: ``labelfile-path``.
        batch_size: ``batch-size`` (default: the profile's minimum, or the fixed batch); match nvstreammux's.
        gpu_id: ``gpu-id``.
        policy: ``stretch`` or ``letterbox`` (``maintain-aspect-ratio`` + ``symmetric-padding``).
        source: the engine's path, for messages.
    """
    spec = record.model_spec(source=source)
    if policy not in POLICIES:
        raise ToolkitError(f"unknown resize policy {policy!r} (expected one of {', '.join(POLICIES)})")
    if spec.head == "labels":
        raise ToolkitError(
            f"{source}: an in-graph argmax ('labels' head) is not what nvinfer's segmentation parser reads "
            "(per-class scores); export with --head lowres or logits"
        )
    if spec.channel_order.upper() not in COLOR_FORMATS:
        raise ToolkitError(f"{source}: channel order {spec.channel_order!r} has no nvinfer model-color-format")
    precision = record.precision or "fp32"
    if precision not in NETWORK_MODES:
        raise ToolkitError(f"{source}: precision {precision!r} has no nvinfer network-mode")
    inputs = [t for t in record.io if t.get("mode") == "input"]
    outputs = [t for t in record.io if t.get("mode") == "output"]
    if len(inputs) != 1 or not outputs:
        raise ToolkitError(f"{source}: expected one input and an output in the sidecar's io record")
    scale, offsets = _normalisation(spec.mean, spec.std, source)
    output = spec.output_name if spec.output_name in [t["name"] for t in outputs] else outputs[0]["name"]
    letterbox = int(policy == "letterbox")
    lines = [
        f"# nvinfer config written by 'deeplab-trt deploy deepstream' for {spec.name} ({precision}, head {spec.head})",
        f"# preprocessing: y = net-scale-factor * (x - offsets), x in 0..255, {spec.channel_order} planes",
        "[property]",
        f"gpu-id={int(gpu_id)}",
        "gie-unique-id=1",
        "process-mode=1",
        f"model-engine-file={engine_file}",
        f"labelfile-path={labels_file}",
        f"batch-size={_pick_batch(inputs[0], batch_size, source)}",
        f"network-mode={NETWORK_MODES[precision]}",
        "network-type=2",
        f"num-detected-classes={spec.num_classes}",
        f"output-blob-names={output}",
        f"infer-dims=3;{spec.input_height};{spec.input_width}",
        f"model-color-format={COLOR_FORMATS[spec.channel_order.upper()]}",
        f"net-scale-factor={_fmt(scale)}",
        "offsets=" + ";".join(_fmt(o) for o in offsets),
        f"maintain-aspect-ratio={letterbox}",
        f"symmetric-padding={letterbox}",
        "scaling-filter=1",
        f"segmentation-threshold={SEGMENTATION_THRESHOLD}",
    ]
    return "\n".join(lines) + "\n"


def pipeline_script(*, config: str, width: int, height: int, batch_size: int) -> str:
    """A sample ``gst-launch-1.0`` pipeline: a video file → nvinfer → nvsegvisual → the screen (or a fakesink)."""
    return f"""#!/bin/sh
# Sample DeepStream pipeline written by 'deeplab-trt deploy deepstream'. Usage: ./{PIPELINE_NAME} VIDEO [SINK]
# SINK: nveglglessink (default; nv3dsink on Jetson) or 'fakesink sync=false' to measure throughput.
set -e
VIDEO="$(realpath "${{1:?usage: $0 VIDEO [SINK]}}")"
SINK="${{2:-nveglglessink}}"
cd "$(dirname "$0")"
exec gst-launch-1.0 uridecodebin uri="file://$VIDEO" ! mux.sink_0 \\
    nvstreammux name=mux batch-size={batch_size} width={width} height={height} ! \\
    nvinfer config-file-path={config} ! \\
    nvsegvisual width={width} height={height} ! nvvideoconvert ! $SINK
"""


def deploy_deepstream(
    engine: str | os.PathLike,
    *,
    output: str | os.PathLike,
    batch_size: int | None = None,
    gpu_id: int = 0,
    policy: str = "stretch",
) -> Path:
    """Write the nvinfer config, labels file, engine copy and sample pipeline into ``output``; returns it.

    Checked before anything is written; the directory is assembled beside ``output`` and renamed into
    place (an existing ``output`` is replaced whole).

    Args:
        engine: an engine from ``deeplab-trt build`` (TensorRT, not TensorRT-RTX) with its sidecar.
        output: the directory to write.
        batch_size: nvinfer ``batch-size`` (default: the profile's minimum, or the fixed batch).
        gpu_id: nvinfer ``gpu-id``.
        policy: ``stretch`` or ``letterbox``.
    """
    path, out = Path(engine), Path(output)
    if path.suffix.lower() not in ENGINE_SUFFIXES:
        raise ToolkitError(f"{path}: not a TensorRT engine (.engine/.plan); nvinfer needs one from 'deeplab-trt build'")
    record = EngineRecord.read(path)  # no such file / no sidecar / malformed: one line
    if record.flavour_name == "tensorrt-rtx":
        raise ToolkitError(
            f"{path}: built with TensorRT-RTX, which DeepStream's nvinfer (TensorRT) cannot load; "
            "build the engine with TensorRT on the target ('deeplab-trt build --flavour tensorrt')"
        )
    if out.exists() and not out.is_dir():
        raise ToolkitError(f"{out}: exists and is not a directory")
    engine_name = path.name
    config = nvinfer_config(
        record, engine_file=engine_name, batch_size=batch_size, gpu_id=gpu_id, policy=policy, source=str(path)
    )
    spec = record.model_spec(source=str(path))
    batch = int(next(line for line in config.splitlines() if line.startswith("batch-size=")).split("=")[1])
    with atomic_dir(out) as stage:
        (stage / CONFIG_NAME).write_text(config)
        (stage / LABELS_NAME).write_text("".join(f"{c}\n" for c in spec.classes))
        script = stage / PIPELINE_NAME
        script.write_text(
            pipeline_script(config=CONFIG_NAME, width=spec.input_width, height=spec.input_height, batch_size=batch)
        )
        script.chmod(0o755)
        shutil.copyfile(path, stage / engine_name)
        shutil.copyfile(sidecar_path(path), stage / sidecar_path(Path(engine_name)).name)
    return out
