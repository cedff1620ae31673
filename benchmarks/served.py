"""Served vs in-process throughput: the same frames through a real ``tritonserver`` and through the runtime here.

Why: serving adds transport (HTTP/gRPC, shared memory to the python stub) and gains dynamic batching
across clients; the number that says whether the Triton path is worth it on a box is served frames/s
with concurrent clients over the in-process frames/s of ``deeplab-trt run``'s per-frame work
(preprocess, inference, labels). Goal on CPU: >= 0.8 with 4 clients. One run::

    python -m deeplab_trt.benchmarks.served MODEL.onnx [--frames 48] [--size 256x512] [--clients 4] [--json OUT]

Both sides run the same model file with ONNX Runtime's default threads; the server is started on
loopback (:class:`~deeplab_trt.benchmarks.tritonserver.TritonServer`) from a repository that
:func:`~deeplab_trt.builder.triton.deploy_triton` writes; labels are checked equal on every frame.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from deeplab_trt.runtime.cli_types import frame_size, positive_int
from deeplab_trt.runtime.errors import ToolkitError


def in_process_fps(model: Path, frames: list[np.ndarray]) -> tuple[float, list[np.ndarray]]:
    """Frames/s of the per-frame loop of ``deeplab-trt run`` (one frame per inference), and its labels."""
    from deeplab_trt.runtime.backends import open_backend
    from deeplab_trt.runtime.triton_python import segment_frames

    with open_backend(model) as backend:
        segment_frames(backend, frames[:1])  # warm-up
        started = time.perf_counter()
        labels = [segment_frames(backend, [f])[0] for f in frames]
        return len(frames) / (time.perf_counter() - started), labels


def served_fps(url: str, frames: list[np.ndarray], clients: int) -> tuple[float, list[np.ndarray]]:
    """Frames/s with ``clients`` concurrent gRPC clients, one frame per request, and the labels (in frame order)."""
    from deeplab_trt.runtime.triton_client import TritonSegmenter

    segmenter = TritonSegmenter(url)
    segmenter.segment(frames[0])  # warm-up (and the server's first-request work)
    labels: list[np.ndarray | None] = [None] * len(frames)

    def client(k: int) -> None:
        for i in range(k, len(frames), clients):
            labels[i] = segmenter.segment(frames[i])[0]

    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    return len(frames) / (time.perf_counter() - started), [lab for lab in labels if lab is not None]


def measure(model: Path, *, frames: int = 48, size: tuple[int, int] = (256, 512), clients: int = 4) -> dict:
    """One run of both sides on the same synthetic street frames; returns the report.

    Args:
        model: an ONNX model from ``deeplab-trt export``.
        frames: frames per side.
        size: frame (height, width).
        clients: concurrent clients on the served side.
    """
    from deeplab_trt.benchmarks.scenes import render_video
    from deeplab_trt.benchmarks.tritonserver import TritonServer
    from deeplab_trt.builder.triton import deploy_triton

    video = [f for f, _ in render_video(0, frames, size=size)]
    local_fps, local_labels = in_process_fps(model, video)
    with tempfile.TemporaryDirectory() as tmp:
        deploy_triton(model, output=Path(tmp) / "repo")
        with TritonServer(Path(tmp) / "repo") as server:
            startup = server.startup_s
            remote_fps, remote_labels = served_fps(f"grpc://{server.grpc_url}", video, clients)
    equal = len(remote_labels) == len(local_labels) and all(
        np.array_equal(a, b) for a, b in zip(remote_labels, local_labels)
    )
    return {
        "model": str(model),
        "frames": frames,
        "frame_size": list(size),
        "clients": clients,
        "in_process_fps": round(local_fps, 2),
        "served_fps": round(remote_fps, 2),
        "ratio": round(remote_fps / local_fps, 3),
        "goal": 0.8,
        "labels_equal": equal,
        "server_startup_s": round(startup, 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deeplab_trt.benchmarks.served", description=__doc__.split("\n")[0])
    parser.add_argument("model", type=Path, help="ONNX model from 'deeplab-trt export'")
    parser.add_argument("--frames", type=positive_int, default=48)
    parser.add_argument("--size", type=frame_size, default=(256, 512), metavar="HxW")
    parser.add_argument("--clients", type=positive_int, default=4)
    parser.add_argument("--json", type=Path, help="also write the report as JSON")
    args = parser.parse_args(argv)
    try:
        report = measure(args.model, frames=args.frames, size=args.size, clients=args.clients)
    except ToolkitError as exc:
        print(f"served: error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(
        f"in-process {report['in_process_fps']:.2f} frames/s, served ({report['clients']} clients) "
        f"{report['served_fps']:.2f} frames/s: ratio {report['ratio']:.3f} (goal >= 0.8); "
        f"labels equal: {report['labels_equal']}; server ready in {report['server_startup_s']:.2f} s"
    )
    if args.json:
        from deeplab_trt.runtime.atomic import write_text_atomic

        write_text_atomic(args.json, json.dumps(report, indent=2) + "\n")
    return 0 if report["labels_equal"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
