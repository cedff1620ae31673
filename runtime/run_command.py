"""``deeplab-trt run``: segment a video (file, camera, URL, GStreamer) with a model file.

Why the order of work below: every input is checked (options, model, source) before any
output file is created, so a bad input never leaves a file behind; the output is written
under a temporary name and renamed at the end (or on Ctrl-C, finalised with the frames so
far, then the summary is still printed and the exit code is 130).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
from pathlib import Path

from deeplab_trt.runtime.errors import ToolkitError

log = logging.getLogger(__name__)


def add_parser(subparsers) -> argparse.ArgumentParser:
    from deeplab_trt.runtime.backends.base import BACKENDS
    from deeplab_trt.runtime.cli_types import frame_size, positive_int
    from deeplab_trt.runtime.gst_pipelines import CODECS, DECODERS, FLIP_METHODS
    from deeplab_trt.runtime.postprocess import MODES
    from deeplab_trt.runtime.preprocess import POLICIES

    p = subparsers.add_parser(
        "run",
        help="segment a video with an ONNX model or TensorRT engine",
        description="Segment every frame of a video file, camera, RTSP/HTTP URL or GStreamer pipeline; "
        "write an overlay/mask/label video (same size and fps as the source; odd sizes are "
        "cropped to even), show it, or just measure. Prints per-stage timings and FPS.",
    )
    p.add_argument(
        "model", nargs="?", help="model file: .onnx (ONNX Runtime) or .engine/.plan (TensorRT); none with --triton"
    )
    p.add_argument(
        "--source",
        "-s",
        required=True,
        help="video file, image sequence (dir/%%04d.png), camera index (0) or /dev/videoN, rtsp://... or "
        "http://... URL, a GStreamer pipeline ending in appsink, or (GStreamer, e.g. Jetson) csi://N "
        "(nvarguscamerasrc sensor N) or v4l2:///dev/videoN (v4l2src)",
    )
    p.add_argument(
        "--decoder",
        choices=DECODERS,
        default="cpu",
        help="cpu: OpenCV's own decoder (FFmpeg) for files and URLs (default); nvv4l2: Jetson hardware "
        "decode (nvv4l2decoder) of a video file or rtsp:// stream through GStreamer, h264/h265 only",
    )
    p.add_argument(
        "--codec",
        choices=CODECS,
        default="auto",
        help="for --decoder nvv4l2: the stream's codec (auto: by file name (.h264/.h265), else as FFmpeg "
        "probes it; RTSP streams FFmpeg cannot probe need it)",
    )
    p.add_argument(
        "--source-size",
        type=frame_size,
        metavar="HxW",
        help="csi:// and v4l2:// capture size (csi default 720x1280); with --decoder nvv4l2, the size nvvidconv scales to",
    )
    p.add_argument(
        "--source-fps",
        type=positive_int,
        metavar="N",
        help="csi:// and v4l2:// capture rate (csi default 30); with --decoder nvv4l2, drop frames down to N fps",
    )
    p.add_argument(
        "--flip",
        choices=FLIP_METHODS,
        default="none",
        help="rotate/flip csi://, v4l2:// and --decoder nvv4l2 frames (many CSI modules need rotate-180)",
    )
    p.add_argument("--output", "-o", type=Path, help="output video (.mp4, .avi, .mkv; .mkv is lossless FFV1)")
    p.add_argument("--show", action="store_true", help="show the result in a window (q/Esc stops)")
    p.add_argument(
        "--mode",
        choices=MODES,
        default="overlay",
        help="overlay: palette blended over the frame; mask: palette colours; "
        "labels: class index as grey level (default: overlay)",
    )
    p.add_argument("--alpha", type=float, default=0.5, help="overlay opacity in [0, 1] (default 0.5)")
    p.add_argument("--max-frames", type=int, help="stop after N frames")
    p.add_argument("--backend", choices=BACKENDS, default="auto", help="auto: by model file type (default)")
    p.add_argument(
        "--policy",
        choices=POLICIES,
        default="stretch",
        help="resize to the model input: stretch (default) or letterbox (keep aspect)",
    )
    p.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads (default: its own choice)")
    p.add_argument(
        "--no-runtime-cache",
        action="store_true",
        help="TensorRT-RTX: do not load or save the runtime cache of JIT-compiled kernels "
        "(kept by default under ~/.cache/deeplab-trt/tensorrt-rtx-runtime)",
    )
    p.add_argument("--json", type=Path, metavar="STATS.json", help="also write the run statistics as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    live = p.add_argument_group("live sources (camera, RTSP/HTTP, live GStreamer): reopened when they drop")
    live.add_argument(
        "--reconnect",
        type=int,
        default=10,
        metavar="N",
        help="reopen attempts per drop, with backoff (default 10; 0: a drop ends the run); files never reconnect",
    )
    live.add_argument(
        "--reconnect-delay",
        type=float,
        default=0.5,
        metavar="S",
        help="wait before the first attempt, doubled per attempt up to 8 s (default 0.5)",
    )
    remote = p.add_argument_group("client mode (the model runs on a Triton server: 'deeplab-trt deploy triton')")
    remote.add_argument(
        "--triton",
        metavar="URL",
        help="send frames to a Triton server instead of running a model here: grpc://HOST:PORT or http://HOST:PORT",
    )
    remote.add_argument("--model-name", default="segmenter", help="the served segmenter's name (default segmenter)")
    remote.add_argument("--in-flight", type=int, default=4, metavar="N", help="requests in flight at once (default 4)")
    p.set_defaults(func=main)
    return p


def _check_paths(args) -> None:
    """Output-side checks that need no model or video (fail before the slow work)."""
    from deeplab_trt.runtime.video import LOSSLESS_SUFFIXES, check_video_output, classify_source

    if args.output is not None:
        check_video_output(args.output)
        suffix = args.output.suffix.lower()
        if (
            classify_source(args.source) == "file"
            and Path(args.source).exists()
            and Path(args.source).resolve() == args.output.resolve()
        ):
            raise ToolkitError(f"{args.output}: output would overwrite the source")
        if args.mode == "labels" and suffix not in LOSSLESS_SUFFIXES:
            log.warning(
                "%s: --mode labels through a lossy codec changes label values; use .mkv (lossless)", args.output
            )
    for path in (args.output, args.json):
        if path is not None and path.parent.exists() and not path.parent.is_dir():
            raise ToolkitError(f"{path}: {path.parent} is not a directory")


def _remote(args, options):
    """(the served model, its stage) for ``--triton``; the server's resize policy must be the one asked for."""
    from deeplab_trt.runtime.triton_client import TritonSegmenter, TritonStage

    if args.in_flight < 1:
        raise ToolkitError(f"--in-flight must be at least 1, got {args.in_flight}")
    segmenter = TritonSegmenter(args.triton, model_name=args.model_name)
    if segmenter.policy != options.policy:
        raise ToolkitError(
            f"--triton {args.triton}: model {args.model_name!r} resizes with policy {segmenter.policy!r}; "
            f"pass --policy {segmenter.policy} (or redeploy with --policy {options.policy})"
        )
    return segmenter.model, TritonStage(segmenter, options, slots=args.in_flight)


