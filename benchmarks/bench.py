"""Latency and fidelity of one ONNX model per precision: the engine behind ``deeplab-trt bench``.

Why a separate engine from the command: the README's numbers, the tests and the scripts in
``benchmarks/`` all call :func:`run_bench` with a :class:`BenchConfig`, so there is one way
a number is measured. The frames it measures with come from :mod:`deeplab_trt.benchmarks.bench_data`, the
machine facts in its report from :mod:`deeplab_trt.benchmarks.environment`.

Per precision (fp32, fp16, int8) it

1. **prepares** the model, built once and reused from ``cache_dir`` (key: sha256 of the ONNX
   plus every option that changes the result): for ONNX Runtime the FP32 graph itself, the
   FP16 graph (``deeplab_trt.builder.fp16``) and the Q/DQ INT8 graph (``deeplab_trt.calibration.quantize``); for
   TensorRT / TensorRT-RTX an engine built from those (``deeplab_trt.builder.engine``);
2. measures **inference latency**: on a GPU, CUDA events around the engine's enqueue with
   the input already on the device; on the CPU, wall clock around ``backend.infer(batch)``;
   ``warmup`` runs first, then ``iterations``;
3. measures **end-to-end latency** (host frame in → host overlay out) by running the real
   video loop (``deeplab_trt.runtime.pipeline`` / ``deeplab_trt.runtime.gpu_pipeline``, as ``deeplab-trt run`` picks)
   with one frame in flight into a timing null sink, then pipelined **throughput** (FPS) and
   per-stage times with the loop free-running over ``e2e_frames`` frames;
4. tracks **peak memory** while it runs (process RSS; device memory in use on a GPU);
5. measures **fidelity** on frames disjoint from the calibration frames: pixel agreement and
   mIoU of the label maps against fp32's (same backend, same frames), and mIoU against
   ground truth where it exists.

Data rule (one rule, tested): ``--data`` is needed for int8 (calibration needs real frames
and guessing them is how silent accuracy loss ships). Its frames are split alternately
(item 0, 2, 4 … calibrate; 1, 3, 5 … are the fidelity frames), so the two sets never share
a frame. Without ``--data`` (fp32/fp16 only) the fidelity frames are synthetic street
scenes from held-out seeds (:mod:`deeplab_trt.benchmarks.scenes`), whose labels give mIoU against ground
truth when the model predicts the scene classes (the demo model).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import gc
import hashlib
import json
import logging
import os
import shlex
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from deeplab_trt.benchmarks.bench_data import (
    FIDELITY_SEED,
    Frame,
    read_data_frames,
    split_data,
    synthetic_frames,
    write_calibration_frames,
)
from deeplab_trt.benchmarks.environment import cuda_device_reason, environment, gpu_info
from deeplab_trt.runtime.engine_record import sha256_file
from deeplab_trt.runtime.errors import ToolkitError
from deeplab_trt.runtime.spec import ModelSpec, spec_from_onnx
from deeplab_trt.runtime.video import Sink, Source

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16", "int8")
BACKENDS = ("auto", "tensorrt", "tensorrt-rtx", "onnxruntime")
#: Bumped whenever a change in how models are prepared would make old cache entries wrong.
CACHE_VERSION = 1


# ----------------------------------------------------------------------------- options
@dataclass
class BenchConfig:
    """Everything that decides what ``bench`` measures (recorded in the report's ``config``)."""

    model: Path
    precisions: list[str] = field(default_factory=lambda: ["fp32", "fp16", "int8"])
    backend: str = "auto"
    data: list[str] = field(default_factory=list)
    iterations: int = 50
    warmup: int = 5
    batch: int = 1
    streams: int | None = None  # N streams batched vs N sequential runs (stream_throughput.measure)
    stream_repeats: int = 3
    video: Path | None = None
    e2e_frames: int | None = None  # default: ``iterations``
    calibration_frames: int = 64
    fidelity_frames: int = 16
    calibration_method: str = "entropy"
    cache_dir: Path | None = None
    progress: bool = True
    command: str = ""


def parse_precisions(text: str | Iterable[str]) -> list[str]:
    """``"fp32,fp16,int8"`` → list, order kept, duplicates dropped; unknown → one-line error."""
    items = text.split(",") if isinstance(text, str) else list(text)
    out: list[str] = []
    for item in (i.strip().lower() for i in items):
        if not item:
            continue
        if item not in PRECISIONS:
            raise ToolkitError(f"--precisions: unknown precision {item!r} (expected some of {', '.join(PRECISIONS)})")
        if item not in out:
            out.append(item)
    if not out:
        raise ToolkitError(f"--precisions: empty (expected some of {', '.join(PRECISIONS)})")
    return out


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "deeplab-trt" / "bench"


def validate(cfg: BenchConfig) -> None:
    """Every check that can fail before anything is built or written (one-line errors)."""
    model = Path(cfg.model)
    if not model.exists():
        raise ToolkitError(f"{model}: no such file")
    if model.is_dir():
        raise ToolkitError(f"{model}: is a directory, expected an ONNX file")
    cfg.precisions = parse_precisions(cfg.precisions)
    if cfg.backend not in BACKENDS:
        raise ToolkitError(f"--backend {cfg.backend}: expected one of {', '.join(BACKENDS)}")
    for name in ("iterations", "batch", "calibration_frames", "fidelity_frames", "stream_repeats"):
        if int(getattr(cfg, name)) < 1:
            raise ToolkitError(f"--{name.replace('_', '-')} {getattr(cfg, name)}: must be at least 1")
    if cfg.streams is not None and cfg.streams < 1:
        raise ToolkitError(f"--streams {cfg.streams}: must be at least 1")
    if cfg.warmup < 0:
        raise ToolkitError(f"--warmup {cfg.warmup}: must be 0 or more")
    if cfg.e2e_frames is not None and cfg.e2e_frames < 0:
        raise ToolkitError(f"--e2e-frames {cfg.e2e_frames}: must be 0 or more")
    if "int8" in cfg.precisions and not cfg.data:
        raise ToolkitError(
            f"{model}: int8 needs calibration data: pass --data PATH... (image folders, "
            "images, videos or globs; e.g. frames written by 'deeplab-trt scenes')"
        )
    if cfg.video is not None:
        from deeplab_trt.runtime.video import open_source

        if not Path(cfg.video).is_file():
            raise ToolkitError(f"{cfg.video}: no such video file (--video)")
        open_source(str(cfg.video)).close()  # one-line error if it decodes nothing


# ----------------------------------------------------------------------------- backend choice
def resolve_backend(requested: str) -> tuple[str, str | None]:
    """(``onnxruntime`` | ``tensorrt``, TensorRT flavour or None) for ``--backend``.

    ``auto`` → TensorRT when a GPU and a TensorRT flavour are present, else ONNX Runtime. An
    explicit TensorRT backend that cannot run here is a one-line error: TensorRT-RTX in
    particular *builds* engines on a CPU-only machine but needs an RTX GPU to run them.
    """
    from deeplab_trt.runtime import tensorrt_flavour as tf

    if requested not in BACKENDS:
        raise ToolkitError(f"--backend {requested}: expected one of {', '.join(BACKENDS)}")
    if requested == "onnxruntime":
        return "onnxruntime", None
    no_gpu = cuda_device_reason()
    if requested == "auto":
        if no_gpu is not None:
            return "onnxruntime", None
        try:
            return "tensorrt", tf.detect("auto").name
        except ToolkitError:
            return "onnxruntime", None
    try:
        flavour = tf.detect(requested).name
    except ToolkitError as exc:  # the flavour module speaks of --flavour; here the option is --backend
        raise ToolkitError(str(exc).replace(f"--flavour {requested}", f"--backend {requested}", 1)) from exc
    if no_gpu is not None:
        if requested == "tensorrt-rtx":
            raise ToolkitError(
                f"--backend tensorrt-rtx: {no_gpu}: TensorRT-RTX engines build on this machine "
                "('deeplab-trt build --flavour tensorrt-rtx') but need an RTX GPU to run; "
                "bench here with --backend onnxruntime"
            )
        raise ToolkitError(
            f"--backend tensorrt: {no_gpu}: TensorRT engines need a CUDA GPU to run; "
            "bench here with --backend onnxruntime"
        )
    return "tensorrt", flavour


# ----------------------------------------------------------------------------- statistics
def latency_stats(samples_ms: Iterable[float]) -> dict[str, float] | None:
    """mean, std, min, p50, p90, p99, max of a list of milliseconds (None when empty)."""
    a = np.asarray(list(samples_ms), dtype=np.float64)
    if a.size == 0:
        return None
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    return {
        "mean": float(a.mean()),
        "std": float(a.std()),
        "min": float(a.min()),
        "p50": float(p50),
        "p90": float(p90),
        "p99": float(p99),
        "max": float(a.max()),
    }


def _rss_bytes() -> int:
    with contextlib.suppress(OSError, ValueError, IndexError):
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _gpu_used_bytes() -> int | None:
    with contextlib.suppress(Exception):
        from cuda.bindings import runtime as cudart

        err, free, total = cudart.cudaMemGetInfo()
        if int(err) == 0:
            return int(total - free)
    return None


class PeakMemory:
    """Samples process RSS (and device memory in use, when ``gpu``) in a thread; keeps the peak.

    Why sampling: ``ru_maxrss`` is the whole process's lifetime peak, which cannot tell the
    fp16 run from the fp32 one that came before it.
    """

    def __init__(self, gpu: bool = False, interval_s: float = 0.005):
        self.gpu, self.interval_s = gpu, interval_s
        self.peak_rss = _rss_bytes()
        self.peak_gpu: int | None = _gpu_used_bytes() if gpu else None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="peak-memory")

    def _sample(self) -> None:
        self.peak_rss = max(self.peak_rss, _rss_bytes())
        if self.gpu:
            used = _gpu_used_bytes()
            if used is not None:
                self.peak_gpu = max(self.peak_gpu or 0, used)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    @property
    def rss_mb(self) -> float:
        return self.peak_rss / 2**20

    @property
    def gpu_mb(self) -> float | None:
        return None if self.peak_gpu is None else self.peak_gpu / 2**20


