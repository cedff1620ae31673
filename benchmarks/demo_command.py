"""``deeplab-trt demo``: the whole toolkit on any machine, offline, in well under a minute.

What it does: renders a synthetic street video (:mod:`deeplab_trt.benchmarks.scenes`, moving cars and
people, ground truth per frame), rebuilds the committed demo model's ONNX once (no torch needed; cached under
``~/.cache/deeplab-trt/demo/``, keyed by the weights' SHA-256 and the toolkit version),
picks the best backend available (a TensorRT engine, built once and cached, when a CUDA GPU
and TensorRT are present; ONNX Runtime otherwise), segments the video on the runtime's
video pipeline, writes the overlay video, and prints the FPS and the mIoU against the
video's ground truth.

How the mIoU is measured without touching the pipeline: the pipeline runs in ``labels``
mode, and the demo's sink receives each frame's labels, scores them against that frame's
ground truth and renders the overlay itself (the runtime's :func:`deeplab_trt.runtime.postprocess.render`)
before writing it. So the FPS includes rendering and encoding, as in ``deeplab-trt run``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
import time
from pathlib import Path

import numpy as np

from deeplab_trt.runtime.cli_types import positive_int
from deeplab_trt.runtime.engine_record import sha256_file
from deeplab_trt.runtime.video import Sink, Source

log = logging.getLogger(__name__)

CACHE_ENV = "DEEPLAB_TRT_CACHE"
#: Default street (scene index): all seven classes in view. On a street without, say, trees a
#: single false "vegetation" pixel scores that class 0 and pulls the mean down, which says
#: little about the model.
DEFAULT_STREET = 16


def add_parser(sub) -> argparse.ArgumentParser:
    from deeplab_trt.runtime.backends import BACKENDS

    p = sub.add_parser(
        "demo",
        help="segment a synthetic street video with the demo model (offline, any machine)",
        description=__doc__.splitlines()[0],
    )
    p.add_argument(
        "--output",
        "-o",
        type=Path,
        default=Path("demo.mp4"),
        metavar="OUT.mp4",
        help="overlay video to write (default demo.mp4; .mp4/.avi/.mkv)",
    )
    p.add_argument("--frames", type=positive_int, default=90, metavar="N", help="video length (default 90 = 3 s)")
    p.add_argument("--fps", type=float, default=30.0, help="frame rate of the written video (default 30)")
    p.add_argument(
        "--seed",
        type=int,
        default=10_000_000,
        metavar="S",
        help="scene seed (default 10000000: streets the demo model never saw)",
    )
    p.add_argument(
        "--street",
        type=int,
        default=DEFAULT_STREET,
        metavar="I",
        help=f"which street of that seed (scene index, default {DEFAULT_STREET}: one with all seven "
        "classes in view, so every class's IoU is measured)",
    )
    p.add_argument("--height", type=positive_int, metavar="H", help="video height (default: the model's input)")
    p.add_argument("--width", type=positive_int, metavar="W", help="video width (default: the model's input)")
    p.add_argument(
        "--backend",
        choices=BACKENDS,
        default="auto",
        help="auto (default): TensorRT when a CUDA GPU and TensorRT are present, else ONNX Runtime",
    )
    p.add_argument(
        "--model", type=Path, metavar="PATH", help="run this ONNX model or engine instead of the built-in demo model"
    )
    p.add_argument(
        "--cache-dir",
        type=Path,
        metavar="DIR",
        help=f"export/engine cache (default ${CACHE_ENV} or ~/.cache/deeplab-trt)",
    )
    p.add_argument("--threads", type=positive_int, metavar="N", help="ONNX Runtime intra-op threads")
    p.add_argument("--alpha", type=float, default=0.5, help="overlay opacity (default 0.5)")
    p.add_argument("--json", type=Path, metavar="OUT", help="write FPS, stage times and mIoU as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
    return p


# ----- model: export once, cache ------------------------------------------------------------
def cache_root(explicit: Path | None = None) -> Path:
    if explicit is not None:
        return explicit.expanduser()
    from deeplab_trt.runtime.cache_dir import toolkit_cache_root  # honours $DEEPLAB_TRT_CACHE (CACHE_ENV)

    return toolkit_cache_root()


def cached_onnx_name(cache: Path, dynamic_batch: tuple[int, int, int] | None = None) -> Path:
    """Where the demo export lives in ``cache``: keyed by the weights' SHA-256, the toolkit version and the batch."""
    from deeplab_trt.builder.models import DEMO_PATH
    from deeplab_trt.runtime import __version__
    from deeplab_trt.runtime.errors import ToolkitError

    if not DEMO_PATH.exists():
        raise ToolkitError(
            f"{DEMO_PATH}: the demo model's weights are not installed "
            "(python -m deeplab_trt.benchmarks.train_demo trains them)"
        )
    batch = "" if dynamic_batch is None else "-batch" + "-".join(map(str, dynamic_batch))
    return cache / "demo" / f"demo-{sha256_file(DEMO_PATH)[:16]}-v{__version__}-lowres{batch}.onnx"


