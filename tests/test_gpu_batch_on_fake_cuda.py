"""Issue 13 item 2: one :class:`CudaStage` tick carries a frame per stream in ONE batched inference.

On the FAKE CUDA with the real kernels (``test_gpu_code_on_fake_cuda``'s fixtures): streams of
different sizes, ticks full and partial, host inference (numpy, ONNX Runtime) dynamic and fixed
batch, and TensorRT's runner over a FAKE engine. Every picture must be what the single-stream
stage (or the CPU references) makes of that frame alone, so a wrong input/output offset, a wrong
batch or a geometry taken from the wrong stream fails. The ``gpu`` test repeats it on a device.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from test_gpu_code_on_fake_cuda import (  # noqa: F401 - emulator_lib/fake are fixtures
    SPEC,
    CollectSink,
    FakeEngine,
    FakeTrt,
    NumpyBackend,
    emulator_lib,
    fake,
    model_function,
)

from deeplab_trt.runtime.errors import ToolkitError
from deeplab_trt.runtime.pipeline import RunOptions
from deeplab_trt.runtime.postprocess import labels_from_output, palette_bgr, render
from deeplab_trt.runtime.preprocess import preprocess

SIZES = [(75, 45), (40, 64), (96, 30)]  # (w, h) per stream: landscape, portrait, wide
# (stream indices) per tick: full, partial (1 of 3), partial (2 of 3), full again
TICKS = [(0, 1, 2), (1,), (0, 2), (0, 1, 2)]


class RecordingBackend(NumpyBackend):
    """:func:`model_function` with a chosen ``fixed_batch``; records the batch of each call."""

    def __init__(self, fixed_batch: int | None = None):
        self.fixed_batch = fixed_batch
        self.batch_limits = (fixed_batch, fixed_batch) if fixed_batch else (1, None)
        self.batches: list[int] = []

    def infer(self, batch):
        if self.fixed_batch is not None:
            assert batch.shape[0] == self.fixed_batch
        self.batches.append(batch.shape[0])
        return model_function(batch)


def make_frame(stream: int, tick: int) -> np.ndarray:
    """A frame of stream ``stream`` at ``tick``: a coloured disc on a grey field, moving per tick."""
    w, h = SIZES[stream]
    frame = np.full((h, w, 3), 40 + 50 * stream, np.uint8)
    colour = ((30 + 70 * tick) % 256, 220 - 60 * stream, 90 + 40 * ((stream + tick) % 4))
    cv2.circle(frame, (w // 4 + 7 * tick, h // 2), min(w, h) // 3, colour, -1)
    cv2.rectangle(frame, (w // 2, 0), (w // 2 + 9, h // 3), (250, 250, 250), -1)
    return frame


def run_ticks(stage, ticks=TICKS) -> list[list[np.ndarray]]:
    """Drive ``stage`` tick by tick (slot = tick mod slots, as the loop does), copy the pictures."""
    out = []
    for t, streams in enumerate(ticks):
        stage.submit(t % stage.slots, [(i, make_frame(i, t)) for i in streams])
        pictures, times = stage.finish(t % stage.slots)
        graphed = stage._slots[t % stage.slots].graphed  # a replayed graph reports one "infer" time
        keys = {"infer"} | (set() if graphed else {"preprocess", "postprocess"})
        keys |= set() if stage.zero_copy else {"upload", "download"}  # mapped frames: no copies
        assert set(times) == keys and all(v >= 0 for v in times.values())
        out.append([p.copy() for p in pictures])
    return out


def alone(inference_factory, options, ticks=TICKS) -> list[list[np.ndarray]]:
    """What a single-stream stage makes of each frame on its own (the batched stage's referee)."""
    from deeplab_trt.runtime.gpu_pipeline import CudaStage

    out = []
    for t, streams in enumerate(ticks):
        row = []
        for i in streams:
            stage = CudaStage(inference_factory(), options, [SIZES[i]], slots=1)
            stage.submit(0, [(0, make_frame(i, t))])
            row.append(stage.finish(0)[0][0].copy())
            stage.close()
        out.append(row)
    return out


def cpu_reference(infer, options, ticks=TICKS) -> list[list[np.ndarray]]:
    """The CPU references for each frame alone; ``infer`` maps one 1×3×H×W image to its output."""
    lut = palette_bgr(infer.spec)
    out = []
    for t, streams in enumerate(ticks):
        row = []
        for i in streams:
            frame = make_frame(i, t)
            x, geo = preprocess(frame, infer.spec, options.policy)
            labels = labels_from_output(infer(x)[0], infer.spec, geo)
            row.append(render(frame, labels, lut, options.mode, options.alpha))
        out.append(row)
    return out


def agreement(a, b) -> float:
    return float(np.mean([np.mean(x == y) for ra, rb in zip(a, b) for x, y in zip(ra, rb)]))


class _Model:
    """``model_function`` with the spec, as :func:`cpu_reference` takes it."""

    spec = SPEC

    def __call__(self, x):
        return model_function(x)


# ---------------------------------------------------------------------------------------------
# host inference (numpy model): exact per-frame equality with the single-stream stage
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("policy", ["letterbox", "stretch"])
@pytest.mark.parametrize("fixed_batch", [None, 4])
def test_batched_tick_equals_each_frame_alone(fake, policy, fixed_batch, opencv_without_ipp):  # noqa: F811 - the fixture
    from deeplab_trt.runtime.cuda.inference import HostBackendInference
    from deeplab_trt.runtime.gpu_pipeline import CudaStage

    options = RunOptions(mode="overlay", policy=policy, progress=False)
    backend = RecordingBackend(fixed_batch)
    inference = HostBackendInference(backend, batch=len(SIZES))
    assert inference.batch_limits == ((4, 4) if fixed_batch else (1, 3))
    backend.batches.clear()  # the probe
    stage = CudaStage(inference, options, SIZES, slots=2)
    got = run_ticks(stage)
    stage.close()
    # one inference per tick, of the tick's size (dynamic) or the fixed batch (padded)
    assert backend.batches == ([4] * len(TICKS) if fixed_batch else [len(t) for t in TICKS])
    assert [len(row) for row in got] == [len(t) for t in TICKS]
    expected = alone(lambda: HostBackendInference(NumpyBackend()), options)
    for t, (row, ref) in enumerate(zip(got, expected)):
        for i, a, b in zip(TICKS[t], row, ref):
            assert a.shape == (SIZES[i][1], SIZES[i][0], 3)
            assert np.array_equal(a, b), f"tick {t}, stream {i}"
    assert agreement(got, cpu_reference(_Model(), options)) >= 0.999
    # the pictures differ between streams and ticks: a picture taken from the wrong image shows
    assert not np.array_equal(got[0][0][:30, :30], got[3][0][:30, :30])


def test_partial_tick_reads_image_zero_for_its_only_stream(fake, opencv_without_ipp):  # noqa: F811 - the fixture
    """One of three streams: its frame is image 0 of a batch of 1, with stream 2's geometry."""
    from deeplab_trt.runtime.cuda.inference import HostBackendInference
    from deeplab_trt.runtime.gpu_pipeline import CudaStage

    options = RunOptions(mode="labels", policy="letterbox", progress=False)
    backend = RecordingBackend()
    stage = CudaStage(HostBackendInference(backend, batch=3), options, SIZES, slots=1)
    backend.batches.clear()
    ticks = [(2,), (0, 1, 2), (2,)]
    got = run_ticks(stage, ticks)
    stage.close()
    assert backend.batches == [1, 3, 1]
    assert agreement(got, cpu_reference(_Model(), options, ticks)) >= 0.999
    assert got[0][0].shape == (30, 96, 3)


def test_bad_ticks_are_one_line_errors(fake):  # noqa: F811 - the fixture
    from deeplab_trt.runtime.cuda.inference import HostBackendInference
    from deeplab_trt.runtime.gpu_pipeline import CudaStage

    options = RunOptions(progress=False)
    with pytest.raises(ToolkitError, match=r"3 streams in one tick exceed the model's largest batch \(2\)"):
        CudaStage(HostBackendInference(RecordingBackend(), batch=2), options, SIZES)
    with pytest.raises(ToolkitError, match="fixed batch of 2; 3 images do not fit"):
        HostBackendInference(RecordingBackend(fixed_batch=2), batch=3)
    with pytest.raises(ToolkitError, match=r"largest batch \(2\)"):
        CudaStage(HostBackendInference(RecordingBackend(fixed_batch=2)), options, SIZES)
    stage = CudaStage(HostBackendInference(RecordingBackend(), batch=3), options, SIZES, slots=1)
    with pytest.raises(ToolkitError, match=r"^stream 1: frame size changed mid-stream \(40x64 → 75x45\)$"):
        stage.submit(0, [(0, make_frame(0, 0)), (1, make_frame(0, 0))])
    for streams in ([], [(1, make_frame(1, 0)), (0, make_frame(0, 0))], [(3, make_frame(0, 0))]):
        with pytest.raises(ToolkitError, match="at most one frame per stream, in stream order"):
            stage.submit(0, streams)
    stage.submit(0, [(1, make_frame(1, 0))])  # nothing of the bad ticks was left queued
    assert len(stage.finish(0)[0]) == 1
    stage.close()


# ---------------------------------------------------------------------------------------------
# host inference: ONNX Runtime over an exported model, dynamic and fixed batch
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("batch", ["dynamic", 4])
def test_batched_tick_with_onnxruntime(fake, onnx_factory, batch, opencv_without_ipp):  # noqa: F811 - the fixture
    from deeplab_trt.runtime.backends import open_backend
    from deeplab_trt.runtime.cuda.inference import HostBackendInference
    from deeplab_trt.runtime.gpu_pipeline import CudaStage

    shape = {"dynamic_batch": (1, 2, 4)} if batch == "dynamic" else {"batch": batch}
    path = onnx_factory(head="lowres", height=64, width=128, num_classes=5, **shape)
    options = RunOptions(mode="labels", policy="letterbox", progress=False)
    with open_backend(path) as backend:
        assert backend.fixed_batch == (None if batch == "dynamic" else 4)
        stage = CudaStage(HostBackendInference(backend, batch=3), options, SIZES, slots=2)
        got = run_ticks(stage)
        stage.close()

        def one(x):  # one image through the model, padded to its fixed batch where it has one
            n = backend.fixed_batch or 1
            return backend.infer(np.concatenate([x] * n))[:1]

        one.spec = backend.spec
        assert agreement(got, cpu_reference(one, options)) >= 0.999
    # random weights still label these frames differently per stream (the comparison has teeth)
    assert len({p.tobytes() for row in got for p in row}) > 3


# ---------------------------------------------------------------------------------------------
# TensorRT's runner on a FAKE engine
# ---------------------------------------------------------------------------------------------
class FixedBatchEngine(FakeEngine):
    fixed = 4

    def __init__(self, fake_cuda):
        super().__init__(fake_cuda, dynamic=False)


@pytest.mark.parametrize("dynamic,integrated", [(True, False), (False, False), (True, True)])
def test_tensorrt_runner_runs_one_batch_per_tick(fake, dynamic, integrated, opencv_without_ipp):  # noqa: F811 - the fixture
    from deeplab_trt.runtime.backends.tensorrt import TensorRTRunner
    from deeplab_trt.runtime.gpu_pipeline import CudaStage

    fake.device.integrated = integrated  # zero-copy: each stream's mapped frame is rendered in place

    engine = FakeEngine(fake) if dynamic else FixedBatchEngine(fake)
    runner = TensorRTRunner(engine, SPEC, FakeTrt, name="fake TensorRT")
    assert runner.batch_limits == ((1, 4) if dynamic else (4, 4))
    calls: list[int] = []
    original = runner.set_batch
    runner.set_batch = lambda n: (calls.append(n), original(n))[1]
    options = RunOptions(mode="overlay", policy="letterbox", progress=False)
    stage = CudaStage(runner, options, SIZES, slots=2)
    assert stage.zero_copy == integrated
    got = run_ticks(stage)
    stage.close()
    # dynamic: grown to 3 up front, then 1, 2, 3 as the ticks change; fixed: always 4, never set
    assert calls == ([3, 1, 2, 3] if dynamic else [])
    assert engine.contexts[0].batches == ([3, 1, 2, 3] if dynamic else [4] * len(TICKS))
    assert runner.capacity == (3 if dynamic else 4)
    assert agreement(got, cpu_reference(_Model(), options)) >= 0.999
    launches = sum(len(t) for t in TICKS)
    for name in ("preprocess_u8_f32", "argmax_f32", "upsample_argmax_f32_u8", "render_u8"):
        assert fake.launches.count(name) == launches


def test_a_profile_minimum_above_one_pads_small_ticks(fake, opencv_without_ipp):  # noqa: F811 - the fixture
    from deeplab_trt.runtime.backends.tensorrt import TensorRTRunner
    from deeplab_trt.runtime.gpu_pipeline import CudaStage

    engine = FakeEngine(fake)
    engine.profile = ((2, 3, 32, 48), (2, 3, 32, 48), (4, 3, 32, 48))
    runner = TensorRTRunner(engine, SPEC, FakeTrt)
    assert runner.batch == 2 and runner.batch_limits == (2, 4)
    options = RunOptions(mode="mask", policy="letterbox", progress=False)
    stage = CudaStage(runner, options, SIZES, slots=2)
    got = run_ticks(stage)
    stage.close()
    assert engine.contexts[0].batches == [3, 2, 2, 3]  # the tick of one runs the profile's minimum
    assert agreement(got, cpu_reference(_Model(), options)) >= 0.999


def test_cuda_graphs_replay_full_ticks_and_run_partial_ones_eagerly(fake, opencv_without_ipp):  # noqa: F811 - the fixture
    from deeplab_trt.runtime.backends.tensorrt import TensorRTRunner
    from deeplab_trt.runtime.gpu_pipeline import CudaStage

    options = RunOptions(mode="labels", policy="stretch", progress=False)
    ticks = [(0, 1, 2), (0, 1, 2), (0, 1, 2), (1,), (0, 1, 2), (0, 1, 2)]
    pictures = {}
    for graph in (False, True):
        engine = FakeEngine(fake)
        stage = CudaStage(TensorRTRunner(engine, SPEC, FakeTrt), options, SIZES, slots=2, cuda_graph=graph)
        pictures[graph] = run_ticks(stage, ticks)
        stage.close()
    assert all(np.array_equal(a, b) for ra, rb in zip(pictures[False], pictures[True]) for a, b in zip(ra, rb))
    # tick 0 eager (warms batch 3); ticks 1, 2 capture slots 1, 0; tick 3 (partial) eager;
    # ticks 4, 5 replay (the batch is set back to 3 first; the graphs need no new capture)
    assert fake.captures == 2 and fake.graph_launches == 4
    assert engine.contexts[0].batches == [3, 3, 3, 1]  # eager runs + one enqueue recorded per capture
    assert agreement(pictures[True], cpu_reference(_Model(), options, ticks)) >= 0.999


# ---------------------------------------------------------------------------------------------
# a real device
# ---------------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("batch", ["dynamic", 4])
def test_batched_tick_on_a_gpu(onnx_factory, batch):
    """The same as the fake-CUDA tests, with real kernels and ONNX Runtime as the inference."""
    from deeplab_trt.runtime.backends import open_backend
    from deeplab_trt.runtime.cuda.inference import HostBackendInference
    from deeplab_trt.runtime.gpu_pipeline import CudaStage

    shape = {"dynamic_batch": (1, 2, 4)} if batch == "dynamic" else {"batch": batch}
    path = onnx_factory(head="lowres", height=64, width=128, num_classes=5, **shape)
    options = RunOptions(mode="overlay", policy="letterbox", progress=False)
    with open_backend(path) as backend:
        stage = CudaStage(HostBackendInference(backend, batch=3), options, SIZES, slots=2)
        got = run_ticks(stage)
        stage.close()

        def one(x):
            n = backend.fixed_batch or 1
            return backend.infer(np.concatenate([x] * n))[:1]

        one.spec = backend.spec
        expected = cpu_reference(one, options)
    # GPU preprocessing differs from OpenCV by ~1e-5: a rare near-tie may flip through the model
    assert agreement(got, expected) >= 0.99


# ---------------------------------------------------------------------------------------------
# the loop: run_streams with the CUDA stage, two sources of different sizes and lengths
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def two_clips(tmp_path_factory):
    """Two MJPG clips: 6 frames of 75x45 and 4 frames of 40x64 (so the last two ticks are partial)."""
    root = tmp_path_factory.mktemp("two")
    paths = []
    for stream, frames in ((0, 6), (1, 4)):
        path = root / f"s{stream}.avi"
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, SIZES[stream])
        for t in range(frames):
            writer.write(make_frame(stream, t))
        writer.release()
        paths.append(path)
    return paths


