"""The GPU video pipeline: decode thread → GPU stage thread → sink (main) thread.

Why this shape: each frame's GPU work (upload, preprocess kernel, inference, label and
overlay kernels, download of the picture) is queued asynchronously, so with 2–3 frame
*slots* in flight the decoder, the GPU, the copies and the encoder all work at once. Only the
rendered picture (overlay, mask or grey labels) comes back to the host; the logits never do.

* **Discrete GPUs**: the decoded frame is copied into a pinned slot, uploaded on an *upload*
  stream (overlapping the previous frame's kernels on the *compute* stream), and the picture
  comes back on a *download* stream. Events order the three streams on the GPU; the host
  only waits for a slot's last event when it hands the picture to the sinks.
* **Integrated GPUs** (Jetson, ``cudaDevAttrIntegrated``): the slot is *mapped* pinned memory;
  the kernels read the frame and render the picture in place through its device alias, so
  there is no copy at all.

Queues are bounded (slots): for files every frame is processed (the decoder waits); for live
sources :class:`deeplab_trt.runtime.video.BackgroundReader` drops the oldest decoded frame instead, as in
the CPU pipeline. Per-stage GPU times come from CUDA events (``upload``, ``preprocess``,
``infer``, ``postprocess``, ``download``); ``decode`` and ``encode`` are host times, as in
:class:`deeplab_trt.runtime.pipeline.Stats`, which this returns too.

Optional CUDA graphs (``cuda_graph=True``): after the first full tick (which also runs TensorRT's
``execute_async_v3`` once outside capture, as TensorRT requires), each slot's full tick (every
stream's kernels + the one batched inference) is captured once and replayed; a partial tick runs
eagerly (:class:`CudaStage`). The per-stage split of a replayed tick is reported as one ``infer``
time (events cannot be recorded inside the captured sequence).

The orchestration is independent of CUDA: :class:`HostStage` runs the numpy references behind
the same slot interface; it is the CPU stage of ``deeplab-trt run``, so CI runs this very loop.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

import numpy as np

from deeplab_trt.runtime.errors import ToolkitError
from deeplab_trt.runtime.pipeline import RunOptions, Stats, StreamStats
from deeplab_trt.runtime.postprocess import labels_from_output, palette_bgr, render
from deeplab_trt.runtime.preprocess import Geometry, preprocess
from deeplab_trt.runtime.ticks import DEFAULT_LIVE_WAIT_S, TickGatherer
from deeplab_trt.runtime.video import BackgroundReader, Sink, Source

if TYPE_CHECKING:
    from deeplab_trt.runtime.backends.base import Backend

log = logging.getLogger(__name__)

GPU_STAGES = ("upload", "preprocess", "infer", "postprocess", "download")
DEFAULT_SLOTS = 3


class Stage(Protocol):
    """One tick's work behind numbered slots: ``submit`` may be asynchronous, ``finish`` waits.

    ``submit(slot, frames)`` takes the tick's ``(stream index, BGR uint8 H×W×3 frame)`` pairs, at most one
    per stream, in stream order (one batched inference for them all); ``finish(slot)`` returns the rendered
    pictures in the order submitted and the stage times of the whole tick (seconds).
    """

    slots: int
    name: str

    def bind_thread(self) -> None: ...

    def submit(self, slot: int, frames: Sequence[tuple[int, np.ndarray]]) -> None: ...

    def finish(self, slot: int) -> tuple[list[np.ndarray], dict[str, float]]: ...

    def close(self) -> None: ...


# ----------------------------------------------------------------------------------------------
# host stage: the references (what deeplab_trt.runtime.pipeline computes), behind slots
# ----------------------------------------------------------------------------------------------
class HostStage:
    """numpy/OpenCV references + ``backend.infer``: the CPU twin of :class:`CudaStage`.

    Why split this way: ``submit`` (preprocess + inference) runs on the stage thread and ``finish``
    (labels + render) on the sink thread, so labels and rendering of tick N overlap the inference
    of tick N+1 (numpy, OpenCV, ONNX Runtime and the encoders release the GIL). A tick's frames are
    preprocessed into one batch (image j of the tick at row j; a fixed-batch model gets its whole
    batch, the rows past the tick ignored). The output is copied unless the backend promises a
    fresh array per call (``fresh_outputs``).

    Args:
        backend: the host backend.
        options: what to do with each frame.
        slots: ticks in flight.
        streams: the most frames one tick holds (the batch to allocate).
    """

    def __init__(self, backend: Backend, options: RunOptions, slots: int = 2, *, streams: int = 1):
        self.backend = backend
        self.options = options
        self.slots = slots
        self.name = backend.name
        self.spec = backend.spec
        self.lut = palette_bgr(self.spec)
        self.min_batch = backend.fixed_batch or backend.batch_limits[0]
        rows = backend.fixed_batch or max(streams, self.min_batch)
        self.batch = np.zeros((rows, 3, self.spec.input_height, self.spec.input_width), backend.input_dtype)
        self._pending: dict[int, tuple] = {}

    def bind_thread(self) -> None:
        pass

    def submit(self, slot: int, frames: Sequence[tuple[int, np.ndarray]]) -> None:
        if len(frames) > len(self.batch):
            raise ToolkitError(f"{self.name}: a tick of {len(frames)} frames exceeds the batch of {len(self.batch)}")
        t0 = time.perf_counter()
        pictures = [frame for _, frame in frames]
        geos = [
            preprocess(frame, self.spec, self.options.policy, self.backend.input_dtype, out=self.batch[j])[1]
            for j, frame in enumerate(pictures)
        ]
        t1 = time.perf_counter()
        outputs = self.backend.infer(self.batch[: max(len(frames), self.min_batch)])[: len(frames)]
        t2 = time.perf_counter()
        if not self.backend.fresh_outputs:
            outputs = outputs.copy()
        self._pending[slot] = (pictures, outputs, geos, {"preprocess": t1 - t0, "infer": t2 - t1})

    def finish(self, slot: int) -> tuple[list[np.ndarray], dict[str, float]]:
        frames, outputs, geos, times = self._pending.pop(slot)
        t0 = time.perf_counter()
        pictures = [
            render(frame, labels_from_output(output, self.spec, geo), self.lut, self.options.mode, self.options.alpha)
            for frame, output, geo in zip(frames, outputs, geos, strict=True)
        ]
        return pictures, {**times, "postprocess": time.perf_counter() - t0}

    def close(self) -> None:
        self._pending.clear()


# ----------------------------------------------------------------------------------------------
# CUDA stage
# ----------------------------------------------------------------------------------------------
class _StreamBuffers:
    """One stream's frame (pinned + device, or mapped on zero-copy), picture and labels in a slot."""

    def __init__(self, api, height: int, width: int, label_dtype: np.dtype, zero_copy: bool):
        self.height, self.width = height, width
        self.nbytes = height * width * 3
        self.host = api.PinnedBuffer(self.nbytes, mapped=zero_copy)
        self.host_frame = self.host.array((height, width, 3), np.uint8)
        if zero_copy:
            self.device_frame = None
            self.frame_ptr = self.host.device_ptr
            self.host_out = self.host_frame  # rendered in place, read by the host after the last event
        else:
            self.device_frame = api.DeviceBuffer(self.nbytes)
            self.frame_ptr = self.device_frame.ptr
            self.out = api.PinnedBuffer(self.nbytes)
            self.host_out = self.out.array((height, width, 3), np.uint8)
        self.labels = api.DeviceBuffer(height * width * label_dtype.itemsize)