def source_options(args) -> dict:
    """``open_source`` keyword options from the parsed ``--decoder/--codec/--source-size/--source-fps/--flip``."""
    height, width = args.source_size if args.source_size else (None, None)
    return {
        "decoder": args.decoder,
        "codec": args.codec,
        "width": width,
        "height": height,
        "framerate": args.source_fps,
        "flip": args.flip,
    }


def _open_with_reconnect(args, open_source):
    """The source, reopened with backoff when a live one drops (``--reconnect``); files as they are."""
    from deeplab_trt.runtime.reconnect import Backoff, ReconnectingSource

    if args.reconnect < 0 or args.reconnect_delay < 0:
        raise ToolkitError(
            f"--reconnect {args.reconnect} / --reconnect-delay {args.reconnect_delay}: must not be negative"
        )
    backoff = Backoff(attempts=args.reconnect, delay=args.reconnect_delay, max_delay=max(8.0, args.reconnect_delay))
    return ReconnectingSource(lambda: open_source(args.source, **source_options(args)), backoff=backoff)


def _engine_options(args) -> dict:
    """Options only a TensorRT engine takes (ONNX Runtime's backend would reject them)."""
    from deeplab_trt.runtime.backends.base import ENGINE_SUFFIXES

    is_engine = Path(args.model).suffix.lower() in ENGINE_SUFFIXES
    return {"runtime_cache": False} if is_engine and getattr(args, "no_runtime_cache", False) else {}


