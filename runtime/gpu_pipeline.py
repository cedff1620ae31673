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

Optional CUDA graphs (``cuda_graph=True``): after the first frame (which also runs TensorRT's
``execute_async_v3`` once outside capture, as TensorRT requires), each slot's kernel +
inference sequence is captured once and replayed; the per-stage split is then reported as
one ``infer`` time (events cannot be recorded inside the captured sequence).

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
from deeplab_trt.runtime.pipeline import RunOptions, Stats
from deeplab_trt.runtime.postprocess import labels_from_output, palette_bgr, render
from deeplab_trt.runtime.preprocess import Geometry, preprocess
from deeplab_trt.runtime.video import BackgroundReader, Sink, Source

if TYPE_CHECKING:
    from deeplab_trt.runtime.backends.base import Backend

log = logging.getLogger(__name__)

GPU_STAGES = ("upload", "preprocess", "infer", "postprocess", "download")
DEFAULT_SLOTS = 3


class Stage(Protocol):
    """Per-frame work behind numbered slots: ``submit`` may be asynchronous, ``finish`` waits."""

    slots: int
    name: str

    def bind_thread(self) -> None: ...

    def submit(self, slot: int, frame: np.ndarray) -> None: ...

    def finish(self, slot: int) -> tuple[np.ndarray, dict[str, float]]: ...

    def close(self) -> None: ...


# ----------------------------------------------------------------------------------------------
# host stage: the references (what deeplab_trt.runtime.pipeline computes), behind slots
# ----------------------------------------------------------------------------------------------
class HostStage:
    """numpy/OpenCV references + ``backend.infer``: the CPU twin of :class:`CudaStage`.

    Why split this way: ``submit`` (preprocess + inference) runs on the stage thread and ``finish``
    (labels + render) on the sink thread, so labels and rendering of frame N overlap the inference
    of frame N+1 (numpy, OpenCV, ONNX Runtime and the encoders release the GIL). The output is
    copied unless the backend promises a fresh array per call (``fresh_outputs``).
    """

    def __init__(self, backend: Backend, options: RunOptions, slots: int = 2):
        self.backend = backend
        self.options = options
        self.slots = slots
        self.name = backend.name
        self.spec = backend.spec
        self.lut = palette_bgr(self.spec)
        self.batch = np.zeros(
            (backend.fixed_batch or 1, 3, self.spec.input_height, self.spec.input_width), backend.input_dtype
        )
        self._pending: dict[int, tuple] = {}

    def bind_thread(self) -> None:
        pass

    def submit(self, slot: int, frame: np.ndarray) -> None:
        t0 = time.perf_counter()
        _, geo = preprocess(frame, self.spec, self.options.policy, self.backend.input_dtype, out=self.batch[0])
        t1 = time.perf_counter()
        output = self.backend.infer(self.batch)[0]
        t2 = time.perf_counter()
        if not self.backend.fresh_outputs:
            output = output.copy()
        self._pending[slot] = (frame, output, geo, {"preprocess": t1 - t0, "infer": t2 - t1})

    def finish(self, slot: int) -> tuple[np.ndarray, dict[str, float]]:
        frame, output, geo, times = self._pending.pop(slot)
        t0 = time.perf_counter()
        labels = labels_from_output(output, self.spec, geo)
        picture = render(frame, labels, self.lut, self.options.mode, self.options.alpha)
        return picture, {**times, "postprocess": time.perf_counter() - t0}

    def close(self) -> None:
        self._pending.clear()