class _Slot:
    """One tick in flight: a buffer set per stream, the events of the tick, the slot's graph."""

    def __init__(self, api, sizes: Sequence[tuple[int, int]], label_dtype: np.dtype, zero_copy: bool):
        self.buffers = [_StreamBuffers(api, h, w, label_dtype, zero_copy) for w, h in sizes]
        ev = api.Event
        self.up_start, self.up_end = ev(), ev()
        self.pre_start, self.pre_end, self.infer_end = ev(), ev(), ev()
        self.post_end = ev(blocking_sync=zero_copy)
        self.down_end = ev(blocking_sync=True)
        self.graph = None  # captured for a full tick (every stream, in order)
        self.graphed = False  # whether the last submit replayed the graph (no per-stage events)
        self.streams: tuple[int, ...] = ()  # the stream indices of the tick in flight

    def close(self) -> None:
        if self.graph is not None:
            self.graph.close()
        for e in (
            self.up_start,
            self.up_end,
            self.pre_start,
            self.pre_end,
            self.infer_end,
            self.post_end,
            self.down_end,
        ):
            e.close()


class CudaStage:
    """Kernels + a :class:`~deeplab_trt.runtime.cuda.inference.DeviceInference` on three streams.

    One tick (``submit(slot, frames)``, at most one frame per stream) is one batched inference:
    each frame is uploaded into its stream's buffer, preprocessed into image j of the batch
    (j: its position in the tick; the geometry is its stream's), the model runs once, and image
    j's output is turned into labels and rendered into the frame's buffer. A dynamic inference
    runs ``max(k, min)`` images for a tick of k (``set_batch`` only when that changes; buffers
    are grown once, here, for a full tick, so no tick reallocates what earlier ones still use); a
    fixed one runs its batch, the rest of it ignored padding. A tick larger than the inference
    takes is a :class:`ToolkitError`, here for the number of streams.

    CUDA graphs (``cuda_graph=True``): a slot's graph records a *full* tick (every stream, in
    order, at the full batch), captured once the inference has run that batch eagerly since its
    last shape change (TensorRT's rule: one eager ``execute_async_v3`` per shape before capture);
    a partial tick (a stream without a frame this time) runs eagerly. One stream is the special
    case where every tick is full: a graph per slot after the first frame, as before batching.
    Why not graphs per tick size: the ticks of a steady run are full, and N graphs per slot would
    multiply captures for the rare partial tick.
    """

    def __init__(
        self,
        inference,
        options: RunOptions,
        frame_sizes: Sequence[tuple[int, int]],
        *,
        slots: int = DEFAULT_SLOTS,
        device_index: int = 0,
        cuda_graph: bool = False,
        zero_copy: bool | None = None,
        kernels=None,
    ):
        """Args:
        inference: the model step (a DeviceInference: TensorRT's runner, a host adapter, ...).
        options: mode, alpha and resize policy.
        frame_sizes: (w, h) of each stream's frames, in stream order.
        slots: ticks in flight.
        device_index: the CUDA device.
        cuda_graph: replay each slot's full tick as a CUDA graph (see the class docstring).
        zero_copy: mapped frames rendered in place (None: the device decides; integrated GPUs).
        kernels: the kernels to launch (None: this device's).
        """
        from deeplab_trt.runtime.cuda import api
        from deeplab_trt.runtime.cuda.kernels import get_kernels, label_dtype_for

        refusal = getattr(inference, "graph_refusal", None) if cuda_graph else None
        if refusal:
            raise ToolkitError(refusal)  # asked for, and this engine can never do it: say so, do not ignore it
        if not frame_sizes:
            raise ToolkitError("the GPU stage needs at least one stream")
        self.api = api
        self.device_index = device_index
        self.device = api.use_device(device_index)
        self.zero_copy = self.device.zero_copy if zero_copy is None else zero_copy
        self.inference = inference
        self.spec = inference.spec
        self.options = options
        self.slots = max(1, int(slots))
        self.name = inference.name
        self.kernels = kernels or get_kernels(device_index)
        self.sizes = [(int(w), int(h)) for w, h in frame_sizes]
        self.geos = [Geometry.compute((h, w), self.spec.input_size, options.policy) for w, h in self.sizes]
        self.label_dtype = np.dtype(label_dtype_for(self.spec))
        self.full_batch = self._batch_for(len(self.sizes))
        self._set_batch(self.full_batch)  # allocate for a full tick now, not under a tick in flight
        self.compute = api.Stream()
        self.upload = api.Stream()
        self.download = api.Stream()
        self._slots = [_Slot(api, self.sizes, self.label_dtype, self.zero_copy) for _ in range(self.slots)]
        self.use_graph = bool(cuda_graph)
        if self.use_graph and not inference.capturable:
            log.info("CUDA graphs off: %s cannot be captured", self.name)
            self.use_graph = False
        self._warm = False  # whether the inference ran eagerly at its current batch (capture needs it)
        log.info(
            "GPU pipeline on %s: %d stream(s), batch %d, %d slots, %s, %s",
            self.device.describe(),
            len(self.sizes),
            self.full_batch,
            self.slots,
            "zero-copy mapped frames" if self.zero_copy else "pinned upload/download streams",
            "CUDA graphs (full ticks)" if self.use_graph else "eager launches",
        )

    def bind_thread(self) -> None:
        self.api.use_device(self.device_index)

    # ---- batch ------------------------------------------------------------------------------
    def _batch_for(self, k: int) -> int:
        """The batch the inference runs for a tick of ``k`` images (padded up to its minimum)."""
        lo, hi = self.inference.batch_limits
        if k > hi:
            raise ToolkitError(f"{self.name}: {k} streams in one tick exceed the model's largest batch ({hi})")
        return max(k, lo)

    def _set_batch(self, n: int) -> None:
        if self.inference.input.shape[0] != n:
            self.inference.set_batch(n)
            self._warm = False

    # ---- the per-tick GPU sequence (what a graph captures) --------------------------------
    def _gpu_work(self, s: _Slot, stream, timed: bool) -> None:
        inf = self.inference
        in_step = int(np.prod(inf.input.shape[1:])) * inf.input.dtype.itemsize
        out_shape = tuple(inf.output.shape[1:])
        out_step = int(np.prod(out_shape)) * inf.output.dtype.itemsize
        for j, i in enumerate(s.streams):
            b = s.buffers[i]
            self.kernels.preprocess(
                b.frame_ptr,
                b.height,
                b.width,
                inf.input.ptr + j * in_step,
                self.spec,
                self.geos[i],
                out_dtype=inf.input.dtype,
                bgr=True,
                stream=stream.handle,
            )
        if timed:
            s.pre_end.record(stream)
        inf.enqueue(stream)
        if timed:
            s.infer_end.record(stream)
        for j, i in enumerate(s.streams):
            b = s.buffers[i]
            self.kernels.labels_from_output(
                inf.output.ptr + j * out_step,
                out_shape,
                inf.output.dtype,
                self.spec,
                self.geos[i],
                b.labels.ptr,
                label_dtype=self.label_dtype,
                stream=stream.handle,
            )
            self.kernels.render(
                b.frame_ptr,
                b.height,
                b.width,
                b.labels.ptr,
                self.spec,
                mode=self.options.mode,
                alpha=self.options.alpha,
                label_dtype=self.label_dtype,
                stream=stream.handle,
            )

    def _capture(self, s: _Slot) -> None:
        try:
            with self.compute.capture() as graph:
                self._gpu_work(s, self.compute, timed=False)
            s.graph = graph
        except Exception as exc:  # noqa: BLE001 - fall back to eager launches, keep running
            log.warning("CUDA graph capture failed (%s); continuing without graphs", exc)
            self.use_graph = False
            for other in self._slots:
                if other.graph is not None:
                    other.graph.close()
                    other.graph = None

    def _check(self, frames: Sequence[tuple[int, np.ndarray]]) -> tuple[int, ...]:
        """The tick's stream indices, after checking every frame (nothing is queued for a bad tick)."""
        streams = tuple(int(i) for i, _ in frames)
        if not frames or any(not 0 <= i < len(self.sizes) for i in streams) or list(streams) != sorted(set(streams)):
            raise ToolkitError(f"a tick holds at most one frame per stream, in stream order; got streams {streams}")
        for i, frame in frames:
            w, h = self.sizes[i]
            if frame.shape != (h, w, 3) or frame.dtype != np.uint8:
                raise ToolkitError(
                    f"stream {i}: frame size changed mid-stream ({w}x{h} → {frame.shape[1]}x{frame.shape[0]})"
                    if frame.ndim == 3 and frame.dtype == np.uint8
                    else f"stream {i}: expected a {h}x{w}x3 uint8 frame, got {frame.shape} {frame.dtype}"
                )
        return streams

    def submit(self, slot: int, frames: Sequence[tuple[int, np.ndarray]]) -> None:
        s = self._slots[slot]
        streams = self._check(frames)
        self._set_batch(self._batch_for(len(streams)))
        s.streams = streams
        full = len(streams) == len(self.sizes)
        if self.use_graph and full and s.graph is None and self._warm:
            self._capture(s)
        for i, frame in frames:
            np.copyto(s.buffers[i].host_frame, frame)
        if not self.zero_copy:
            s.up_start.record(self.upload)
            for i in streams:
                b = s.buffers[i]
                self.api.copy_async(b.frame_ptr, b.host_frame, b.nbytes, self.upload)
            s.up_end.record(self.upload)
            self.compute.wait(s.up_end)
        s.pre_start.record(self.compute)
        graph = s.graph if full else None
        s.graphed = graph is not None
        if graph is not None:
            graph.launch(self.compute)
        else:
            self._gpu_work(s, self.compute, timed=True)
            self._warm = True
        s.post_end.record(self.compute)
        if not self.zero_copy:
            self.download.wait(s.post_end)
            for i in streams:
                b = s.buffers[i]
                self.api.copy_async(b.host_out, b.frame_ptr, b.nbytes, self.download)
            s.down_end.record(self.download)

    def finish(self, slot: int) -> tuple[list[np.ndarray], dict[str, float]]:
        s = self._slots[slot]
        last = s.post_end if self.zero_copy else s.down_end
        last.synchronize()
        times: dict[str, float] = {}
        if not self.zero_copy:
            times["upload"] = s.up_start.elapsed_ms(s.up_end) / 1e3
            times["download"] = s.post_end.elapsed_ms(s.down_end) / 1e3
        if s.graphed:
            times["infer"] = s.pre_start.elapsed_ms(s.post_end) / 1e3
        else:
            times["preprocess"] = s.pre_start.elapsed_ms(s.pre_end) / 1e3
            times["infer"] = s.pre_end.elapsed_ms(s.infer_end) / 1e3
            times["postprocess"] = s.infer_end.elapsed_ms(s.post_end) / 1e3
        return [s.buffers[i].host_out for i in s.streams], times

    def close(self) -> None:
        for stream in (self.compute, self.upload, self.download):
            stream.synchronize()
        for s in self._slots:
            s.close()
        for stream in (self.compute, self.upload, self.download):
            stream.close()