def main(args) -> int:
    from deeplab_trt.runtime.atomic import write_text_atomic
    from deeplab_trt.runtime.backends import open_backend
    from deeplab_trt.runtime.pipeline import RunOptions, runner_for
    from deeplab_trt.runtime.reconnect import ReconnectingSource
    from deeplab_trt.runtime.video import NullSink, VideoFileSink, WindowSink, open_source

    options = RunOptions(
        mode=args.mode, alpha=args.alpha, policy=args.policy, max_frames=args.max_frames, progress=not args.no_progress
    )
    _check_paths(args)
    if (args.model is None) == (args.triton is None):
        raise ToolkitError("give a model file, or --triton URL for a served model (not both)")
    stage = None
    with contextlib.ExitStack() as stack:
        if args.triton is not None:
            backend, stage = _remote(args, options)
            stack.callback(stage.close)
        else:
            backend = open_backend(args.model, args.backend, threads=args.threads, **_engine_options(args))
            stack.callback(backend.close)
        source = stack.enter_context(_open_with_reconnect(args, open_source))
        log.info(
            "%s: %dx%d, %g fps%s -> %s (%s, %dx%d input)",
            source.description,
            *source.size,
            source.fps,
            f", {source.frame_count} frames" if source.frame_count else " (live)" if source.is_live else "",
            args.model or args.triton,
            backend.name,
            backend.spec.input_height,
            backend.spec.input_width,
        )
        sinks = []
        # Sinks are entered last: a clean exit or Ctrl-C finalises them, an error discards them.
        # The window first: "no display" must fail before an output file is started.
        if args.show:
            sinks.append(stack.enter_context(WindowSink(f"deeplab-trt: {source.description}")))
        if args.output is not None:
            if not source.fps_reported:
                log.warning(
                    "%s: the source reports no frame rate; writing %s at %g fps",
                    source.description,
                    args.output,
                    source.fps,
                )
            sinks.insert(0, stack.enter_context(VideoFileSink(args.output, source.fps, source.size)))
        if not sinks:
            sinks.append(NullSink())
        if stage is not None:
            from deeplab_trt.runtime.gpu_pipeline import run_video

            stats = run_video(backend, source, sinks, options, stage=stage)
        else:
            stats = runner_for(backend)(backend, source, sinks, options)
    # Sinks are closed (files renamed into place) here.
    for sink in sinks:
        if isinstance(sink, VideoFileSink) and sink.frames:
            stats.outputs.append(
                {"path": str(sink.path), "size": list(sink.output_size), "fps": sink.fps, "frames": sink.frames}
            )
    if isinstance(source, ReconnectingSource) and source.is_live:
        stats.source_status = source.summary()
    for line in stats.report_lines():
        print(line)
    if args.json is not None:
        write_text_atomic(args.json, json.dumps(stats.to_dict(), indent=2) + "\n")
    sys.stdout.flush()
    return 130 if stats.interrupted else 0