# ----------------------------------------------------------------------------------------------
# CUDA stage
# ----------------------------------------------------------------------------------------------
class _Slot:
    def __init__(self, api, height: int, width: int, label_dtype: np.dtype, zero_copy: bool):
        nbytes = height * width * 3
        self.host = api.PinnedBuffer(nbytes, mapped=zero_copy)
        self.host_frame = self.host.array((height, width, 3), np.uint8)
        if zero_copy:
            self.device_frame = None
            self.frame_ptr = self.host.device_ptr
            self.host_out = self.host_frame  # rendered in place, read by the host after the last event
        else:
            self.device_frame = api.DeviceBuffer(nbytes)
            self.frame_ptr = self.device_frame.ptr
            self.out = api.PinnedBuffer(nbytes)
            self.host_out = self.out.array((height, width, 3), np.uint8)
        self.labels = api.DeviceBuffer(height * width * label_dtype.itemsize)
        ev = api.Event
        self.up_start, self.up_end = ev(), ev()
        self.pre_start, self.pre_end, self.infer_end = ev(), ev(), ev()
        self.post_end = ev(blocking_sync=zero_copy)
        self.down_end = ev(blocking_sync=True)
        self.graph = None
        self.graphed = False  # whether the last submit replayed the graph (no per-stage events)

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
    """Kernels + a :class:`~deeplab_trt.runtime.cuda.inference.DeviceInference` on three streams."""

    def __init__(
        self,
        inference,
        options: RunOptions,
        frame_size: tuple[int, int],
        *,
        slots: int = DEFAULT_SLOTS,
        device_index: int = 0,
        cuda_graph: bool = False,
        zero_copy: bool | None = None,
        kernels=None,
    ):
        from deeplab_trt.runtime.cuda import api
        from deeplab_trt.runtime.cuda.kernels import get_kernels, label_dtype_for

        refusal = getattr(inference, "graph_refusal", None) if cuda_graph else None
        if refusal:
            raise ToolkitError(refusal)  # asked for, and this engine can never do it: say so, do not ignore it
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
        self.width, self.height = int(frame_size[0]), int(frame_size[1])
        self.geo = Geometry.compute((self.height, self.width), self.spec.input_size, options.policy)
        self.label_dtype = np.dtype(label_dtype_for(self.spec))
        self.compute = api.Stream()
        self.upload = api.Stream()
        self.download = api.Stream()
        self._slots = [_Slot(api, self.height, self.width, self.label_dtype, self.zero_copy) for _ in range(self.slots)]
        self.use_graph = bool(cuda_graph)
        if self.use_graph and not inference.capturable:
            log.info("CUDA graphs off: %s cannot be captured", self.name)
            self.use_graph = False
        self._eager_frames = 0
        log.info(
            "GPU pipeline on %s: %d slots, %s, %s",
            self.device.describe(),
            self.slots,
            "zero-copy mapped frames" if self.zero_copy else "pinned upload/download streams",
            "CUDA graphs" if self.use_graph else "eager launches",
        )

    def bind_thread(self) -> None:
        self.api.use_device(self.device_index)

    # ---- the per-frame GPU sequence (what a graph captures) -------------------------------
    def _gpu_work(self, s: _Slot, stream, timed: bool) -> None:
        inf = self.inference
        self.kernels.preprocess(
            s.frame_ptr,
            self.height,
            self.width,
            inf.input.ptr,
            self.spec,
            self.geo,
            out_dtype=inf.input.dtype,
            bgr=True,
            stream=stream.handle,
        )
        if timed:
            s.pre_end.record(stream)
        inf.enqueue(stream)
        if timed:
            s.infer_end.record(stream)
        self.kernels.labels_from_output(
            inf.output.ptr,
            inf.output.shape[1:],
            inf.output.dtype,
            self.spec,
            self.geo,
            s.labels.ptr,
            label_dtype=self.label_dtype,
            stream=stream.handle,
        )
        self.kernels.render(
            s.frame_ptr,
            self.height,
            self.width,
            s.labels.ptr,
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

    def submit(self, slot: int, frame: np.ndarray) -> None:
        s = self._slots[slot]
        if frame.shape != (self.height, self.width, 3) or frame.dtype != np.uint8:
            raise ToolkitError(
                f"frame size changed mid-stream ({self.width}x{self.height} → {frame.shape[1]}x{frame.shape[0]})"
            )
        if self.use_graph and s.graph is None and self._eager_frames > 0:
            self._capture(s)
        np.copyto(s.host_frame, frame)
        if not self.zero_copy:
            s.up_start.record(self.upload)
            self.api.copy_async(s.frame_ptr, s.host_frame, s.host.nbytes, self.upload)
            s.up_end.record(self.upload)
            self.compute.wait(s.up_end)
        s.pre_start.record(self.compute)
        if s.graph is not None:
            s.graph.launch(self.compute)
        else:
            self._gpu_work(s, self.compute, timed=True)
            self._eager_frames += 1
        s.post_end.record(self.compute)
        if not self.zero_copy:
            self.download.wait(s.post_end)
            self.api.copy_async(s.host_out, s.frame_ptr, s.host.nbytes, self.download)
            s.down_end.record(self.download)
        s.graphed = s.graph is not None

    def finish(self, slot: int) -> tuple[np.ndarray, dict[str, float]]:
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
        return s.host_out, times

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
    source: Source,
    options: RunOptions,
    *,
    stage: str = "cuda",
    slots: int | None = None,
    inference=None,
    device_index: int = 0,
    cuda_graph: bool = False,
) -> Stage:
    """``cuda``: kernels + the backend's device inference (TensorRT's runner, else a host adapter);
    ``host``: the numpy references."""
    if stage == "host":
        return HostStage(backend, options, slots=slots or 2)
    if stage != "cuda":
        raise ToolkitError(f"unknown pipeline stage {stage!r} (expected cuda or host)")
    if inference is None:
        inference = backend.runner
        if inference is None:
            from deeplab_trt.runtime.cuda.inference import HostBackendInference

            inference = HostBackendInference(backend)
    return CudaStage(
        inference, options, source.size, slots=slots or DEFAULT_SLOTS, device_index=device_index, cuda_graph=cuda_graph
    )