# ----------------------------------------------------------------------------------------------
# the loop
# ----------------------------------------------------------------------------------------------
_END = object()


def make_stage(
    backend: Backend,
    sources: Sequence[Source],
    options: RunOptions,
    *,
    stage: str = "cuda",
    slots: int | None = None,
    inference=None,
    device_index: int = 0,
    cuda_graph: bool = False,
) -> Stage:
    """``cuda``: kernels + the backend's device inference (TensorRT's runner, else a host adapter);
    ``host``: the numpy references. Either is sized for one frame of each of ``sources`` per tick."""
    if stage == "host":
        return HostStage(backend, options, slots=slots or 2, streams=len(sources))
    if stage != "cuda":
        raise ToolkitError(f"unknown pipeline stage {stage!r} (expected cuda or host)")
    if inference is None:
        inference = backend.runner
        if inference is None:
            from deeplab_trt.runtime.cuda.inference import HostBackendInference

            inference = HostBackendInference(backend, batch=len(sources))
    return CudaStage(
        inference,
        options,
        [source.size for source in sources],
        slots=slots or DEFAULT_SLOTS,
        device_index=device_index,
        cuda_graph=cuda_graph,
    )


def run_video(
    backend: Backend, source: Source, sinks: Sequence[Sink], options: RunOptions | None = None, **loop
) -> Stats:
    """One stream through :func:`run_streams` (``loop``: its keyword options)."""
    return run_streams(backend, [source], [sinks], options, **loop)