# ----------------------------------------------------------------------------- fidelity ground truth
def _gt_usable(spec: ModelSpec, frames: list[Frame], synthetic: bool) -> tuple[bool, str]:
    """(use ground truth?, why not): every fidelity frame needs labels, and the labels' classes
    must be the model's (synthetic scenes: the scene classes; data: its classes.json if any)."""
    if not frames or any(f.labels is None for f in frames):
        return False, "fidelity frames without labels (--data layout: DIR/images/NAME + DIR/labels/NAME.png)"
    if synthetic:
        from deeplab_trt.benchmarks.scenes import CLASSES

        names = list(CLASSES)
    else:
        names = next((f.classes for f in frames if f.classes), None)
    if names is not None and [c.lower() for c in names] != [c.lower() for c in spec.classes]:
        return False, f"label classes {names} are not the model's {list(spec.classes)}"
    return True, ""


# ----------------------------------------------------------------------------- preparation
@dataclass
class Prepared:
    precision: str
    path: Path
    cached: bool
    seconds: float


def _key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _cached(final: Path, make: Callable[[Path], Any]) -> tuple[Path, bool, float]:
    """Reuse ``final`` if present, else ``make(final)`` (the maker writes atomically)."""
    if final.exists():
        return final, True, 0.0
    final.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    make(final)
    if not final.exists():
        raise ToolkitError(f"{final}: preparation finished without writing the model")
    return final, False, time.perf_counter() - t0