def run_video(
    backend: Backend,
    source: Source,
    sinks: Sequence[Sink],
    options: RunOptions | None = None,
    *,
    stage: str | Stage = "cuda",
    slots: int | None = None,
    inference=None,
    device_index: int = 0,
    cuda_graph: bool = False,
) -> Stats:
    """Segment ``source`` and write the pictures to ``sinks``: the one video loop, CPU and GPU.

    The caller owns and closes the sinks. Drain policy (one, for every stage): a Ctrl-C, or an
    exception the stage thread raises as KeyboardInterrupt, stops feeding; frames already
    submitted are written, then the stats say ``interrupted``; a second Ctrl-C drops them. Any
    other error drops what is in flight and reaches the caller. :func:`deeplab_trt.runtime.pipeline.run_video`
    chooses ``stage`` from the backend."""
    from tqdm import tqdm

    options = options or RunOptions()
    spec = backend.spec
    if isinstance(stage, str):
        kind = stage
        stage = make_stage(
            backend,
            source,
            options,
            stage=stage,
            slots=slots,
            inference=inference,
            device_index=device_index,
            cuda_graph=cuda_graph,
        )
    else:
        kind = type(stage).__name__
    stats = Stats(
        pipeline={"cuda": "gpu", "host": "cpu"}.get(kind, f"slots ({kind})"),
        backend=stage.name,
        model=spec.name,
        input_size=spec.input_size,
        policy=options.policy,
        mode=options.mode,
        source=source.description,
        source_size=source.size,
        source_fps=source.fps,
        source_frames=source.frame_count,
    )
    total = source.frame_count
    if options.max_frames is not None:
        total = min(total, options.max_frames) if total else options.max_frames

    free: queue.Queue = queue.Queue()
    for i in range(stage.slots):
        free.put(i)
    ready: queue.Queue = queue.Queue()  # at most `slots` entries: each holds a slot
    stop = threading.Event()
    reader = BackgroundReader(source, max_frames=options.max_frames, queue_size=options.queue_size)

    def gpu_thread() -> None:
        try:
            stage.bind_thread()
            while not stop.is_set():
                item = reader.next(stop)
                if item is None:
                    break
                frame, decode_s = item
                slot = None
                while slot is None and not stop.is_set():
                    try:
                        slot = free.get(timeout=0.1)
                    except queue.Empty:
                        pass
                if slot is None:
                    break
                stage.submit(slot, frame)
                ready.put((slot, decode_s))
        except BaseException as exc:  # handed to the sink loop, re-raised there  # noqa: BLE001
            ready.put(exc)
        finally:
            ready.put(_END)

    worker = threading.Thread(target=gpu_thread, name="gpu-stage", daemon=True)
    bar = tqdm(
        total=total,
        unit="frame",
        desc="run (gpu)" if kind == "cuda" else "run",
        disable=not options.progress,
        dynamic_ncols=True,
    )
    timing = stats.stage_s

    def write(item) -> None:
        slot, decode_s = item
        picture, times = stage.finish(slot)
        t0 = time.perf_counter()
        for sink in sinks:
            sink.write(picture)
        timing["encode"] += time.perf_counter() - t0
        free.put(slot)
        timing["decode"] += decode_s
        for key, value in times.items():
            timing[key] = timing.get(key, 0.0) + value
        stats.frames += 1
        bar.update(1)

    start = time.perf_counter()
    worker.start()
    try:
        stage.bind_thread()
        try:
            while (item := ready.get()) is not _END:
                if isinstance(item, BaseException):
                    raise item
                write(item)
                if any(s.wants_stop for s in sinks):
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
        reader.close()
        bar.close()
        stats.dropped = reader.dropped
        stage.close()
    return stats
