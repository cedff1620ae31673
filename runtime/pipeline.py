"""What a video run is asked to do (:class:`RunOptions`), what it did (:class:`Stats`), and its entry point.

Why here: the ``run`` command, the demo and the benchmarks share these. The loop itself is one,
:func:`deeplab_trt.runtime.gpu_pipeline.run_video` (the slot loop); on the CPU its stage is
:class:`~deeplab_trt.runtime.gpu_pipeline.HostStage` (the numpy/OpenCV references: inference on the
stage thread, labels + render on the sink thread, overlapped), on a GPU the CUDA kernels. Ctrl-C stops
feeding new frames; frames already inferred are written, the caller's sinks then finalise what was
written (a playable file) and the stats say ``interrupted``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from deeplab_trt.runtime.errors import ToolkitError
from deeplab_trt.runtime.latency import LatencyHistogram
from deeplab_trt.runtime.postprocess import MODES
from deeplab_trt.runtime.preprocess import POLICIES

if TYPE_CHECKING:
    from deeplab_trt.runtime.backends.base import Backend
    from deeplab_trt.runtime.video import Sink, Source

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
class StreamStats:
    """One stream of a run: what it was, how many frames it gave, how it ended, its latency.

    ``latency`` counts, per frame, the time from the tick taking the frame off its decoder to its
    picture being written (what a viewer of that stream waits beyond decoding), in constant memory
    (:class:`~deeplab_trt.runtime.latency.LatencyHistogram`: runs last days); ``ended`` says why
    the stream stopped: ``end of stream``, ``max frames``, ``failed: ...``, ``stopped`` (the run
    stopped first: Ctrl-C, a closed window, another error).
    """

    index: int
    source: str
    size: tuple[int, int]  # (w, h) decoded
    fps: float | None
    frame_count: int | None
    is_live: bool
    frames: int = 0
    dropped: int = 0
    ended: str = ""
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    outputs: list[dict] = field(default_factory=list)  # {"path", "size", "fps", "frames"}
    # A live source's drops: {"reconnects", "gap_s", "end_reason"} (runtime/reconnect.py); None otherwise.
    source_status: dict | None = None

    @classmethod
    def of(cls, index: int, source: Source) -> StreamStats:
        return cls(index, source.description, source.size, source.fps, source.frame_count, source.is_live)

    def latency_ms(self) -> dict[str, float | None]:
        """p50 / p99 / max of the per-frame latency, in ms (``None`` without frames; percentiles within 1 %)."""
        return self.latency.summary_ms()

    def to_dict(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if k != "latency"}
        d["latency_ms"] = self.latency_ms()
        return d


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
    # A live source's drops: {"reconnects", "gap_s", "end_reason"} (runtime/reconnect.py); None otherwise.
    source_status: dict | None = None
    streams: list[StreamStats] = field(default_factory=list)  # one per source, in ``--source`` order
    ticks: int = 0  # batched inferences (one per tick; equal to ``frames`` with one stream)

    @property
    def fps(self) -> float:
        return self.frames / self.wall_s if self.wall_s > 0 else 0.0

    def ms_per_frame(self) -> dict[str, float]:
        n = max(self.frames, 1)
        return {s: 1000.0 * t / n for s, t in self.stage_s.items()}

    @property
    def mean_batch(self) -> float:
        return self.frames / self.ticks if self.ticks else 0.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["fps"] = self.fps
        d["ms_per_frame"] = self.ms_per_frame()
        d["streams"] = [s.to_dict() for s in self.streams]
        d["mean_batch"] = self.mean_batch
        return d

    def stream_lines(self) -> list[str]:
        """One line per stream (runs of several streams): frames, FPS, latency, outputs, how it ended."""
        lines = []
        for st in self.streams:
            lat = st.latency_ms()
            latency = f"latency p50 {lat['p50']:.0f} ms, p99 {lat['p99']:.0f} ms" if st.frames else "no frames"
            w, h = st.size
            fps = st.frames / self.wall_s if self.wall_s > 0 else 0.0
            line = (
                f"[{st.index}] {st.source} ({w}x{h}): {st.frames} frames, {fps:.1f} FPS, {latency}; ended: {st.ended}"
            )
            if st.dropped:
                line += f"; dropped {st.dropped} live frames"
            lines.append(line)
            lines += _written_lines(st.outputs, st.source_status, indent="    ")
        return lines

    def report_lines(self) -> list[str]:
        """The human summary ``run`` prints at the end."""
        ms = self.ms_per_frame()
        h, w = self.input_size or (0, 0)
        if len(self.streams) > 1:
            return [
                *self.stream_lines(),
                f"aggregate: {self.frames} frames of {len(self.streams)} streams in {self.wall_s:.2f} s: "
                f"{self.fps:.1f} FPS, {self.ticks} batched inferences (mean batch {self.mean_batch:.2f}) "
                f"({self.backend}, {self.pipeline} pipeline, {h}x{w} input, {self.policy})",
                "ms/frame: " + "  ".join(f"{s} {ms[s]:.1f}" for s in STAGES),
                *(["interrupted (Ctrl-C): stopped early; what was written is finalised"] if self.interrupted else []),
            ]
        lines = [
            f"{self.frames} frames in {self.wall_s:.2f} s: {self.fps:.1f} FPS "
            f"({self.backend}, {self.pipeline} pipeline, {h}x{w} input, {self.policy})",
            "ms/frame: " + "  ".join(f"{s} {ms[s]:.1f}" for s in STAGES),
        ]
        if self.dropped:
            lines.append(f"dropped {self.dropped} live frames (the pipeline was slower than the source)")
        lines += _written_lines(self.outputs, self.source_status)
        if self.interrupted:
            lines.append("interrupted (Ctrl-C): stopped early; what was written is finalised")
        return lines


def _written_lines(outputs: list[dict], source_status: dict | None, indent: str = "") -> list[str]:
    """The summary's lines for the files a stream wrote and a live source's drops."""
    lines = []
    for out in outputs:
        ow, oh = out["size"]
        lines.append(f"{indent}wrote {out['path']}: {out['frames']} frames, {ow}x{oh}, {out['fps']:g} fps")
    if source_status is not None:
        st = source_status
        lines.append(
            f"{indent}source: {st['reconnects']} reconnect(s), {st['gap_s']:.1f} s without frames; "
            f"ended: {st['end_reason']}"
        )
    return lines


def run_streams(
    backend: Backend,
    sources: Sequence[Source],
    sinks: Sequence[Sequence[Sink]],
    options: RunOptions | None = None,
) -> Stats:
    """Segment several streams with one model: each tick, one batched inference of every running stream's next frame.

    Args:
        backend: what infers; its batch must hold ``len(sources)`` images (:func:`check_batch_capacity`).
        sources: the streams (files, cameras, URLs; sizes and frame rates may differ).
        sinks: per stream, that stream's sinks (``sinks[i]`` gets stream ``i``'s pictures, in order); a sink
            may be shared by streams (a mosaic's tiles are sinks of one window).
        options: what to do with each frame (``max_frames`` counts per stream).

    A stream that ends or fails leaves the batch; the others go on (:mod:`deeplab_trt.runtime.ticks`). The
    stats are the aggregate (``fps`` = all frames / wall time) with one :class:`StreamStats` per stream.
    """
    from deeplab_trt.runtime.gpu_pipeline import run_streams as slot_loop

    return slot_loop(backend, sources, sinks, options, stage="cuda" if backend.pipeline == "gpu" else "host")


def check_batch_capacity(backend: Backend, streams: int, model: str) -> None:
    """A one-line error, saying how to get a model that can, when ``backend`` cannot infer ``streams`` images at once.

    Args:
        backend: the opened model.
        streams: how many streams one tick batches.
        model: the model's path, for the message.
    """
    low, high = backend.batch_limits
    if high is not None and streams > high:
        if backend.fixed_batch is not None:
            got = f"takes a fixed batch of {backend.fixed_batch}"
        else:
            got = f"has a batch profile of {low}..{high}"
        export = f"deeplab-trt export --dynamic-batch 1:{streams}:{streams} (or --batch {streams})"
        how = (
            f"rebuild it with 'deeplab-trt build --profile-batch 1:{streams}:{streams}' from an ONNX made by '{export}'"
            if Path(model).suffix.lower() in (".engine", ".plan")
            else f"export one with '{export}'"
        )
        raise ToolkitError(f"{model}: {streams} streams need a batch of {streams}, but the model {got}; {how}")


def run_video(backend: Backend, source: Source, sinks: Sequence[Sink], options: RunOptions | None = None) -> Stats:
    """Segment every frame of ``source`` with ``backend`` and write the rendering to ``sinks``.

    Args:
        backend: what infers (:class:`~deeplab_trt.runtime.backends.base.Backend`); its ``pipeline``
            picks the stage: ``"gpu"`` runs the CUDA kernels, ``"cpu"`` the numpy references.
        source: the frames (:class:`~deeplab_trt.runtime.video.Source`).
        sinks: the caller's sinks (opened before, closed after, so a Ctrl-C still leaves a playable file).
        options: what to do with each frame.

    There is one loop, :func:`deeplab_trt.runtime.gpu_pipeline.run_video` (decode thread, stage thread,
    sink thread, frames in order); this only chooses its stage, so ``run``, ``demo`` and ``bench`` drive
    every backend alike.
    """
    return run_streams(backend, [source], [sinks], options)


def runner_for(backend: Backend):
    """The video loop for ``backend`` (always :func:`run_video`: one loop, its stage chosen by the backend)."""
    return run_video