def _fp16_onnx(src: Path, dst: Path) -> None:
    """The builder's FP16 pass. Its agreement gate is off here: bench *measures* fidelity and
    reports it, so an FP16 graph that would fail ``build`` still gets its numbers."""
    from deeplab_trt.builder.fp16 import convert_fp16

    convert_fp16(src, dst, min_agreement=0.0)


def _int8_onnx(src: Path, dst: Path, calib_dir: Path, method: str, progress: bool, rest: str = "fp32") -> None:
    from deeplab_trt.calibration.quantize import quantize_onnx

    quantize_onnx(src, data=[str(calib_dir)], output=dst, num=None, method=method, rest=rest, progress=progress)


def layer_counts(graph: Path, backend: str, flavour: str | None) -> dict[str, Any]:
    """INT8/FP16/FP32 compute layers of the graph a precision runs: the parsed TensorRT network's
    types where TensorRT is the backend, else the ONNX graph's tensor types."""
    from deeplab_trt.calibration.layer_census import onnx_census

    if backend == "tensorrt":
        from deeplab_trt.builder.census import parsed_census
        from deeplab_trt.runtime.tensorrt_flavour import detect

        census = parsed_census(detect(flavour).module, graph)
    else:
        census = onnx_census(graph)
    return {**census.counts(), "source": census.source}