def demo_onnx_path(cache: Path, progress: bool = True, *, dynamic_batch: tuple[int, int, int] | None = None) -> Path:
    """The demo model as ONNX (low-res head), made on first use and cached.

    Made from the shipped ONNX template and the checkpoint's weights
    (:mod:`deeplab_trt.builder.demo_asset`: numpy only, no torch, the export's graph and weights
    byte for byte) when the template was derived from this checkpoint; exported with torch
    otherwise (a retrained checkpoint whose template was not regenerated).

    Args:
        cache: the toolkit cache root (:func:`cache_root`).
        progress: say on stderr when the slow torch export runs.
        dynamic_batch: ``(min, opt, max)`` for a model with a symbolic batch dimension (several
            streams batched in one inference); default: batch 1, the demo's own.
    """
    from deeplab_trt.builder import demo_asset
    from deeplab_trt.builder.models import DEMO_PATH

    path = cached_onnx_name(cache, dynamic_batch)
    if not path.exists():
        if demo_asset.source_sha256() == sha256_file(DEMO_PATH):
            demo_asset.expand_onnx(demo_asset.DEMO_ONNX_PATH, path, checkpoint=DEMO_PATH, dynamic_batch=dynamic_batch)
        else:
            from deeplab_trt.builder.export import export_onnx

            if progress:
                print(f"exporting the demo model to {path} (once)", file=sys.stderr)
            export_onnx(path, model="demo", head="lowres", dynamic_batch=dynamic_batch, progress=False)
    return path


def _gpu_tensorrt_available() -> bool:
    try:
        from deeplab_trt.runtime.cuda.api import device_count

        if device_count() < 1:
            return False
        from deeplab_trt.runtime.tensorrt_flavour import detect

        detect("auto")  # raises when no TensorRT flavour can be imported
        return True
    except Exception:  # no cuda-python, no driver, no TensorRT: ONNX Runtime it is  # noqa: BLE001
        return False


def demo_engine_path(onnx_path: Path, progress: bool = True) -> Path:
    """FP16 engine for this GPU next to the cached ONNX (built once)."""
    from deeplab_trt.builder.engine import BuildOptions, build_engine

    engine = onnx_path.with_suffix(".fp16.engine")
    if not engine.exists():
        if progress:
            print(f"building a TensorRT engine {engine} (once)", file=sys.stderr)
        build_engine(onnx_path, engine, BuildOptions(precision="fp16", progress=progress))
    return engine


