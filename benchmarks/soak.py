"""Soak: host memory over a long ``run`` (issue 13 item 4), sampled every K frames, in one run.

Why: a video-analytics box runs for days; a per-frame leak of a few KB (a queue that keeps frames,
a growing stats list, an ONNX Runtime arena that never settles) shows only after thousands of
frames. This drives the one video loop (:func:`deeplab_trt.runtime.pipeline.run_video`, the same
loop ``deeplab-trt run`` uses) over in-memory frames at memory speed, with a sink that reads the
process's resident set size (``/proc/self/statm``, current, not the peak) every ``--every`` frames.
Target: growth from frame 1,000 to the last frame ≤ 5 %. Table, JSON and (with the ``plots``
extra) a PNG of RSS against frames.

    python -m deeplab_trt.benchmarks.soak [--model PATH.onnx] [--frames 10000] [--every 500]
        [--size 64x128] [--json OUT.json] [--plot OUT.png]

Without ``--model`` it exports deeplabv3_mobilenet_v3_large with random weights at ``--size`` (the
``export`` extra; cached like the other benchmarks' models). A TensorRT engine (``--model X.engine``)
runs the GPU pipeline, and then the device memory in use (``cudaMemGetInfo``: total − free, every
process on the GPU) is sampled at the same frames, with the same ≤ 5 % rule; that path is tested on
the fake CUDA only (no GPU has been lent).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

from deeplab_trt.runtime.cli_types import frame_size
from deeplab_trt.runtime.video import Sink

#: Growth allowed between the warm-up sample and the last one (the issue's bound).
MAX_GROWTH = 0.05


def rss_bytes() -> int:
    """The current resident set size of this process (Linux ``/proc/self/statm``; 0 where it is absent)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0
    return pages * os.sysconf("SC_PAGE_SIZE")


def device_used_bytes() -> int:
    """Device memory in use on the current CUDA device (total − free: every process's, not only ours)."""
    from deeplab_trt.runtime.cuda import api

    free, total = api.memory_info()
    return total - free


class RssSink(Sink):
    """Counts frames and records ``(frame, rss)`` every ``every`` frames (and at the first one);
    with ``read_device``, ``(frame, device bytes in use)`` at the same frames."""

    def __init__(self, every: int, read_rss=rss_bytes, read_device=None):
        self.every = every
        self.read_rss = read_rss
        self.read_device = read_device
        self.frames = 0
        self.samples: list[tuple[int, int]] = []
        self.device_samples: list[tuple[int, int]] = []

    def write(self, frame: np.ndarray) -> None:
        self.frames += 1
        if self.frames == 1 or self.frames % self.every == 0:
            self.samples.append((self.frames, self.read_rss()))
            if self.read_device is not None:
                self.device_samples.append((self.frames, self.read_device()))


def growth(samples: list[tuple[int, int]], *, after: int = 1000) -> float | None:
    """Relative RSS growth from the first sample at or after frame ``after`` to the last sample."""
    base = next((rss for frame, rss in samples if frame >= after), None)
    if base is None or base == 0 or samples[-1][0] <= after:
        return None
    return (samples[-1][1] - base) / base


def soak(backend, frames: list[np.ndarray], *, count: int, every: int, read_device=None) -> dict:
    """Run ``count`` frames through the video loop and return the samples and the growth.

    Args:
        backend: an open backend (``open_backend``).
        frames: distinct BGR frames, cycled.
        count: frames to run.
        every: sample the RSS every this many frames.
        read_device: how to read device memory in use (default: :func:`device_used_bytes` when the backend
            runs the GPU pipeline, else none).
    """
    from deeplab_trt.benchmarks.bench import ArraySource
    from deeplab_trt.runtime.pipeline import RunOptions, run_video

    if read_device is None and backend.pipeline == "gpu":
        read_device = device_used_bytes
    sink = RssSink(every, read_device=read_device)
    stats = run_video(backend, ArraySource(frames, count), [sink], RunOptions(max_frames=count, progress=False))
    g = growth(sink.samples)
    result = {
        "frames": stats.frames,
        "fps": stats.fps,
        "pipeline": stats.pipeline,
        "samples": [{"frame": f, "rss_mb": r / 2**20} for f, r in sink.samples],
        "growth_1000_to_last": g,
        "goal": MAX_GROWTH,
        "met": g is not None and g <= MAX_GROWTH,
    }
    if read_device is not None:
        dg = growth(sink.device_samples)
        result["device_samples"] = [{"frame": f, "device_mb": b / 2**20} for f, b in sink.device_samples]
        result["device_growth_1000_to_last"] = dg
        result["met"] = result["met"] and dg is not None and dg <= MAX_GROWTH
    return result