def _engine(
    src_onnx: Path, dst: Path, precision: str, flavour: str, batch: tuple[int, int, int] | None, progress: bool
) -> None:
    """An engine from the builder, which alone decides how ``precision`` is realised on ``flavour``
    (BuilderFlag on TensorRT 10, FP16 pass / Q/DQ graph on strongly typed flavours)."""
    from deeplab_trt.builder.engine import BuildOptions, build_engine

    build_engine(
        src_onnx, dst, BuildOptions(precision=precision, flavour=flavour, profile_batch=batch, progress=progress)
    )


class Preparer:
    """Builds or reuses the model for each precision, keyed by ONNX sha256 + options."""

    def __init__(
        self, cfg: BenchConfig, backend: str, flavour: str | None, onnx_sha: str, calib: tuple[Path, str] | None
    ):
        self.cfg, self.backend, self.flavour, self.onnx_sha, self.calib = cfg, backend, flavour, onnx_sha, calib
        self.root = Path(cfg.cache_dir or default_cache_dir())
        self.stem = Path(cfg.model).stem

    def graph(self, precision: str) -> Prepared:
        """The ONNX graph for ``precision`` (fp32 = the input file itself)."""
        src = Path(self.cfg.model)
        if precision == "fp32":
            return Prepared("fp32", src, True, 0.0)
        if precision == "fp16":
            key = _key(CACHE_VERSION, self.onnx_sha, "fp16")
            path, cached, secs = _cached(self.root / f"{self.stem}.fp16.{key}.onnx", lambda d: _fp16_onnx(src, d))
            return Prepared("fp16", path, cached, secs)
        assert self.calib is not None
        calib_dir, digest = self.calib
        from deeplab_trt.calibration.quantize import rest_for

        rest = rest_for("auto", self.flavour if self.backend == "tensorrt" else "auto")
        key = _key(CACHE_VERSION, self.onnx_sha, "int8", digest, self.cfg.calibration_method, rest)
        path, cached, secs = _cached(
            self.root / f"{self.stem}.int8.{key}.onnx",
            lambda d: _int8_onnx(src, d, calib_dir, self.cfg.calibration_method, self.cfg.progress, rest),
        )
        return Prepared("int8", path, cached, secs)

    def prepare(self, precision: str) -> Prepared:
        """ONNX Runtime: the graph. TensorRT: an engine built from the FP32 graph (fp32, fp16)
        or from the cached Q/DQ graph (int8), so ORT and TensorRT int8 share their scales."""
        if self.backend == "onnxruntime":
            return self.graph(precision)
        g = self.graph("int8") if precision == "int8" else self.graph("fp32")
        from deeplab_trt.runtime.tensorrt_flavour import detect

        label = detect(self.flavour).label
        dyn = spec_from_onnx(self.cfg.model).extra.get("dynamic_batch")
        most = max(int(dyn[0]), self.cfg.batch, self.cfg.streams or 1) if dyn else 0
        batch = (int(dyn[0]), most, most) if dyn else None
        key = _key(CACHE_VERSION, sha256_file(g.path), precision, label, batch, gpu_info().get("gpu"))
        path, cached, secs = _cached(
            self.root / f"{self.stem}.{precision}.{key}.engine",
            lambda d: _engine(g.path, d, precision, self.flavour, batch, self.cfg.progress),
        )
        return Prepared(precision, path, cached and g.cached, secs + g.seconds)


