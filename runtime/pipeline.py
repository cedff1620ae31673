"""The CPU video pipeline: source → preprocess → infer → labels → render → sinks.

Why this shape: every stage is the numpy/OpenCV reference (:mod:`deeplab_trt.runtime.preprocess`,
:mod:`deeplab_trt.runtime.postprocess`), so this loop is also the definition of what ``deeplab-trt run``
produces; the CUDA pipeline (``deeplab_trt.runtime.gpu_pipeline``) replaces the stages with kernels and
returns the same :class:`Stats` from a ``run_video`` with the same signature, so the ``run``
command, the benchmarks and the report code do not care which one ran.

Decoding runs on a thread (:class:`deeplab_trt.runtime.video.BackgroundReader`): lossless for files,
dropping the oldest frame for live sources. Labels, rendering and the sinks run on another
(:class:`_Finisher`), one frame behind inference, in order. Ctrl-C stops the loop between
frames; frames already inferred are written, the caller's sinks then finalise what was
written (a playable file) and the stats say ``interrupted``.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from deeplab_trt.runtime.errors import ToolkitError
from deeplab_trt.runtime.postprocess import MODES, labels_from_output, palette_bgr, render
from deeplab_trt.runtime.preprocess import POLICIES, preprocess
from deeplab_trt.runtime.video import BackgroundReader, Sink, VideoSource

STAGES = ("decode", "preprocess", "infer", "postprocess", "encode")


@dataclass
class RunOptions:
    """What to do with each frame (the ``run`` command's options, minus files)."""

    mode: str = "overlay"
    alpha: float = 0.5
    policy: str = "stretch"
    max_frames: int | None = None
    progress: bool = True
    queue_size: int = 4

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ToolkitError(f"unknown output mode {self.mode!r} (expected one of {', '.join(MODES)})")
        if self.policy not in POLICIES:
            raise ToolkitError(f"unknown resize policy {self.policy!r} (expected one of {', '.join(POLICIES)})")
        if not 0.0 <= self.alpha <= 1.0:
            raise ToolkitError(f"--alpha must be within [0, 1], got {self.alpha}")
        if self.max_frames is not None and self.max_frames < 1:
            raise ToolkitError(f"--max-frames must be at least 1, got {self.max_frames}")


@dataclass
class Stats:
    """What a run did and how long each stage took (wall-clock seconds, summed over frames).

    ``decode`` is time spent inside the decoder (on the reader thread, overlapping the other
    stages); ``postprocess`` includes rendering; ``encode`` is time in the sinks' ``write``.
    ``fps`` is end-to-end: frames / wall time of the loop (first frame to last write).
    """

    frames: int = 0
    wall_s: float = 0.0
    stage_s: dict[str, float] = field(default_factory=lambda: {s: 0.0 for s in STAGES})
    dropped: int = 0
    interrupted: bool = False
    stopped_by_sink: bool = False
    pipeline: str = "cpu"
    backend: str = ""
    model: str = ""
    input_size: tuple[int, int] | None = None  # (h, w) the model takes
    policy: str = "stretch"
    mode: str = "overlay"
    source: str = ""
    source_size: tuple[int, int] | None = None  # (w, h) decoded
    source_fps: float | None = None
    source_frames: int | None = None
    outputs: list[dict] = field(default_factory=list)  # {"path", "size", "fps", "frames"}

    @property
    def fps(self) -> float:
        return self.frames / self.wall_s if self.wall_s > 0 else 0.0

    def ms_per_frame(self) -> dict[str, float]:
        n = max(self.frames, 1)
        return {s: 1000.0 * t / n for s, t in self.stage_s.items()}

    def to_dict(self) -> dict:
        d = asdict(self)
        d["fps"] = self.fps
        d["ms_per_frame"] = self.ms_per_frame()
        return d

    def report_lines(self) -> list[str]:
        """The human summary ``run`` prints at the end."""
        ms = self.ms_per_frame()
        h, w = self.input_size or (0, 0)
        lines = [
            f"{self.frames} frames in {self.wall_s:.2f} s: {self.fps:.1f} FPS "
            f"({self.backend}, {self.pipeline} pipeline, {h}x{w} input, {self.policy})",
            "ms/frame: " + "  ".join(f"{s} {ms[s]:.1f}" for s in STAGES),
        ]
        if self.dropped:
            lines.append(f"dropped {self.dropped} live frames (the pipeline was slower than the source)")
        for out in self.outputs:
            ow, oh = out["size"]
            lines.append(f"wrote {out['path']}: {out['frames']} frames, {ow}x{oh}, {out['fps']:g} fps")
        if self.interrupted:
            lines.append("interrupted (Ctrl-C): stopped early; what was written is finalised")
        return lines


class _Finisher:
    """Postprocess, render and write frames on a worker thread, in order, one frame behind.

    Why: on the CPU backend labels + overlay + sinks cost a tenth of an inference; doing them
    for frame N while frame N+1 is being inferred hides them (numpy, OpenCV, ONNX Runtime and
    the encoders release the GIL). The queue holds one frame, so the worker is at most two
    frames behind and memory stays bounded. ``stats.frames`` counts frames written.
    """

    _END = object()

    def __init__(self, spec, sinks: Sequence[Sink], options: RunOptions, stats: Stats, bar):
        self.spec, self.sinks, self.options, self.stats, self.bar = spec, sinks, options, stats, bar
        self.lut = palette_bgr(spec)
        self.queue: queue.Queue = queue.Queue(maxsize=1)
        self.stop = threading.Event()  # set: the loop must stop feeding (a sink wants to, or an error)
        self.abort = threading.Event()  # set: drop queued frames instead of writing them
        self.error: BaseException | None = None
        self.last_write = None
        self.thread = threading.Thread(target=self._run, name="video-finish", daemon=True)
        self.thread.start()

    def submit(self, frame: np.ndarray, output: np.ndarray, geo) -> None:
        """Queue one inferred frame; waits while the worker is a frame behind."""
        while not self.stop.is_set():
            try:
                self.queue.put((frame, output, geo), timeout=0.1)
                return
            except queue.Full:
                continue

    def _run(self) -> None:
        timing, stats = self.stats.stage_s, self.stats
        try:
            while (item := self.queue.get()) is not self._END:
                if self.abort.is_set() or stats.stopped_by_sink:
                    continue
                frame, output, geo = item
                t0 = time.perf_counter()
                labels = labels_from_output(output, self.spec, geo)
                picture = render(frame, labels, self.lut, self.options.mode, self.options.alpha)
                t1 = time.perf_counter()
                for sink in self.sinks:
                    sink.write(picture)
                t2 = time.perf_counter()
                timing["postprocess"] += t1 - t0
                timing["encode"] += t2 - t1
                stats.frames += 1
                self.last_write = t2
                self.bar.update(1)
                if any(s.wants_stop for s in self.sinks):
                    stats.stopped_by_sink = True
                    self.stop.set()
        except BaseException as exc:  # handed to the loop thread, which re-raises it  # noqa: BLE001
            self.error = exc
            self.abort.set()
            self.stop.set()
            while self.queue.get() is not self._END:  # keep draining so the loop never blocks
                pass

    def finish(self, drain: bool = True) -> None:
        """Write what is queued (``drain``) or drop it, and wait for the worker; re-raise its error."""
        if not drain:
            self.abort.set()
        self.stop.set()
        ended = False
        while self.thread.is_alive():
            try:
                if not ended:
                    self.queue.put(self._END)  # the worker keeps taking items: a short wait at most
                    ended = True
                self.thread.join()
            except KeyboardInterrupt:  # a second Ctrl-C: drop what is queued, stop after this frame
                self.abort.set()
        if self.error is not None:
            raise self.error


def run_video(backend, source: VideoSource, sinks: Sequence[Sink], options: RunOptions | None = None) -> Stats:
    """Segment every frame of ``source`` with ``backend`` and write the rendering to ``sinks``.

    Three threads: decode (:class:`BackgroundReader`), this one (preprocess + infer), and a
    finisher (labels + render + sinks, :class:`_Finisher`), so on a multi-core CPU only the
    slowest stage sets the frame rate. Frames reach the sinks in order.

    Sinks are the caller's: it opens them before and closes (finalises) them after, so a
    Ctrl-C here ends the loop -- frames already inferred are still written -- and still
    leaves a playable file.
    """
    from tqdm import tqdm

    options = options or RunOptions()
    spec = backend.spec
    stats = Stats(
        pipeline="cpu",
        backend=backend.name,
        model=spec.name,
        input_size=spec.input_size,
        policy=options.policy,
        mode=options.mode,
        source=source.description,
        source_size=source.size,
        source_fps=source.fps,
        source_frames=source.frame_count,
    )
    batch = np.zeros((backend.fixed_batch or 1, 3, spec.input_height, spec.input_width), backend.input_dtype)
    # The finisher reads an output while the next inference runs: copy unless the backend
    # promises a fresh array per call (ORT does; a backend reusing one buffer would not).
    fresh = getattr(backend, "fresh_outputs", False)
    total = source.frame_count
    if options.max_frames is not None:
        total = min(total, options.max_frames) if total else options.max_frames
    timing = stats.stage_s
    reader = BackgroundReader(source, max_frames=options.max_frames, queue_size=options.queue_size)
    bar = tqdm(total=total, unit="frame", desc="run", disable=not options.progress, dynamic_ncols=True)
    finisher = _Finisher(spec, sinks, options, stats, bar)
    start = time.perf_counter()
    try:
        try:
            while (item := reader.next(finisher.stop)) is not None:
                frame, decode_s = item
                timing["decode"] += decode_s
                t0 = time.perf_counter()
                _, geo = preprocess(frame, spec, options.policy, backend.input_dtype, out=batch[0])
                t1 = time.perf_counter()
                output = backend.infer(batch)
                t2 = time.perf_counter()
                timing["preprocess"] += t1 - t0
                timing["infer"] += t2 - t1
                finisher.submit(frame, output[0] if fresh else output[0].copy(), geo)
        except KeyboardInterrupt:
            stats.interrupted = True
        except BaseException:
            finisher.finish(drain=False)
            raise
        try:
            finisher.finish(drain=True)
        except KeyboardInterrupt:
            stats.interrupted = True
    finally:
        stats.wall_s = (finisher.last_write or time.perf_counter()) - start
        reader.close()
        bar.close()
        stats.dropped = reader.dropped
    return stats


def runner_for(backend):
    """The video loop that drives ``backend``: this CPU loop, or the CUDA one
    (:func:`deeplab_trt.runtime.gpu_pipeline.run_video`, same signature and :class:`Stats`) for a backend
    whose ``pipeline`` is ``"gpu"``. One choice, so ``run``, ``demo`` and ``bench`` drive a
    backend alike; the CUDA module is imported only when it is the one chosen."""
    if getattr(backend, "pipeline", "cpu") == "gpu":
        from deeplab_trt.runtime.gpu_pipeline import run_video as gpu_run_video

        return gpu_run_video
    return run_video
