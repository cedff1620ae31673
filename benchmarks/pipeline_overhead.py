"""Pipeline overhead on the CPU backend: how much the video loop slows a frame vs inference alone.

Why: the video loop (:func:`deeplab_trt.runtime.gpu_pipeline.run_streams` with its CPU stage,
``HostStage``: decode thread, preprocessing + inference on the stage thread, upsample+argmax +
overlay on the sink thread) should cost little next to the model itself. On a shared machine one
neighbour's burst moves inference time by tens of percent, more than the overhead being measured,
so every end-to-end sample is measured *next to* inference-alone samples and the verdict is the
median of the per-pair ratios, with its spread:

* **latency (lockstep pairs)**: one run of the loop with one frame in flight. Before each frame is
  handed out, while the loop is idle, ``backend.infer`` runs alone on that very frame (preprocessed
  outside the timing); then the frame goes through the loop (end-to-end = sink time - read time:
  decode hand-off + preprocess + infer + upsample/argmax + overlay + sink). Pair k's ratio is its
  end-to-end time over the mean of the inference-alone times just before and just after it;
* **throughput (pipelined rounds)**: blocks of back-to-back inference-alone runs alternate with
  free-running loop runs of as many frames; round r's ratio is its steady-state period ((last
  sink write - first sink write) / (frames - 1)) over the mean inference time of the blocks before
  and after it;
* **CPU time** (diagnostic): process CPU seconds per lockstep frame vs per inference-alone run (all
  threads; less sensitive to neighbours than wall time, since waiting for a core costs none);
* **per-stage times**: the loop's own :class:`deeplab_trt.runtime.pipeline.Stats` for the lockstep frames.

Target (issues 7 and 10), at 512x1024 with deeplabv3_mobilenet_v3_large (lowres head) on ONNX Runtime
CPU: **median lockstep end-to-end / inference-alone ratio <= 1.05** (the strict form: nothing overlaps
inference with one frame in flight). The ratio of means (issue 7's first form) and the pipelined
ratio are printed beside it.

    python -m deeplab_trt.benchmarks.pipeline_overhead [--model mobilenet|demo|PATH.onnx] [--pairs 24]
        [--runs 1] [--rounds 6] [--per-round 5] [--warmup 3] [--threads N] [--ort-spinning]

``mobilenet`` (default, the issue's model): deeplabv3_mobilenet_v3_large with random weights
(21 classes); its noisy logits put many pixels on class boundaries, the expensive case for
the fused upsample+argmax. ``demo``: the trained demo model exported at 512x1024 with the
``lowres`` head, whose logits look like a real segmentation's. ``--ort-spinning`` measures
ONNX Runtime's own default (worker threads spin after each run), which ``OrtBackend``
turns off.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

#: the goal for the median lockstep ratio (end-to-end / inference alone)
TARGET = 1.05


def export_model(cache_dir: Path, which: str, head: str = "lowres") -> Path:
    from deeplab_trt.builder.export import export_onnx
    from deeplab_trt.builder.models import DEMO_PATH
    from deeplab_trt.runtime.engine_record import sha256_file

    tag = f"demo-{sha256_file(DEMO_PATH)[:12]}" if which == "demo" else which  # a retrained demo re-exports
    path = cache_dir / f"{tag}_{head}_512x1024.onnx"
    if not path.exists():
        if which == "demo":
            export_onnx(path, model="demo", weights="demo", height=512, width=1024, head=head, progress=True)
        else:
            export_onnx(
                path,
                model="deeplabv3_mobilenet_v3_large",
                weights="none",
                num_classes=21,
                height=512,
                width=1024,
                head=head,
                progress=True,
            )
    return path


def spread(values: list[float]) -> dict[str, float]:
    """median, quartiles, min and max of ``values`` (the summary every ratio here is given with)."""
    a = np.asarray(values, np.float64)
    q1, median, q3 = np.percentile(a, [25, 50, 75])
    return {"median": float(median), "q1": float(q1), "q3": float(q3), "min": float(a.min()), "max": float(a.max())}


class InferenceProbe:
    """Times ``backend.infer`` alone on the next of ``frames`` (cycled), preprocessed outside the timing.

    Why a callable: :class:`~deeplab_trt.benchmarks.bench.LockstepSource` calls it before handing out
    each frame, while the loop is idle, so every end-to-end sample has inference-alone samples of the
    same frame right beside it.
    """

    def __init__(self, backend, frames: list[np.ndarray]):
        from deeplab_trt.runtime.preprocess import preprocess

        self.backend, self.frames = backend, frames
        spec, dtype = backend.spec, backend.input_dtype
        self.batches = [preprocess(frame, spec, dtype=dtype)[0] for frame in frames]
        self.ms: list[float] = []
        self.cpu_ms: list[float] = []

    def __call__(self) -> None:
        batch = self.batches[len(self.ms) % len(self.batches)]
        c0, t0 = time.process_time(), time.perf_counter()
        self.backend.infer(batch)
        t1, c1 = time.perf_counter(), time.process_time()
        self.ms.append((t1 - t0) * 1e3)
        self.cpu_ms.append((c1 - c0) * 1e3)


@dataclass
class Lockstep:
    """Per frame: inference alone before it (``infer_ms[k]``) and after it (``infer_ms[k + 1]``), and its end-to-end time."""

    infer_ms: list[float]
    e2e_ms: list[float]
    infer_cpu_ms: list[float]
    e2e_cpu_ms: list[float]
    stage_ms: dict[str, float] = field(default_factory=dict)  # the loop's own per-frame stage times
    run_pairs: list[int] = field(default_factory=list)  # pairs of each pooled run (empty: one run)

    @property
    def ratios(self) -> list[float]:
        """Per pair: end-to-end over the mean of the inference-alone times before and after it (within its run)."""
        out: list[float] = []
        start = 0
        for run, n in enumerate(self.run_pairs or [len(self.e2e_ms)]):
            infer = self.infer_ms[start + run : start + run + n + 1]  # a run has one more probe than pairs
            out += [e / ((a + b) / 2) for e, a, b in zip(self.e2e_ms[start : start + n], infer, infer[1:])]
            start += n
        return out

    @property
    def run_medians(self) -> list[float]:
        """The median pair ratio of each pooled run (the run-to-run drift of a shared machine shows here)."""
        ratios, out, start = self.ratios, [], 0
        for n in self.run_pairs or [len(self.e2e_ms)]:
            out.append(float(np.median(ratios[start : start + n])))
            start += n
        return out

    @classmethod
    def pooled(cls, runs: list[Lockstep]) -> Lockstep:
        """Several lockstep runs as one sample set: pairs stay within their run; stage times weighted by pairs."""
        weights = [len(r.e2e_ms) for r in runs]
        stages = {k: float(np.average([r.stage_ms[k] for r in runs], weights=weights)) for k in runs[0].stage_ms}
        return cls(
            [v for r in runs for v in r.infer_ms],
            [v for r in runs for v in r.e2e_ms],
            [v for r in runs for v in r.infer_cpu_ms],
            [v for r in runs for v in r.e2e_cpu_ms],
            stages,
            weights,
        )


def lockstep_pairs(backend, frames: list[np.ndarray], pairs: int, warmup: int) -> Lockstep:
    """One lockstep run of the video loop over ``warmup + pairs`` frames, an inference-alone sample around each.

    Args:
        backend: the opened model (a CPU backend: the loop's stage is ``HostStage``).
        frames: the frames, cycled; inference alone runs on the same frame the loop gets next.
        pairs: frames counted.
        warmup: frames (and their pairs) run first and dropped.
    """
    from deeplab_trt.benchmarks.bench import ArraySource, LockstepSource, TimingSink
    from deeplab_trt.runtime.pipeline import RunOptions, run_video

    n = warmup + pairs
    probe = InferenceProbe(backend, frames)
    lock = LockstepSource(ArraySource(frames, n), between=probe)  # its n+1-th read ends the run after a last probe
    sink = TimingSink(lock)
    try:
        stats = run_video(backend, lock, [sink], RunOptions(progress=False))
    finally:
        lock.close()
    if len(sink.write_times) != n or len(probe.ms) != n + 1:
        raise RuntimeError(f"lockstep run: {len(sink.write_times)} frames, {len(probe.ms)} probes (expected {n})")
    e2e = [(b - a) * 1e3 for a, b in zip(lock.read_times, sink.write_times)]
    e2e_cpu = [(b - a) * 1e3 for a, b in zip(lock.read_cpu, sink.write_cpu)]
    stage = {k: v for k, v in stats.ms_per_frame().items() if k != "decode"}
    return Lockstep(probe.ms[warmup:], e2e[warmup:], probe.cpu_ms[warmup:], e2e_cpu[warmup:], stage)


def pipelined_rounds(backend, frames: list[np.ndarray], rounds: int, per_round: int) -> list[tuple[float, float]]:
    """``(period_ms, inference_ms)`` per round: a free-running loop run between two inference-alone blocks.

    Args:
        backend: the opened model.
        frames: the frames, cycled.
        rounds: rounds counted (one more, first, warms the loop up and is dropped).
        per_round: frames per loop run and inference runs per block (at least 2).
    """
    from deeplab_trt.benchmarks.bench import ArraySource, TimingSink
    from deeplab_trt.runtime.pipeline import RunOptions, run_video

    per_round = max(2, per_round)
    probe = InferenceProbe(backend, frames)

    def block() -> float:
        start = len(probe.ms)
        for _ in range(per_round):
            probe()
        return float(np.mean(probe.ms[start:]))

    before, out = block(), []
    for r in range(rounds + 1):
        sink = TimingSink()
        run_video(backend, ArraySource(frames, per_round), [sink], RunOptions(progress=False))
        period = (sink.write_times[-1] - sink.write_times[0]) * 1e3 / (per_round - 1)
        after = block()
        if r > 0:
            out.append((period, (before + after) / 2))
        before = after
    return out


def _line(name: str, s: dict[str, float], unit: str = "", digits: int = 3) -> str:
    f = f"{{:.{digits}f}}{unit}"
    return (
        f"{name}: median {f.format(s['median'])}  IQR {f.format(s['q1'])}..{f.format(s['q3'])}  "
        f"min..max {f.format(s['min'])}..{f.format(s['max'])}"
    )


def report(lock: Lockstep, rounds: list[tuple[float, float]]) -> tuple[list[str], bool]:
    """The result lines and whether the target is met (median lockstep ratio <= :data:`TARGET`)."""
    ratios = spread(lock.ratios)
    infer = spread(lock.infer_ms)
    e2e = spread(lock.e2e_ms)
    mean_ratio = float(np.mean(lock.e2e_ms) / np.mean(lock.infer_ms))
    cpu_ratio = float(np.mean(lock.e2e_cpu_ms) / np.mean(lock.infer_cpu_ms))
    pipelined = spread([p / i for p, i in rounds])
    stages = lock.stage_ms
    extra = {k: v for k, v in stages.items() if k != "infer"}
    met = ratios["median"] <= TARGET
    runs = lock.run_medians
    per_run = (
        [
            f"median lockstep ratio of each of {len(runs)} runs: {' '.join(f'{r:.3f}' for r in runs)} "
            f"({sum(r <= TARGET for r in runs)} of {len(runs)} <= {TARGET}); the verdict pools their pairs"
        ]
        if len(runs) > 1
        else []
    )
    lines = [
        _line(f"inference alone, ms (n={len(lock.infer_ms)})", infer, digits=1),
        _line(f"end-to-end lockstep, ms (n={len(lock.e2e_ms)}, one frame in flight)", e2e, digits=1),
        "lockstep loop, ms/frame: "
        + "  ".join(f"{k} {v:.1f}" for k, v in stages.items())
        + f"  (outside inference: {sum(extra.values()):.1f})",
        f"CPU time per frame (all threads): loop {np.mean(lock.e2e_cpu_ms):.1f} ms, inference alone "
        f"{np.mean(lock.infer_cpu_ms):.1f} ms: ratio {cpu_ratio:.3f}",
        _line(f"latency ratio, lockstep end-to-end / inference alone, per pair (n={len(lock.ratios)})", ratios)
        + f"  (ratio of means {mean_ratio:.3f})",
        _line(f"throughput ratio, pipelined period / inference alone, per round (n={len(rounds)})", pipelined)
        + f"  ({1e3 / np.mean([p for p, _ in rounds]):.2f} FPS free-running)",
        *per_run,
        f"target: median lockstep ratio <= {TARGET}: {'met' if met else 'NOT met'} "
        f"(overhead {100 * (ratios['median'] - 1):+.1f}%); pipelined median: "
        f"{'met' if pipelined['median'] <= TARGET else 'NOT met'}",
    ]
    return lines, met


def main(argv: list[str] | None = None) -> int:
    from deeplab_trt.benchmarks.bench import default_cache_dir
    from deeplab_trt.benchmarks.environment import machine_line
    from deeplab_trt.benchmarks.scenes import SceneGenerator
    from deeplab_trt.builder.models import DEMO_PATH
    from deeplab_trt.runtime.backends import open_backend

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="mobilenet", help="mobilenet | demo | PATH.onnx (default: mobilenet)")
    ap.add_argument("--pairs", type=int, default=24, help="lockstep frames, each with inference alone beside it")
    ap.add_argument(
        "--runs",
        type=int,
        default=1,
        help="lockstep runs of --pairs each, pooled (a shared machine drifts between runs by as much as the "
        "overhead; each run's median is printed)",
    )
    ap.add_argument("--rounds", type=int, default=6, help="pipelined rounds (default 6)")
    ap.add_argument("--per-round", type=int, default=5, help="frames and inference runs per round (default 5)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads (default: ORT's)")
    ap.add_argument(
        "--ort-spinning",
        action="store_true",
        help="let ONNX Runtime's worker threads spin between runs (ORT's default; off in OrtBackend)",
    )
    ap.add_argument("--cache-dir", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.pairs < 1 or args.rounds < 1 or args.runs < 1:
        raise SystemExit("pipeline_overhead: --pairs, --runs and --rounds must be at least 1")
    cache_dir = args.cache_dir or default_cache_dir()
    which = args.model
    if which == "demo" and not DEMO_PATH.exists():
        raise SystemExit(f"pipeline_overhead: {DEMO_PATH} is not installed; use --model mobilenet")
    model = Path(which) if which not in ("demo", "mobilenet") else export_model(cache_dir, which)

    options = {"threads": args.threads} if args.threads else {}
    if args.ort_spinning:
        options["spinning"] = True
    load_before = os.getloadavg()[0]
    with open_backend(model, "onnxruntime", **options) as backend:
        spec = backend.spec
        gen = SceneGenerator(spec.input_height, spec.input_width, seed=10_000_000 + 4243)
        frames = [img for img, _ in gen.video_frames(16)]
        InferenceProbe(backend, frames[:1])()  # ORT's first run allocates; not part of any sample
        lock = Lockstep.pooled([lockstep_pairs(backend, frames, args.pairs, args.warmup) for _ in range(args.runs)])
        rounds = pipelined_rounds(backend, frames, args.rounds, args.per_round)
        name, spinning = backend.name, getattr(backend, "spinning", True)
    lines, _ = report(lock, rounds)

    args_text = " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    print(f"command: python -m deeplab_trt.benchmarks.pipeline_overhead {args_text}".rstrip())
    print(f"machine: {machine_line()}; load average {load_before:.2f} -> {os.getloadavg()[0]:.2f} (1 min)")
    print(f"date:    {dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat()}")
    print(
        f"model:   {model.name} ({spec.extra.get('arch', spec.name)}, {spec.head} head, {spec.num_classes} classes, "
        f"input {spec.input_height}x{spec.input_width}), {name}, ORT spinning "
        f"{'on' if spinning else 'off'}; frames {frames[0].shape[1]}x{frames[0].shape[0]}; "
        f"{args.runs} x {args.pairs} lockstep pairs, {args.rounds} pipelined rounds x {args.per_round}"
    )
    for line in lines:
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