def _stats_for(kind: str, stage: Stage, backend: Backend, sources: Sequence[Source], options: RunOptions) -> Stats:
    spec = backend.spec
    one = sources[0] if len(sources) == 1 else None
    return Stats(
        pipeline={"cuda": "gpu", "host": "cpu"}.get(kind, f"slots ({kind})"),
        backend=stage.name,
        model=spec.name,
        input_size=spec.input_size,
        policy=options.policy,
        mode=options.mode,
        source=one.description if one else f"{len(sources)} streams",
        source_size=one.size if one else None,
        source_fps=one.fps if one else None,
        source_frames=one.frame_count if one else None,
        streams=[StreamStats.of(i, source) for i, source in enumerate(sources)],
    )


def _expected_frames(sources: Sequence[Source], max_frames: int | None) -> int | None:
    """The progress bar's total: every stream's frame count (capped by ``max_frames``), when all are known."""
    counts = []
    for source in sources:
        count = source.frame_count
        if max_frames is not None:
            count = min(count, max_frames) if count else max_frames
        if not count:
            return None
        counts.append(count)
    return sum(counts)


def run_streams(
    backend: Backend,
    sources: Sequence[Source],
    sinks: Sequence[Sequence[Sink]],
    options: RunOptions | None = None,
    *,
    stage: str | Stage = "cuda",
    slots: int | None = None,
    inference=None,
    device_index: int = 0,
    cuda_graph: bool = False,
    live_wait_s: float = DEFAULT_LIVE_WAIT_S,
) -> Stats:
    """Segment ``sources`` and write each stream's pictures to its ``sinks``: the one video loop, CPU and GPU.

    A decode thread per stream; the stage thread gathers a tick (:class:`~deeplab_trt.runtime.ticks.TickGatherer`:
    the next frame of every running stream) and submits it as one batch to a free slot; this (the sink)
    thread finishes slots in order and writes each picture to ``sinks[stream]``. One stream is the same loop
    with ticks of one frame.

    The caller owns and closes the sinks. Drain policy (one, for every stage): a Ctrl-C, or an
    exception the stage thread raises as KeyboardInterrupt, stops feeding; frames already
    submitted are written, then the stats say ``interrupted``; a second Ctrl-C drops them. Any
    other error drops what is in flight and reaches the caller. :func:`deeplab_trt.runtime.pipeline.run_streams`
    chooses ``stage`` from the backend."""
    from tqdm import tqdm

    options = options or RunOptions()
    if len(sinks) != len(sources) or not sources:
        raise ToolkitError(f"run_streams: {len(sources)} sources need as many sink lists, got {len(sinks)}")
    if isinstance(stage, str):
        kind = stage
        stage = make_stage(
            backend,
            sources,
            options,
            stage=stage,
            slots=slots,
            inference=inference,
            device_index=device_index,
            cuda_graph=cuda_graph,
        )
    else:
        kind = type(stage).__name__
    stats = _stats_for(kind, stage, backend, sources, options)
    every_sink = list({id(sink): sink for per_stream in sinks for sink in per_stream}.values())

    free: queue.Queue = queue.Queue()
    for i in range(stage.slots):
        free.put(i)
    ready: queue.Queue = queue.Queue()  # at most `slots` entries: each holds a slot
    stop = threading.Event()
    readers = [BackgroundReader(s, max_frames=options.max_frames, queue_size=options.queue_size) for s in sources]
    gatherer = TickGatherer(readers, live_wait_s=live_wait_s)

    def gpu_thread() -> None:
        try:
            stage.bind_thread()
            while not stop.is_set():
                tick = gatherer.next(stop)
                if tick is None:
                    break
                slot = None
                while slot is None and not stop.is_set():
                    try:
                        slot = free.get(timeout=0.1)
                    except queue.Empty:
                        pass
                if slot is None:
                    break
                stage.submit(slot, [(f.stream, f.frame) for f in tick])
                ready.put((slot, tick))
        except BaseException as exc:  # handed to the sink loop, re-raised there  # noqa: BLE001
            ready.put(exc)
        finally:
            ready.put(_END)

    worker = threading.Thread(target=gpu_thread, name="gpu-stage", daemon=True)
    bar = tqdm(
        total=_expected_frames(sources, options.max_frames),
        unit="frame",
        desc="run (gpu)" if kind == "cuda" else "run",
        disable=not options.progress,
        dynamic_ncols=True,
    )
    timing = stats.stage_s

    def write(item) -> None:
        slot, tick = item
        pictures, times = stage.finish(slot)
        t0 = time.perf_counter()
        for taken, picture in zip(tick, pictures, strict=True):
            for sink in sinks[taken.stream]:
                sink.write(picture)
        for sink in every_sink:
            sink.end_tick()
        written = time.perf_counter()
        timing["encode"] += written - t0
        free.put(slot)
        for taken in tick:
            timing["decode"] += taken.decode_s
            stream = stats.streams[taken.stream]
            stream.frames += 1
            stream.latency.add(written - taken.taken_at)
        for key, value in times.items():
            timing[key] = timing.get(key, 0.0) + value
        stats.frames += len(tick)
        stats.ticks += 1
        bar.update(len(tick))

    start = time.perf_counter()
    worker.start()
    try:
        stage.bind_thread()
        try:
            while (item := ready.get()) is not _END:
                if isinstance(item, BaseException):
                    raise item
                write(item)
                if any(s.wants_stop for s in every_sink):
                    stats.stopped_by_sink = True
                    break
        except KeyboardInterrupt:
            stats.interrupted = True
            stop.set()
            try:  # drain: write what the stage already holds, in order
                while (item := ready.get()) is not _END:
                    if not isinstance(item, BaseException):
                        write(item)
            except KeyboardInterrupt:  # a second Ctrl-C: drop the rest
                pass
    finally:
        stats.wall_s = time.perf_counter() - start
        stop.set()
        worker.join(timeout=10.0)
        for reader in readers:
            reader.close()
        bar.close()
        for stream, reader, why in zip(stats.streams, readers, gatherer.ended, strict=True):
            stream.dropped = reader.dropped
            stream.ended = why or ("interrupted" if stats.interrupted else "stopped")
        stats.dropped = sum(reader.dropped for reader in readers)
        stage.close()
    return stats
