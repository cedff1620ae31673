"""Pipeline overhead on the CPU backend: end-to-end latency / inference-only latency.

Why: the video loop (decode thread, preprocessing, upsample+argmax, overlay, sink) should
cost little next to the model itself; target: end-to-end <= 1.05 x inference at 512x1024
with a deeplabv3_mobilenet_v3_large on ONNX Runtime CPU. Measured with the ``bench``
command's own pieces (:mod:`benchmarks.bench`):

* inference-only: ``backend.infer`` on a preprocessed 1x3x512x1024 batch (wall clock);
* end-to-end: a synthetic 512x1024 street frame handed to ``runtime.pipeline.run_video``
  until its overlay reaches the sink, one frame in flight (lockstep);
* per-stage times: the loop's own :class:`runtime.pipeline.Stats` for the same frames.

The two are measured in alternating rounds on the same backend object, so a machine whose
load changes (shared CI runners, other jobs) slows both alike instead of biasing the ratio.

    python -m benchmarks.pipeline_overhead [--model demo|mobilenet|PATH.onnx] [--rounds 6]
        [--per-round 5] [--warmup 3]

``demo`` (default when its weights are installed): the trained demo model exported at
512x1024 with the ``lowres`` head, whose logits look like a real segmentation's (the cost of
the fused upsample+argmax depends on how many pixels sit on class boundaries).
``mobilenet``: the same architecture with random weights (21 classes): speed of the model
is the same, but its noisy logits put far more pixels on boundaries.
"""

from __future__ import annotations

import argparse
import datetime as dt
import shlex
import sys
from pathlib import Path

import numpy as np


def export_model(cache_dir: Path, which: str, head: str = "lowres") -> Path:
    from builder.export import export_onnx

    from benchmarks.bench import sha256_file
    from builder.models import DEMO_PATH

    tag = f"demo-{sha256_file(DEMO_PATH)[:12]}" if which == "demo" else which  # a retrained demo re-exports
    path = cache_dir / f"{tag}_{head}_512x1024.onnx"
    if not path.exists():
        if which == "demo":
            export_onnx(path, model="demo", weights="demo", height=512, width=1024, head=head, progress=True)
        else:
            export_onnx(path, model="deeplabv3_mobilenet_v3_large", weights="none", num_classes=21,
                        height=512, width=1024, head=head, progress=True)
    return path


def main(argv: list[str] | None = None) -> int:
    from benchmarks.bench import (ArraySource, LockstepSource, TimingSink, default_cache_dir, latency_stats,
                                  machine_line, measure_inference)
    from benchmarks.scenes import SceneGenerator
    from builder.models import DEMO_PATH
    from runtime.backends import open_backend
    from runtime.pipeline import RunOptions, run_video
    from runtime.preprocess import preprocess

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="demo | mobilenet | PATH.onnx (default: demo if installed)")
    ap.add_argument("--rounds", type=int, default=6, help="alternating rounds (default 6)")
    ap.add_argument("--per-round", type=int, default=5, help="inference runs and frames per round (default 5)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads (default: ORT's)")
    ap.add_argument("--cache-dir", type=Path, default=None)
    args = ap.parse_args(argv)
    cache_dir = args.cache_dir or default_cache_dir()
    which = args.model or ("demo" if DEMO_PATH.exists() else "mobilenet")
    model = Path(which) if which not in ("demo", "mobilenet") else export_model(cache_dir, which)

    backend = open_backend(model, "onnxruntime", **({"threads": args.threads} if args.threads else {}))
    spec = backend.spec
    gen = SceneGenerator(spec.input_height, spec.input_width, seed=10_000_000 + 4243)
    frames = [img for img, _ in gen.video_frames(16)]
    batch, _ = preprocess(frames[0], spec, dtype=backend.input_dtype)

    infer_ms: list[float] = []
    e2e_ms: list[float] = []
    stage_s: dict[str, float] = {}
    loop_frames = 0
    measure_inference(backend, batch, args.warmup, 0)
    for r in range(args.rounds + 1):  # round 0 warms the loop up and is not counted
        samples, _ = measure_inference(backend, batch, 0, args.per_round)
        n = args.warmup if r == 0 else args.per_round
        lock = LockstepSource(ArraySource(frames, n))
        sink = TimingSink(lock)
        try:
            stats = run_video(backend, lock, [sink], RunOptions(max_frames=n, progress=False))
        finally:
            lock.close()
        if r == 0:
            continue
        infer_ms += samples
        e2e_ms += [(b - a) * 1e3 for a, b in zip(lock.read_times, sink.write_times)]
        for k, v in stats.stage_s.items():
            stage_s[k] = stage_s.get(k, 0.0) + v
        loop_frames += stats.frames
    backend.close()

    infer, e2e = latency_stats(infer_ms), latency_stats(e2e_ms)
    stages = {k: 1e3 * v / max(loop_frames, 1) for k, v in stage_s.items()}
    ratio = e2e["mean"] / infer["mean"]

    args_text = " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    print(f"command: python -m benchmarks.pipeline_overhead {args_text}".rstrip())
    print(f"machine: {machine_line()}")
    print(f"date:    {dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat()}")
    print(f"model:   {model.name} ({spec.extra.get('arch', spec.name)}, {spec.head} head, {spec.num_classes} classes, "
          f"input {spec.input_height}x{spec.input_width}), {backend.name}; frames {frames[0].shape[1]}x"
          f"{frames[0].shape[0]}; {args.rounds} rounds x {args.per_round} (inference-only, then end-to-end)")
    print(f"inference only: mean {infer['mean']:.1f} ms  p50 {infer['p50']:.1f}  p90 {infer['p90']:.1f}  "
          f"std {infer['std']:.1f}  (n={len(infer_ms)})")
    print(f"end-to-end:     mean {e2e['mean']:.1f} ms  p50 {e2e['p50']:.1f}  p90 {e2e['p90']:.1f}  "
          f"std {e2e['std']:.1f}  (n={len(e2e_ms)})")
    print("inside the loop, ms/frame: " + "  ".join(f"{k} {v:.1f}" for k, v in stages.items() if k != "decode")
          + "  (decode is in-memory; its thread waits for the lockstep)")
    non_infer = sum(v for k, v in stages.items() if k not in ("infer", "decode"))
    print(f"where the overhead goes: preprocess {stages.get('preprocess', 0):.1f} ms + upsample/argmax/overlay "
          f"{stages.get('postprocess', 0):.1f} ms + sink {stages.get('encode', 0):.1f} ms = {non_infer:.1f} ms "
          f"per frame on the loop thread ({100 * non_infer / stages.get('infer', np.nan):.1f}% of the loop's "
          f"own inference time)")
    print(f"ratio end-to-end / inference (mean): {ratio:.3f}  (overhead {100 * (ratio - 1):+.1f}%; "
          f"p50 ratio {e2e['p50'] / infer['p50']:.3f})")
    print(f"target <= 1.05: {'met' if ratio <= 1.05 else 'NOT met'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