def _plot(result: dict, path: Path) -> None:
    from deeplab_trt.calibration.report import pyplot
    from deeplab_trt.runtime.atomic import atomic_path

    plt = pyplot(purpose="soak --plot")
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.plot([s["frame"] for s in result["samples"]], [s["rss_mb"] for s in result["samples"]], marker="o")
    ax.set_xlabel("frame")
    ax.set_ylabel("RSS (MB)")
    ax.set_title("deeplab-trt run: host memory over a soak")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def _model(args) -> Path:
    if args.model is not None:
        return args.model
    from deeplab_trt.benchmarks.bench import default_cache_dir
    from deeplab_trt.builder.export import export_onnx

    h, w = args.size
    path = default_cache_dir() / f"soak_mobilenet_lowres_{h}x{w}.onnx"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        export_onnx(path, model="deeplabv3_mobilenet_v3_large", weights="none", num_classes=21, height=h, width=w)
    return path


def main(argv: list[str] | None = None) -> int:
    from deeplab_trt.benchmarks.environment import machine_line
    from deeplab_trt.benchmarks.scenes import SceneGenerator
    from deeplab_trt.runtime.atomic import write_text_atomic
    from deeplab_trt.runtime.backends import open_backend

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=None, help="ONNX model (default: a random-weight mobilenet)")
    ap.add_argument("--frames", type=int, default=10_000)
    ap.add_argument("--every", type=int, default=500)
    ap.add_argument("--size", type=frame_size, default=(64, 128), metavar="HxW", help="model input (default 64x128)")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--plot", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.plot is not None:
        from deeplab_trt.calibration.report import pyplot

        pyplot(purpose="soak --plot")  # fail before the long run, not after it
    with open_backend(_model(args)) as backend:  # an engine: the GPU pipeline, device memory sampled too
        h, w = backend.spec.input_height, backend.spec.input_width
        frames = [img for img, _ in SceneGenerator(h, w, seed=7).video_frames(16)]
        result = soak(backend, frames, count=args.frames, every=args.every)
    print(f"command: python -m deeplab_trt.benchmarks.soak {' '.join(argv if argv is not None else sys.argv[1:])}")
    print(f"machine: {machine_line()}")
    print(f"{result['frames']} frames at {result['fps']:.1f} FPS ({w}x{h} frames, {backend.name})")
    device = result.get("device_samples")
    print("| frame | RSS (MB) |" + (" device in use (MB) |\n|--:|--:|--:|" if device else "\n|--:|--:|"))
    for i, sample in enumerate(result["samples"]):
        print(
            f"| {sample['frame']} | {sample['rss_mb']:.1f} |" + (f" {device[i]['device_mb']:.1f} |" if device else "")
        )
    verdict = "met" if result["met"] else "NOT met"
    for what, g in (
        ("RSS", result["growth_1000_to_last"]),
        ("device memory", result.get("device_growth_1000_to_last")),
    ):
        if what == "RSS" or device:
            print(f"{what} growth, frame 1000 -> {result['frames']}: {'n/a' if g is None else f'{100 * g:+.2f}%'}")
    print(f"goal <= 5%: {verdict}")
    if args.json is not None:
        write_text_atomic(args.json, json.dumps(result, indent=2) + "\n")
    if args.plot is not None:
        _plot(result, args.plot)
    return 0 if result["met"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
