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
import os
import re
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
        action="append",
        help="video file, image sequence (dir/%%04d.png), camera index (0) or /dev/videoN, rtsp://... or "
        "http://... URL, a GStreamer pipeline ending in appsink, or (GStreamer, e.g. Jetson) csi://N "
        "(nvarguscamerasrc sensor N) or v4l2:///dev/videoN (v4l2src). Repeat it for several streams: "
        "one batched inference per tick over every running stream",
    )
    p.add_argument(
        "--sources",
        type=Path,
        metavar="FILE",
        help="more sources, one per line (blank lines and # comments ignored), after any --source",
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
    p.add_argument(
        "--output",
        "-o",
        metavar="PATH",  # a str: a trailing / (a directory for several streams) must survive
        help="output video (.mp4, .avi, .mkv; .mkv is lossless FFV1). Several streams: a directory (DIR/: "
        "DIR/{index}_{name}.mp4) or a pattern with {index} and/or {name} (out_{index}.mkv), one file per stream",
    )
    p.add_argument(
        "--show", action="store_true", help="show the result in a window (q/Esc stops); several streams: a mosaic"
    )
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


def source_list(args) -> list[str]:
    """Every ``--source``, then the lines of ``--sources FILE``; one line naming the file when it is wrong."""
    sources = list(args.source or [])
    if args.sources is not None:
        try:
            text = args.sources.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            why = "no such file" if isinstance(exc, FileNotFoundError) else getattr(exc, "strerror", None) or str(exc)
            raise ToolkitError(f"{args.sources}: cannot read --sources ({why})") from exc
        sources += [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
        if len(sources) == len(args.source or []):
            raise ToolkitError(f"{args.sources}: --sources lists no source (one URL or path per line)")
    if not sources:
        raise ToolkitError("give a video with --source (repeat it, or --sources FILE, for several streams)")
    return sources


def stream_name(source: str) -> str:
    """A file-name-safe short name for a source (its file stem, camera index, or URL host and path)."""
    from deeplab_trt.runtime.video import classify_source

    kind = classify_source(source)
    text = Path(source).stem if kind in ("file", "sequence") else f"camera{source}" if kind == "camera" else source
    text = re.sub(r"^[a-zA-Z0-9+.-]*://", "", text)
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_.")[:40] or "stream"


def output_paths(text: str | None, sources: list[str]) -> list[Path | None]:
    """Each stream's output file: ``--output`` itself for one stream; for several, a directory or a pattern.

    Args:
        text: the ``--output`` value as given (``None``: no files).
        sources: the streams' sources, in order.
    """
    if text is None:
        return [None] * len(sources)
    output = Path(text)
    if len(sources) == 1 and "{" not in text:
        return [output]
    names = [stream_name(src) for src in sources]
    paths: list[Path | None]
    if "{" in text:
        try:
            paths = [Path(text.format(index=i, name=name)) for i, name in enumerate(names)]
        except (KeyError, IndexError, ValueError) as exc:
            raise ToolkitError(f"--output {text}: a pattern may use {{index}} and {{name}} only ({exc})") from exc
    elif text.endswith(("/", os.sep)) or output.is_dir():
        paths = [output / f"{i}_{name}.mp4" for i, name in enumerate(names)]
    else:
        raise ToolkitError(
            f"--output {text}: {len(sources)} streams need a directory (end it with /) "
            "or a pattern with {index} (e.g. out_{index}.mp4)"
        )
    if len(set(paths)) != len(paths):
        raise ToolkitError(f"--output {text}: streams would share a file; put {{index}} in the pattern")
    return paths


def _check_paths(args, sources: list[str], outputs: list[Path | None]) -> None:
    """Output-side checks that need no model or video (fail before the slow work)."""
    from deeplab_trt.runtime.video import LOSSLESS_SUFFIXES, check_video_output, classify_source

    for source, output in zip(sources, outputs, strict=True):
        if output is None:
            continue
        check_video_output(output)
        if classify_source(source) == "file" and Path(source).exists() and Path(source).resolve() == output.resolve():
            raise ToolkitError(f"{output}: output would overwrite the source")
        if args.mode == "labels" and output.suffix.lower() not in LOSSLESS_SUFFIXES:
            log.warning("%s: --mode labels through a lossy codec changes label values; use .mkv (lossless)", output)
    for path in (*outputs, args.json):
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


def _open_with_reconnect(args, source: str, open_source):
    """The source, reopened with backoff when a live one drops (``--reconnect``); files as they are."""
    from deeplab_trt.runtime.reconnect import Backoff, ReconnectingSource

    if args.reconnect < 0 or args.reconnect_delay < 0:
        raise ToolkitError(
            f"--reconnect {args.reconnect} / --reconnect-delay {args.reconnect_delay}: must not be negative"
        )
    backoff = Backoff(attempts=args.reconnect, delay=args.reconnect_delay, max_delay=max(8.0, args.reconnect_delay))
    return ReconnectingSource(lambda: open_source(source, **source_options(args)), backoff=backoff)


def _engine_options(args, streams: int = 1) -> dict:
    """Options only a TensorRT engine takes (ONNX Runtime's backend would reject them): its runtime
    cache, and the batch to allocate for (one image per stream)."""
    from deeplab_trt.runtime.backends.base import ENGINE_SUFFIXES

    if Path(args.model).suffix.lower() not in ENGINE_SUFFIXES:
        return {}
    options: dict = {"runtime_cache": False} if getattr(args, "no_runtime_cache", False) else {}
    if streams > 1:
        options["batch"] = streams
    return options


def _describe(source) -> None:
    log.info(
        "%s: %dx%d, %g fps%s",
        source.description,
        *source.size,
        source.fps,
        f", {source.frame_count} frames" if source.frame_count else " (live)" if source.is_live else "",
    )


def _open_sinks(stack, args, sources, outputs) -> list[list]:
    """Each stream's sinks, entered on ``stack`` (a clean exit or Ctrl-C finalises them, an error discards them).

    The window first: "no display" must fail before an output file is started."""
    from deeplab_trt.runtime.mosaic import Mosaic
    from deeplab_trt.runtime.video import NullSink, VideoFileSink, WindowSink

    sinks: list[list] = [[] for _ in sources]
    if args.show:
        title = (
            f"deeplab-trt: {sources[0].description}" if len(sources) == 1 else f"deeplab-trt: {len(sources)} streams"
        )
        window = stack.enter_context(WindowSink(title))
        if len(sources) == 1:
            sinks[0].append(window)
        else:
            mosaic = Mosaic(window, [s.size for s in sources])
            for i in range(len(sources)):
                sinks[i].append(mosaic.tile(i))
    for i, (source, output) in enumerate(zip(sources, outputs, strict=True)):
        if output is None:
            continue
        if not source.fps_reported:
            log.warning(
                "%s: the source reports no frame rate; writing %s at %g fps", source.description, output, source.fps
            )
        output.parent.mkdir(parents=True, exist_ok=True)
        sinks[i].insert(0, stack.enter_context(VideoFileSink(output, source.fps, source.size)))
    return [per_stream or [NullSink()] for per_stream in sinks]


def _record_streams(stats, sources, sinks) -> None:
    """Per stream: the files written (closed, renamed into place by now) and a live source's drops."""
    from deeplab_trt.runtime.reconnect import ReconnectingSource
    from deeplab_trt.runtime.video import VideoFileSink

    for stream, source, per_stream in zip(stats.streams, sources, sinks, strict=True):
        for sink in per_stream:
            if isinstance(sink, VideoFileSink) and sink.frames:
                stream.outputs.append(
                    {"path": str(sink.path), "size": list(sink.output_size), "fps": sink.fps, "frames": sink.frames}
                )
        if isinstance(source, ReconnectingSource) and source.is_live:
            stream.source_status = source.summary()
            if stream.ended == "end of stream":  # the source knows why: gave up reconnecting, came back resized...
                stream.ended = stream.source_status["end_reason"]
    if len(stats.streams) == 1:  # one stream: its outputs and drops are the run's, as they always were
        stats.outputs = stats.streams[0].outputs
        stats.source_status = stats.streams[0].source_status


def main(args) -> int:
    from deeplab_trt.runtime.atomic import write_text_atomic
    from deeplab_trt.runtime.backends import open_backend
    from deeplab_trt.runtime.pipeline import RunOptions, check_batch_capacity, run_streams
    from deeplab_trt.runtime.video import open_source

    options = RunOptions(
        mode=args.mode, alpha=args.alpha, policy=args.policy, max_frames=args.max_frames, progress=not args.no_progress
    )
    names = source_list(args)
    outputs = output_paths(args.output, names)
    _check_paths(args, names, outputs)
    if (args.model is None) == (args.triton is None):
        raise ToolkitError("give a model file, or --triton URL for a served model (not both)")
    stage = None
    with contextlib.ExitStack() as stack:
        if args.triton is not None:  # the server batches the streams' requests (its dynamic batcher)
            backend, stage = _remote(args, options)
            stack.callback(stage.close)
        else:
            backend = open_backend(
                args.model, args.backend, threads=args.threads, **_engine_options(args, streams=len(names))
            )
            stack.callback(backend.close)
            check_batch_capacity(backend, len(names), args.model)
        sources = [stack.enter_context(_open_with_reconnect(args, name, open_source)) for name in names]
        for source in sources:
            _describe(source)
        log.info(
            "-> %s (%s, %dx%d input)",
            args.model or args.triton,
            backend.name,
            backend.spec.input_height,
            backend.spec.input_width,
        )
        sinks = _open_sinks(stack, args, sources, outputs)
        if stage is not None:
            from deeplab_trt.runtime.gpu_pipeline import run_streams as slot_loop

            stats = slot_loop(backend, sources, sinks, options, stage=stage)
        else:
            stats = run_streams(backend, sources, sinks, options)
    # Sinks are closed (files renamed into place) here.
    _record_streams(stats, sources, sinks)
    for line in stats.report_lines():
        print(line)
    if args.json is not None:
        write_text_atomic(args.json, json.dumps(stats.to_dict(), indent=2) + "\n")
    sys.stdout.flush()
    return 130 if stats.interrupted else 0