# ----------------------------------------------------------------------------- measurement
def _open(path: Path, backend: str, batch: int = 1):
    from deeplab_trt.runtime.backends.base import open_backend

    return open_backend(path, backend, **({"batch": batch} if backend == "tensorrt" else {}))


def _close(backend) -> None:
    close = getattr(backend, "close", None)
    if callable(close):
        close()


def _input_batch(frames: list[Frame], spec: ModelSpec, batch: int, dtype) -> np.ndarray:
    from deeplab_trt.runtime.preprocess import preprocess_batch

    picks = [frames[i % len(frames)].image for i in range(batch)]
    arr, _ = preprocess_batch(picks, spec, dtype=dtype)
    return arr


def _check_batch(spec: ModelSpec, batch: int, model: Path) -> None:
    dyn = spec.extra.get("dynamic_batch")
    if dyn:
        lo, _, hi = dyn
        if not lo <= batch <= hi:
            raise ToolkitError(f"{model}: --batch {batch} is outside the exported batch range {lo}..{hi}")
        return
    fixed = int(spec.extra.get("batch", 1))
    if batch != fixed:
        raise ToolkitError(
            f"{model}: the model's batch is fixed at {fixed}; export with --dynamic-batch "
            f"MIN:OPT:MAX to bench --batch {batch}"
        )


def _device_timer(backend):
    """For a TensorRT backend: a function timing one ``enqueue`` on its stream with CUDA events
    (input already on the device: inference only, no host copies). None for host backends."""
    runner, stream = getattr(backend, "runner", None), getattr(backend, "stream", None)
    if runner is None or stream is None or not hasattr(runner, "enqueue"):
        return None
    from deeplab_trt.runtime.cuda import api

    start, end = api.Event(), api.Event()

    def timed() -> float:
        start.record(stream)
        runner.enqueue(stream)
        end.record(stream)
        end.synchronize()
        return start.elapsed_ms(end)

    return timed


def measure_inference(
    backend, batch: np.ndarray, warmup: int, iterations: int, progress: bool = False, label: str = ""
) -> tuple[list[float], str]:
    """Latency samples (ms) of one inference of ``batch``: CUDA events around the engine's
    enqueue on a GPU backend, wall clock around ``backend.infer`` otherwise."""
    from tqdm import tqdm

    backend.infer(batch)  # sets the batch shape and, on a GPU, puts the input on the device
    timer = _device_timer(backend)
    run = timer if timer is not None else (lambda: _wall_ms(backend.infer, batch))
    for _ in range(warmup):
        run()
    samples = [
        run()
        for _ in tqdm(
            range(iterations), desc=f"{label} infer", unit="it", disable=not progress, file=sys.stderr, leave=False
        )
    ]
    return samples, ("cuda-events" if timer is not None else "wall-clock")


def _wall_ms(fn, *args) -> float:
    t0 = time.perf_counter()
    fn(*args)
    return (time.perf_counter() - t0) * 1e3


class ArraySource(Source):
    """In-memory frames with the :class:`deeplab_trt.runtime.video.VideoSource` surface (cycled to ``count``).

    Why: the synthetic street video is generated once and then fed at memory speed, so the
    pipeline, not a decoder, is what is measured.
    """

    kind, is_live = "memory", False

    def __init__(self, frames: list[np.ndarray], count: int, fps: float = 25.0, description: str = "synthetic"):
        if not frames:
            raise ToolkitError("no frames for the end-to-end run")
        self.frames, self.count, self.fps = frames, count, fps
        self.size = (frames[0].shape[1], frames[0].shape[0])
        self.frame_count = count
        self.description = f"{description} ({len(frames)} distinct frames, {self.size[0]}x{self.size[1]})"
        self._i = 0

    def read(self) -> np.ndarray | None:
        if self._i >= self.count:
            return None
        frame = self.frames[self._i % len(self.frames)]
        self._i += 1
        return frame

    def close(self) -> None:
        pass