# ----- source and sink ------------------------------------------------------------------------
class SyntheticSource(Source):
    """A :class:`deeplab_trt.runtime.video.VideoSource` look-alike that renders frames on the decode thread.

    Keeps each frame and its ground truth until the sink has consumed them (the pipeline is
    lossless for non-live sources, so frames reach the sink in order).
    """

    is_live = False
    kind = "synthetic"

    def __init__(self, gen, frames: int, fps: float, index: int = 0):
        self._it = gen.video_frames(frames, index=index)
        self.description = f"synthetic street (seed {gen.seed}, street {index}, {frames} frames)"
        self.size = (gen.width, gen.height)
        self.fps = float(fps)
        self.fps_reported = True
        self.frame_count = frames
        self.pending: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._n = 0
        self._lock = threading.Lock()

    def read(self) -> np.ndarray | None:
        try:
            frame, labels = next(self._it)
        except StopIteration:
            return None
        with self._lock:
            self.pending[self._n] = (frame, labels)
            self._n += 1
        return frame

    def take(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        with self._lock:
            return self.pending.pop(i)

    def close(self) -> None:
        pass


class ScoringSink(Sink):
    """Gets grey label pictures (``labels`` mode), scores them, writes the overlay to ``inner``."""

    wants_stop = False

    def __init__(self, source: SyntheticSource, inner, spec, alpha: float):
        from deeplab_trt.benchmarks.metrics import ConfusionMatrix
        from deeplab_trt.runtime.postprocess import palette_bgr

        self.source, self.inner, self.alpha = source, inner, alpha
        self.confusion = ConfusionMatrix(spec.num_classes)
        self.lut = palette_bgr(spec)
        self.frames = 0
        self.description = inner.description

    def write(self, picture: np.ndarray) -> None:
        from deeplab_trt.runtime.postprocess import render

        frame, truth = self.source.take(self.frames)
        labels = picture[:, :, 0] if picture.ndim == 3 else picture
        self.confusion.update(truth, labels)
        self.inner.write(render(frame, labels, self.lut, "overlay", self.alpha))
        self.frames += 1

    def close(self) -> None:
        self.inner.close()

    def abort(self) -> None:
        self.inner.abort()


# ----- the command ----------------------------------------------------------------------------
def run(args) -> int:
    from deeplab_trt.benchmarks.scenes import SceneGenerator
    from deeplab_trt.runtime.atomic import write_text_atomic
    from deeplab_trt.runtime.backends import open_backend
    from deeplab_trt.runtime.errors import ToolkitError
    from deeplab_trt.runtime.pipeline import RunOptions, runner_for
    from deeplab_trt.runtime.video import VideoFileSink, check_video_output

    check_video_output(args.output)
    if args.json is not None and args.json.is_dir():
        raise ToolkitError(f"{args.json}: is a directory, expected a JSON file name")
    if not 0.0 <= args.alpha <= 1.0:
        raise ToolkitError(f"--alpha must be within [0, 1], got {args.alpha}")
    progress = not args.no_progress
    started = time.perf_counter()

    if args.model is not None:
        model_path = args.model
    else:
        model_path = demo_onnx_path(cache_root(args.cache_dir), progress)
        if args.backend == "tensorrt" or (args.backend == "auto" and _gpu_tensorrt_available()):
            model_path = demo_engine_path(model_path, progress)
    backend = open_backend(model_path, args.backend, **({"threads": args.threads} if args.threads else {}))
    try:
        spec = backend.spec
        h, w = args.height or spec.input_height, args.width or spec.input_width
        gen = SceneGenerator(h, w, seed=args.seed)
        source = SyntheticSource(gen, args.frames, args.fps, index=args.street)
        options = RunOptions(mode="labels", policy="stretch", progress=progress)
        file_sink = VideoFileSink(args.output, args.fps, source.size)
        sink = ScoringSink(source, file_sink, spec, args.alpha)
        try:
            stats = runner_for(backend)(backend, source, [sink], options)
        except BaseException:
            sink.abort()
            raise
        sink.close()  # also after Ctrl-C: what was written is a playable file
    finally:
        backend.close()
    summary = sink.confusion.summary(spec.classes)
    stats.mode = "overlay"
    stats.outputs.append(
        {"path": str(args.output), "size": list(file_sink.output_size), "fps": args.fps, "frames": file_sink.frames}
    )
    for line in stats.report_lines():
        print(line)
    print(
        f"mIoU vs ground truth {summary['miou']:.4f}, pixel accuracy {summary['pixel_accuracy']:.4f} "
        f"({sink.frames} frames; "
        + ", ".join(f"{k} {v:.2f}" for k, v in summary["per_class_iou"].items() if v is not None)
        + ")"
    )
    print(f"total {time.perf_counter() - started:.1f} s (model: {model_path})")
    if args.json is not None:
        report = {**stats.to_dict(), "model_path": str(model_path), "accuracy": summary}
        write_text_atomic(args.json, json.dumps(report, indent=2) + "\n")
    return 130 if stats.interrupted else 0
