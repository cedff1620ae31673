"""Many cameras, one engine: N streams batched in one process vs N single-stream runs (issue 13).

Why measure it this way: what batching buys is aggregate throughput (frames of all cameras per
second of one process), and what it may cost is each stream's latency (a tick waits for every
stream's frame, then one inference of them all). So, for each N, on one backend object, over the
same in-memory frames (distinct synthetic street scenes per stream, prepared up front, so the
loop and not a decoder is measured):

* **batched**: one :func:`deeplab_trt.runtime.pipeline.run_streams` over N sources of F frames;
  one inference per tick (mean batch reported);
* **sequential**: N back-to-back :func:`deeplab_trt.runtime.pipeline.run_video` runs of F frames;

each into null sinks (the picture is rendered, as in ``run``, then dropped). Aggregate FPS =
N × F / the loops' wall time (:attr:`Stats.fps`; summed over the N sequential runs); per-stream
latency = each frame's tick-taken → picture-written time, pooled over the streams (p50, p99; and
per stream in the JSON). Repeats interleave the two sides and alternate which goes first, so a
machine whose load changes (2 shared cores here) slows both alike; the ratio batched/sequential is
taken within each repeat and reported as median (min–max). Goal: batched ≥ 1.0×. Beside it, the
inference-only speedup (N × batch-1 time / batch-N time, ``backend.infer``) says how much of the
ratio the backend's own batch scaling can give.

    python -m deeplab_trt.benchmarks.stream_throughput [--model PATH.onnx] [--streams 1 2 4 8]
        [--frames 48] [--repeats 3] [--warmup 4] [--threads N] [--size HxW] [--json OUT] [--plot OUT.png]

Without ``--model``: the demo model at 256×512 with a dynamic batch of 1..max(N)
(:func:`deeplab_trt.benchmarks.demo_command.demo_onnx_path`, no torch needed). ONNX Runtime CPU
unless ``--backend`` says otherwise. ``deeplab-trt bench --streams N`` measures the same numbers
with :func:`measure` (one implementation).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from deeplab_trt.runtime.cli_types import frame_size
from deeplab_trt.runtime.errors import ToolkitError
from deeplab_trt.runtime.latency import LatencyHistogram

SCHEMA = "deeplab-trt-streams/1"
#: batched aggregate FPS / sequential aggregate FPS the issue asks for
GOAL = 1.0
#: the synthetic streets' seed (held out from the demo's training seeds, like the bench's)
SEED = 10_000_000 + 1313


def stream_frames(height: int, width: int, streams: int, distinct: int, seed: int = SEED) -> list[list[np.ndarray]]:
    """``distinct`` frames of a different synthetic street for each of ``streams`` streams (cycled by the sources).

    Args:
        height: frame height.
        width: frame width.
        streams: how many streams.
        distinct: frames per stream (a moving street video).
        seed: the scene generator's seed.
    """
    from deeplab_trt.benchmarks.scenes import SceneGenerator

    gen = SceneGenerator(height, width, seed=seed)
    return [[img for img, _ in gen.video_frames(distinct, index=i)] for i in range(streams)]


def _sources(frames_by_stream: Sequence[list[np.ndarray]], n: int, count: int):
    from deeplab_trt.benchmarks.bench import ArraySource

    return [ArraySource(frames_by_stream[i], count, description=f"stream {i}") for i in range(n)]


def batched_run(backend, frames_by_stream: Sequence[list[np.ndarray]], n: int, count: int, options) -> dict:
    """One :func:`run_streams` over ``n`` in-memory streams of ``count`` frames: the batched side."""
    from deeplab_trt.runtime.pipeline import run_streams
    from deeplab_trt.runtime.video import NullSink

    stats = run_streams(backend, _sources(frames_by_stream, n, count), [[NullSink()] for _ in range(n)], options)
    return {
        "frames": stats.frames,
        "wall_s": stats.wall_s,
        "ticks": stats.ticks,
        "latency": [s.latency for s in stats.streams],
    }


def sequential_runs(backend, frames_by_stream: Sequence[list[np.ndarray]], n: int, count: int, options) -> dict:
    """``n`` back-to-back :func:`run_video` runs of ``count`` frames, stream after stream: the sequential side."""
    from deeplab_trt.runtime.pipeline import run_video
    from deeplab_trt.runtime.video import NullSink

    runs = [run_video(backend, source, [NullSink()], options) for source in _sources(frames_by_stream, n, count)]
    return {
        "frames": sum(s.frames for s in runs),
        "wall_s": sum(s.wall_s for s in runs),
        "ticks": sum(s.ticks for s in runs),
        "latency": [s.streams[0].latency for s in runs],
    }


def _spread(values: Sequence[float]) -> dict[str, float]:
    return {"median": float(np.median(values)), "min": float(min(values)), "max": float(max(values))}


def summarise(runs: Sequence[dict], n: int) -> dict:
    """One side (batched or sequential) over its repeats: FPS per repeat and spread, mean batch, latency."""
    fps = [r["frames"] / r["wall_s"] if r["wall_s"] > 0 else 0.0 for r in runs]
    ticks = sum(r["ticks"] for r in runs)
    return {
        "fps": fps,
        "fps_spread": _spread(fps),
        "frames": [r["frames"] for r in runs],
        "mean_batch": sum(r["frames"] for r in runs) / ticks if ticks else 0.0,
        "latency_ms": LatencyHistogram.merged(h for r in runs for h in r["latency"]).summary_ms(),
        "per_stream_latency_ms": [
            LatencyHistogram.merged(r["latency"][i] for r in runs).summary_ms() for i in range(n)
        ],
    }


def inference_speedup(backend, frames: Sequence[np.ndarray], n: int, *, warmup: int, iterations: int) -> dict | None:
    """Inference only: median ``backend.infer`` time of batch 1 and batch ``n`` and ``n × t1 / tn`` (None if 0 runs).

    Args:
        backend: the open backend.
        frames: frames to fill the batch with (cycled).
        n: the batch to compare with batch 1 (a fixed-batch model runs its own batch for both).
        warmup: untimed runs of each batch first.
        iterations: timed runs of each batch.
    """
    from deeplab_trt.benchmarks.bench import measure_inference
    from deeplab_trt.runtime.preprocess import preprocess_batch

    if iterations < 1:
        return None
    low = backend.fixed_batch or backend.batch_limits[0]
    picks = [frames[i % len(frames)] for i in range(max(n, low))]
    batch, _ = preprocess_batch(picks, backend.spec, dtype=backend.input_dtype)
    sizes = sorted({max(1, low), max(n, low)})
    samples: dict[int, list[float]] = {size: [] for size in sizes}
    for size in sizes:
        measure_inference(backend, batch[:size], warmup, 0)
    for _ in range(iterations):  # alternately, so a change of load slows both sizes alike
        for size in sizes:
            samples[size] += measure_inference(backend, batch[:size], 0, 1)[0]
    t1, tn = (float(np.median(samples[size])) for size in (sizes[0], sizes[-1]))
    return {"batch_1_ms": t1, "batch_n_ms": tn, "speedup": n * t1 / tn if tn > 0 else None}


def measure(
    backend,
    frames_by_stream: Sequence[list[np.ndarray]],
    streams: Sequence[int],
    *,
    frames: int,
    repeats: int = 3,
    warmup: int = 4,
    infer_iterations: int = 10,
    mode: str = "overlay",
    model: str | None = None,
    on_repeat: Callable[[int, int, float], None] | None = None,
) -> list[dict]:
    """Batched vs sequential aggregate throughput and latency for each N in ``streams``.

    Args:
        backend: an open backend whose batch holds ``max(streams)`` (checked: one-line error otherwise).
        frames_by_stream: per stream, the frames it cycles (:func:`stream_frames`; at least ``max(streams)`` lists).
        streams: the stream counts N to measure.
        frames: frames per stream per run.
        repeats: interleaved repeats (the ratio is taken within each; median and spread reported).
        warmup: frames per stream of an untimed batched run per N (and one sequential run) first.
        infer_iterations: timed ``backend.infer`` runs for the inference-only speedup (0 skips it).
        mode: the pictures rendered (``overlay``, ``mask``, ``labels``), as in ``run``.
        model: the model's path, for the batch-capacity error (default: the backend's).
        on_repeat: called with (N, repeat, ratio) after each repeat (progress lines).

    Returns one entry per N: ``{"streams", "frames_per_stream", "batched", "sequential", "ratio",
    "ratio_spread", "inference"}`` (:func:`summarise` for each side).
    """
    from deeplab_trt.runtime.pipeline import RunOptions, check_batch_capacity

    if not streams or min(streams) < 1 or frames < 1 or repeats < 1:
        raise ToolkitError(f"streams {list(streams)}, frames {frames}, repeats {repeats}: each must be at least 1")
    if len(frames_by_stream) < max(streams):
        raise ToolkitError(f"{max(streams)} streams need as many frame lists, got {len(frames_by_stream)}")
    check_batch_capacity(backend, max(streams), model or str(getattr(backend, "path", backend.spec.name)))
    options = RunOptions(mode=mode, progress=False)
    if warmup:
        sequential_runs(backend, frames_by_stream, 1, warmup, options)
        for n in streams:
            batched_run(backend, frames_by_stream, n, warmup, options)
    firsts = [frames[0] for frames in frames_by_stream]  # one frame of each street, as a tick holds
    inference = {n: inference_speedup(backend, firsts, n, warmup=1, iterations=infer_iterations) for n in streams}
    runs: dict[int, dict[str, list]] = {n: {"batched": [], "sequential": []} for n in streams}
    for r in range(repeats):
        for j, n in enumerate(streams):
            sides = [("batched", batched_run), ("sequential", sequential_runs)]
            for side, run in sides if (r + j) % 2 == 0 else sides[::-1]:  # alternate who goes first
                runs[n][side].append(run(backend, frames_by_stream, n, frames, options))
            if on_repeat is not None:
                b, s = (runs[n][k][-1] for k in ("batched", "sequential"))
                on_repeat(n, r, (b["frames"] / b["wall_s"]) / (s["frames"] / s["wall_s"]))
    out = []
    for n in streams:
        batched, sequential = summarise(runs[n]["batched"], n), summarise(runs[n]["sequential"], n)
        ratio = [b / s if s > 0 else 0.0 for b, s in zip(batched["fps"], sequential["fps"], strict=True)]
        out.append(
            {
                "streams": n,
                "frames_per_stream": frames,
                "batched": batched,
                "sequential": sequential,
                "ratio": ratio,
                "ratio_spread": _spread(ratio),
                "inference": inference[n],
            }
        )
    return out


def _default_model(streams: int) -> Path:
    from deeplab_trt.benchmarks.demo_command import cache_root, demo_onnx_path

    return demo_onnx_path(cache_root(), progress=True, dynamic_batch=(1, streams, streams))


def main(argv: list[str] | None = None) -> int:
    from deeplab_trt.benchmarks import report as rep
    from deeplab_trt.benchmarks.environment import environment, machine_line
    from deeplab_trt.runtime.atomic import write_text_atomic
    from deeplab_trt.runtime.backends import open_backend

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, help="ONNX model or engine (default: the demo model, dynamic batch)")
    ap.add_argument("--backend", default="onnxruntime", help="onnxruntime (default), tensorrt, tensorrt-rtx, auto")
    ap.add_argument("--streams", type=int, nargs="+", default=[1, 2, 4, 8], metavar="N", help="default 1 2 4 8")
    ap.add_argument("--frames", type=int, default=48, metavar="F", help="frames per stream per run (default 48)")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved repeats (default 3)")
    ap.add_argument("--warmup", type=int, default=4, help="frames per stream of the untimed run per N (default 4)")
    ap.add_argument(
        "--infer-iterations", type=int, default=10, help="inference-only runs per batch (default 10; 0 skips)"
    )
    ap.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads (default: ONNX Runtime's)")
    ap.add_argument("--size", type=frame_size, metavar="HxW", help="frame size (default: the model's input)")
    ap.add_argument("--mode", default="overlay", help="overlay (default), mask or labels")
    ap.add_argument("--json", type=Path, metavar="OUT.json")
    ap.add_argument("--plot", type=Path, metavar="OUT.png")
    args = ap.parse_args(argv)
    if args.plot is not None:
        rep.pyplot(purpose="stream_throughput --plot")  # fail before the long run, not after it
    model = args.model or _default_model(max(args.streams))
    options = {"threads": args.threads} if args.threads else {}
    with open_backend(model, args.backend, **options) as backend:
        spec = backend.spec
        h, w = args.size or (spec.input_height, spec.input_width)
        frames = stream_frames(h, w, max(args.streams), min(args.frames, 16))
        started = dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat()
        entries = measure(
            backend,
            frames,
            args.streams,
            frames=args.frames,
            repeats=args.repeats,
            warmup=args.warmup,
            infer_iterations=args.infer_iterations,
            mode=args.mode,
            model=str(model),
            on_repeat=lambda n, r, ratio: print(f"  N={n} repeat {r + 1}: ratio {ratio:.3f}", file=sys.stderr),
        )
        backend_name = backend.name
    result: dict[str, Any] = {
        "schema": SCHEMA,
        "created": started,
        "environment": environment(),
        "config": {
            "model": str(model),
            "backend": backend_name,
            "threads": args.threads,
            "input_size": [spec.input_height, spec.input_width],
            "frame_size": [h, w],
            "mode": args.mode,
            "streams": list(args.streams),
            "frames_per_stream": args.frames,
            "repeats": args.repeats,
            "warmup": args.warmup,
            "command": "python -m deeplab_trt.benchmarks.stream_throughput "
            + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])),
        },
        "goal": GOAL,
        "results": entries,
    }
    result["met"] = all(e["ratio_spread"]["median"] >= GOAL for e in entries if e["streams"] > 1)
    print(f"command: {result['config']['command'].rstrip()}")
    print(f"machine: {machine_line()}")
    print(
        f"model:   {Path(model).name} ({spec.input_height}x{spec.input_width} input, {backend_name}, threads "
        f"{args.threads or 'default'}); frames {w}x{h}, {args.mode}; {args.frames} frames per stream, "
        f"{args.repeats} interleaved repeats"
    )
    print("\n".join(rep.stream_table([(str(e["streams"]), e) for e in entries], "N")))
    verdict = "met" if result["met"] else "NOT met"
    print(f"goal: batched / sequential aggregate FPS >= {GOAL:.1f} (median, N > 1): {verdict}")
    if args.json is not None:
        write_text_atomic(args.json, json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")
    if args.plot is not None:
        rep.write_stream_plot(result, args.plot)
        print(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