class LockstepSource(Source):
    """Hands out the next frame only after the previous overlay reached the sink.

    Why: with one frame in flight, ``sink time - read time`` is the end-to-end latency of a
    frame (host frame in -> host overlay out) with no queueing behind earlier frames; the
    free-running run that follows gives the pipelined throughput instead.
    """

    def __init__(self, inner, timeout_s: float = 600.0, between: Callable[[], None] | None = None):
        self.inner, self.timeout_s, self.between = inner, timeout_s, between
        for name in ("description", "size", "fps", "frame_count", "kind", "is_live"):
            setattr(self, name, getattr(inner, name, None))
        self.is_live = False
        self.read_times: list[float] = []
        self.read_cpu: list[float] = []  # process CPU seconds at each read (all threads)
        self._released = threading.Event()
        self._released.set()

    def read(self) -> np.ndarray | None:
        """The next frame once the previous one reached the sink; ``between`` runs first, while the loop is idle."""
        if not self._released.wait(self.timeout_s):
            return None
        self._released.clear()
        if self.between is not None:
            self.between()
        frame = self.inner.read()
        if frame is not None:
            self.read_times.append(time.perf_counter())
            self.read_cpu.append(time.process_time())
        return frame

    def close(self) -> None:
        self._released.set()
        self.inner.close()


class TimingSink(Sink):
    """A null sink that records when each overlay arrives (and releases a lockstep source)."""

    description = "none (timed)"
    wants_stop = False

    def __init__(self, source: LockstepSource | None = None):
        self.source = source
        self.write_times: list[float] = []
        self.write_cpu: list[float] = []  # process CPU seconds at each write
        self.frames = 0

    def write(self, frame: np.ndarray) -> None:
        self.write_times.append(time.perf_counter())
        self.write_cpu.append(time.process_time())
        self.frames += 1
        if self.source is not None:
            self.source._released.set()

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _make_source(video: Path | None, frames: list[np.ndarray] | None, count: int):
    if video is not None:
        from deeplab_trt.runtime.video import open_source

        return open_source(str(video))
    return ArraySource(frames, count)


def measure_pipeline(
    backend, video: Path | None, frames: list[np.ndarray] | None, n_frames: int, warmup: int, progress: bool = False
) -> dict[str, Any]:
    """End-to-end latency (lockstep run) and throughput + per-stage times (free-running run)
    through the real video loop into a null sink."""
    from deeplab_trt.runtime.pipeline import RunOptions, runner_for

    run_video = runner_for(backend)
    # 1. latency: one frame in flight.
    lock = LockstepSource(_make_source(video, frames, warmup + n_frames))
    sink = TimingSink(lock)
    try:
        run_video(backend, lock, [sink], RunOptions(max_frames=warmup + n_frames, progress=False))
    finally:
        lock.close()
    pairs = list(zip(lock.read_times, sink.write_times))[warmup:]
    e2e = [(out - inp) * 1e3 for inp, out in pairs]
    # 2. throughput: frames as fast as the pipeline takes them.
    source = _make_source(video, frames, n_frames)
    try:
        stats = run_video(backend, source, [TimingSink()], RunOptions(max_frames=n_frames, progress=progress))
    finally:
        source.close()
    stage = {k: round(v, 3) for k, v in stats.ms_per_frame().items()} if stats.frames else None
    return {
        "e2e_latency_ms": latency_stats(e2e),
        "throughput_fps": stats.fps if stats.frames else None,
        "stage_ms": stage,
    }


def _labels_for(backend, spec: ModelSpec, frames: list[Frame], dtype) -> list[np.ndarray]:
    from deeplab_trt.runtime.postprocess import labels_from_output
    from deeplab_trt.runtime.preprocess import preprocess

    out = []
    for f in frames:
        x, geo = preprocess(f.image, spec, dtype=dtype)
        y = np.asarray(backend.infer(x))
        out.append(labels_from_output(y[0], spec, geo))
    return out