@pytest.mark.parametrize("inference", ["host", "tensorrt"])
def test_run_streams_with_the_cuda_stage(fake, two_clips, inference, opencv_without_ipp):  # noqa: F811 - the fixture
    from deeplab_trt.runtime import gpu_pipeline
    from deeplab_trt.runtime.backends.tensorrt import TensorRTRunner
    from deeplab_trt.runtime.video import open_source

    options = RunOptions(mode="overlay", policy="letterbox", progress=False)
    loop = {}
    if inference == "tensorrt":
        engine = FakeEngine(fake)
        loop = {"inference": TensorRTRunner(engine, SPEC, FakeTrt), "cuda_graph": True, "slots": 2}
    runs = {}
    for stage in ("host", "cuda"):
        sinks = [CollectSink(), CollectSink()]
        with open_source(two_clips[0]) as a, open_source(two_clips[1]) as b:
            stats = gpu_pipeline.run_streams(
                NumpyBackend(),
                [a, b],
                [[sinks[0]], [sinks[1]]],
                options,
                stage=stage,
                **(loop if stage == "cuda" else {}),
            )
        runs[stage] = (stats, sinks)
    stats, sinks = runs["cuda"]
    assert stats.pipeline == "gpu" and stats.frames == 10 and stats.ticks == 6
    assert [s.frames for s in stats.streams] == [6, 4] and [len(s.pictures) for s in sinks] == [6, 4]
    assert {"upload", "preprocess", "infer", "postprocess", "download"} <= set(stats.stage_s)
    for host_sink, cuda_sink in zip(runs["host"][1], sinks):
        assert [p.shape for p in host_sink.pictures] == [p.shape for p in cuda_sink.pictures]
        assert agreement([host_sink.pictures], [cuda_sink.pictures]) >= 0.999
    if inference == "tensorrt":  # 4 full ticks of 2 (graphs from the second), then 2 eager ticks of 1
        assert engine.contexts[0].batches == [2, 2, 2, 1, 1]
        assert fake.captures == 2 and fake.graph_launches == 3


@pytest.mark.gpu
def test_run_streams_with_the_cuda_stage_on_a_gpu(onnx_factory, two_clips):
    """The loop over two clips on a device: the CUDA stage (ORT inference) vs the host stage."""
    from deeplab_trt.runtime import gpu_pipeline
    from deeplab_trt.runtime.backends import open_backend
    from deeplab_trt.runtime.video import open_source

    path = onnx_factory(head="lowres", height=64, width=128, num_classes=5, dynamic_batch=(1, 2, 4))
    options = RunOptions(mode="labels", policy="letterbox", progress=False)
    runs = {}
    with open_backend(path) as backend:
        for stage in ("host", "cuda"):
            sinks = [CollectSink(), CollectSink()]
            with open_source(two_clips[0]) as a, open_source(two_clips[1]) as b:
                stats = gpu_pipeline.run_streams(backend, [a, b], [[sinks[0]], [sinks[1]]], options, stage=stage)
            runs[stage] = (stats, sinks)
    assert runs["cuda"][0].frames == 10 and runs["cuda"][0].ticks == 6
    for host_sink, cuda_sink in zip(runs["host"][1], runs["cuda"][1]):
        assert agreement([host_sink.pictures], [cuda_sink.pictures]) >= 0.99