def fidelity(
    labels: list[np.ndarray], reference: list[np.ndarray] | None, frames: list[Frame], num_classes: int, with_gt: bool
) -> dict[str, float | None]:
    """Agreement and mIoU vs the fp32 labels; mIoU vs ground truth when ``with_gt``."""
    from deeplab_trt.benchmarks.metrics import ConfusionMatrix

    out: dict[str, float | None] = {"agreement": None, "miou_vs_fp32": None, "miou_vs_gt": None}
    if reference is not None:
        cm = ConfusionMatrix(num_classes)
        same = total = 0
        for a, b in zip(reference, labels):
            cm.update(a, b)
            same += int((a == b).sum())
            total += a.size
        out["agreement"] = same / total if total else None
        out["miou_vs_fp32"] = cm.miou()
    if with_gt:
        cm = ConfusionMatrix(num_classes)
        for f, lab in zip(frames, labels):
            cm.update(f.labels, lab)
        out["miou_vs_gt"] = cm.miou()
    return out


# ----------------------------------------------------------------------------- the run
def _e2e_frames(cfg: BenchConfig, spec: ModelSpec, n: int) -> list[np.ndarray] | None:
    """Synthetic street video at the model's input size (None when --video is given)."""
    if cfg.video is not None:
        return None
    from deeplab_trt.benchmarks.scenes import SceneGenerator

    gen = SceneGenerator(spec.input_height, spec.input_width, seed=FIDELITY_SEED + 1)
    return [img for img, _ in gen.video_frames(min(n, 32))]


def run_bench(cfg: BenchConfig, on_result: Callable[[str, dict], None] | None = None) -> dict[str, Any]:
    """Measure every precision in ``cfg`` and return the report dict (schema in deeplab_trt.benchmarks.report)."""
    from deeplab_trt.benchmarks.report import SCHEMA

    validate(cfg)
    model = Path(cfg.model)
    spec = spec_from_onnx(model)
    _check_batch(spec, cfg.batch, model)
    backend, flavour = resolve_backend(cfg.backend)
    cache_dir = Path(cfg.cache_dir or default_cache_dir())
    onnx_sha = sha256_file(model)

    synthetic = not cfg.data
    calib_frames: list[Frame] = []
    if cfg.data:
        frames = read_data_frames(cfg.data, 2 * max(cfg.calibration_frames, cfg.fidelity_frames))
        if len(frames) < 2:
            raise ToolkitError(
                f"{cfg.data[0]}: need at least 2 frames (one to calibrate, one to check fidelity); found {len(frames)}"
            )
        calib_frames, fid_frames = split_data(frames, cfg.calibration_frames, cfg.fidelity_frames)
    else:
        fid_frames = synthetic_frames(spec, cfg.fidelity_frames)
    with_gt, gt_note = _gt_usable(spec, fid_frames, synthetic)
    calib = write_calibration_frames(calib_frames, cache_dir) if "int8" in cfg.precisions else None
    preparer = Preparer(cfg, backend, flavour, onnx_sha, calib)

    e2e_n = cfg.iterations if cfg.e2e_frames is None else cfg.e2e_frames
    e2e_frames = _e2e_frames(cfg, spec, e2e_n + cfg.warmup) if e2e_n else None

    config = {
        "model": str(model),
        "model_sha256": onnx_sha,
        "backend": backend,
        "backend_requested": cfg.backend,
        "tensorrt_flavour": flavour,
        "precisions": list(cfg.precisions),
        "iterations": cfg.iterations,
        "warmup": cfg.warmup,
        "batch": cfg.batch,
        "streams": cfg.streams,
        "stream_repeats": cfg.stream_repeats,
        "input_size": [spec.input_height, spec.input_width],
        "head": spec.head,
        "num_classes": spec.num_classes,
        "video": str(cfg.video) if cfg.video else None,
        "data": [str(d) for d in cfg.data],
        "calibration_frames": len(calib_frames) if calib else 0,
        "calibration_method": cfg.calibration_method if calib else None,
        "fidelity_frames": len(fid_frames),
        "fidelity_source": "synthetic scenes" if synthetic else "--data",
        "ground_truth": "used" if with_gt else f"not used: {gt_note}",
        "e2e_frames": e2e_n,
        "cache_dir": str(cache_dir),
        "command": cfg.command,
    }
    report: dict[str, Any] = {
        "schema": SCHEMA,
        "created": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
        "environment": environment(),
        "config": config,
        "results": {},
    }

    reference: list[np.ndarray] | None = None
    order = sorted(cfg.precisions, key=lambda p: p != "fp32")  # fp32 first: the reference
    if "fp32" not in order:  # fidelity is always against fp32: its labels, not its timings
        be = _open(preparer.prepare("fp32").path, backend)
        reference = _labels_for(be, spec, fid_frames, np.dtype(getattr(be, "input_dtype", np.float32)))
        _close(be)
        del be
    for precision in order:
        log.info("bench: %s: preparing (%s)", precision, backend)
        prepared = preparer.prepare(precision)
        gc.collect()
        with PeakMemory(gpu=backend == "tensorrt") as mem:
            be = _open(prepared.path, backend, max(cfg.batch, cfg.streams or 1))
            if cfg.streams:  # before anything is measured: a one-line error saying how to get a model that can
                from deeplab_trt.runtime.pipeline import check_batch_capacity

                check_batch_capacity(be, cfg.streams, str(model))
            dtype = np.dtype(getattr(be, "input_dtype", np.float32))
            batch = _input_batch(fid_frames, spec, cfg.batch, dtype)
            samples, source = measure_inference(be, batch, cfg.warmup, cfg.iterations, cfg.progress, precision)
            labels = _labels_for(be, spec, fid_frames, dtype)
            pipe = (
                measure_pipeline(be, cfg.video, e2e_frames, e2e_n, cfg.warmup, cfg.progress)
                if e2e_n
                else {"e2e_latency_ms": None, "throughput_fps": None, "stage_ms": None}
            )
            streams = measure_streams(be, spec, cfg, e2e_n) if cfg.streams else None
            _close(be)
            del be
            gc.collect()
        if precision == "fp32":
            reference = labels
        fid = fidelity(labels, reference, fid_frames, spec.num_classes, with_gt)
        result = {
            "model": str(prepared.path),
            "cached": prepared.cached,
            "prepare_s": round(prepared.seconds, 3),
            "latency_ms": latency_stats(samples),
            "latency_source": source,
            **pipe,
            "peak_memory_mb": round(mem.rss_mb, 1),
            "peak_gpu_memory_mb": None if mem.gpu_mb is None else round(mem.gpu_mb, 1),
            "layers": layer_counts(preparer.graph(precision).path, backend, flavour),
            **fid,
            "streams": streams,
        }
        report["results"][precision] = result
        if on_result:
            on_result(precision, result)
    # Report in the order asked for.
    report["results"] = {p: report["results"][p] for p in cfg.precisions}
    report["int8_over_fp16"] = int8_fp16_ratio(report["results"])
    return report


def measure_streams(backend, spec: ModelSpec, cfg: BenchConfig, frames: int) -> dict:
    """``--streams N``: N synthetic streets batched in one process vs N sequential runs, ``frames`` each.

    The one implementation (:func:`deeplab_trt.benchmarks.stream_throughput.measure`), on this
    precision's backend; its frames are the benchmark's synthetic streets at the model's size (not
    ``--video``: N distinct streams are needed).
    """
    from deeplab_trt.benchmarks import stream_throughput as st

    n = int(cfg.streams or 1)
    frames_by_stream = st.stream_frames(spec.input_height, spec.input_width, n, min(max(frames, 1), 16))
    return st.measure(
        backend,
        frames_by_stream,
        [n],
        frames=max(frames, 1),
        repeats=cfg.stream_repeats,
        warmup=cfg.warmup,
        infer_iterations=min(cfg.iterations, 10),
        model=str(cfg.model),
    )[0]


def int8_fp16_ratio(results: dict[str, dict]) -> float | None:
    """Mean inference latency INT8 / FP16 (the issue's goal: <= 0.62 on TensorRT); None unless both ran."""
    means = [((results.get(p) or {}).get("latency_ms") or {}).get("mean") for p in ("int8", "fp16")]
    return round(means[0] / means[1], 3) if all(means) else None


def command_line(argv: list[str] | None = None) -> str:
    return " ".join(shlex.quote(a) for a in (argv if argv is not None else ["deeplab-trt", *sys.argv[1:]]))
