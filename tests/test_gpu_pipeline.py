"""The pipelined video loop of ``deeplab_trt.runtime.gpu_pipeline``.

Without a GPU: the same slot/thread/queue loop runs the numpy references (``stage="host"``)
and must produce exactly what the CPU pipeline produces. With a GPU (``gpu`` tests): the CUDA
stage with ONNX Runtime, torch or TensorRT as the inference step, against the CPU pipeline.
"""

from __future__ import annotations

import numpy as np
import pytest
from video_helpers import write_video

from deeplab_trt.runtime import gpu_pipeline
from deeplab_trt.runtime.backends import open_backend
from deeplab_trt.runtime.pipeline import STAGES, RunOptions
from deeplab_trt.runtime.pipeline import run_video as cpu_run_video
from deeplab_trt.runtime.video import Sink, open_source

FRAMES = 9


class CollectSink(Sink):
    description = "collect"

    def __init__(self, stop_after: int | None = None):
        self.pictures: list[np.ndarray] = []
        self.frames = 0
        self.stop_after = stop_after

    def write(self, frame: np.ndarray) -> None:
        self.pictures.append(frame.copy())
        self.frames += 1

    @property
    def wants_stop(self) -> bool:
        return self.stop_after is not None and self.frames >= self.stop_after


class FailingSink(Sink):
    def write(self, frame):
        raise RuntimeError("disk full")


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return write_video(tmp_path_factory.mktemp("clips") / "clip.avi", FRAMES, (160, 96), fourcc="MJPG")


@pytest.fixture(scope="module")
def lowres_onnx(onnx_factory):
    return onnx_factory(head="lowres", height=64, width=128, num_classes=5)


def run_both(backend, clip, options, **gpu_kwargs):
    cpu, other = CollectSink(), CollectSink()
    with open_source(clip) as src:
        cpu_stats = cpu_run_video(backend, src, [cpu], options)
    with open_source(clip) as src:
        stats = gpu_pipeline.run_video(backend, src, [other], options, **gpu_kwargs)
    return cpu_stats, cpu.pictures, stats, other.pictures


# ---------------------------------------------------------------------------------------------
# CPU: the slot loop with the references
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode,policy", [("overlay", "stretch"), ("labels", "letterbox")])
def test_slot_loop_with_references_equals_cpu_pipeline(lowres_onnx, clip, mode, policy):
    with open_backend(lowres_onnx) as backend:
        options = RunOptions(mode=mode, policy=policy, progress=False)
        cpu_stats, cpu_pictures, stats, pictures = run_both(backend, clip, options, stage="host", slots=3)
    assert cpu_stats.frames == stats.frames == len(pictures) == FRAMES
    assert all(np.array_equal(a, b) for a, b in zip(cpu_pictures, pictures))
    assert set(stats.stage_s) == set(STAGES) and stats.stage_s["infer"] > 0
    assert not stats.interrupted and stats.fps > 0


def test_slot_loop_max_frames_and_sink_stop(lowres_onnx, clip):
    with open_backend(lowres_onnx) as backend:
        sink = CollectSink()
        with open_source(clip) as src:
            stats = gpu_pipeline.run_video(backend, src, [sink], RunOptions(max_frames=4, progress=False), stage="host")
        assert stats.frames == 4 == len(sink.pictures)
        stopper = CollectSink(stop_after=2)
        with open_source(clip) as src:
            stats = gpu_pipeline.run_video(backend, src, [stopper], RunOptions(progress=False), stage="host")
        assert stats.stopped_by_sink and stats.frames == 2


def test_slot_loop_sink_error_propagates_and_stops_threads(lowres_onnx, clip):
    import threading

    before = {t.name for t in threading.enumerate()}
    with open_backend(lowres_onnx) as backend:
        with open_source(clip) as src, pytest.raises(RuntimeError, match="disk full"):
            gpu_pipeline.run_video(backend, src, [FailingSink()], RunOptions(progress=False), stage="host")
    leftover = {t.name for t in threading.enumerate()} - before
    assert "gpu-stage" not in leftover and "video-decode" not in leftover


# ---------------------------------------------------------------------------------------------
# GPU
# ---------------------------------------------------------------------------------------------
def agreement(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    return float(np.mean([np.mean(x == y) for x, y in zip(a, b)]))


@pytest.mark.gpu
@pytest.mark.parametrize("policy", ["stretch", "letterbox"])
@pytest.mark.parametrize("zero_copy", [False, True])
def test_cuda_stage_with_onnxruntime_inference(lowres_onnx, clip, policy, zero_copy, monkeypatch):
    """GPU kernels + ONNX Runtime (host round trip for inference only) vs the CPU pipeline."""
    from deeplab_trt.runtime.cuda import api

    if zero_copy:  # mapped pinned frames also work on discrete GPUs (reads over PCIe)
        monkeypatch.setattr(api.DeviceInfo, "zero_copy", property(lambda self: True))
    with open_backend(lowres_onnx) as backend:
        options = RunOptions(mode="labels", policy=policy, progress=False)
        cpu_stats, cpu_pictures, stats, pictures = run_both(backend, clip, options, stage="cuda")
    assert stats.pipeline == "gpu" and stats.frames == cpu_stats.frames == FRAMES
    # Preprocessing differs from OpenCV by ~1e-5, so a rare near-tie may flip through the model.
    assert agreement(cpu_pictures, pictures) >= 0.999
    assert stats.stage_s["preprocess"] > 0 and stats.stage_s["postprocess"] > 0
    if not zero_copy:
        assert stats.stage_s["upload"] > 0 and stats.stage_s["download"] > 0


@pytest.mark.gpu
def test_cuda_stage_with_torch_inference(clip):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA here")
    from torch_inference import TorchInference, tiny_lowres_model, tiny_spec

    from deeplab_trt.runtime.postprocess import labels_from_output, palette_bgr, render
    from deeplab_trt.runtime.preprocess import preprocess

    spec = tiny_spec()
    model = tiny_lowres_model()
    inference = TorchInference(model, spec)

    class Holder:  # what run_video needs from a backend when the inference step is given
        name = "torch"

    Holder.spec = spec
    sink = CollectSink()
    options = RunOptions(mode="overlay", policy="letterbox", progress=False)
    with open_source(clip) as src:
        stats = gpu_pipeline.run_video(Holder(), src, [sink], options, inference=inference)
    assert stats.frames == FRAMES
    cpu_model = tiny_lowres_model().float().eval()
    expected = []
    with open_source(clip) as src:
        for frame in src:
            x, geo = preprocess(frame, spec, "letterbox")
            with torch.no_grad():
                logits = cpu_model(torch.from_numpy(x)).numpy()[0]
            expected.append(render(frame, labels_from_output(logits, spec, geo), palette_bgr(spec), "overlay", 0.5))
    assert agreement(expected, sink.pictures) >= 0.99


class ConstantInference:
    """A capturable 'model': copies fixed low-res logits into its output (one D2D memcpy)."""

    capturable = True
    name = "constant"
    batch_limits = (1, 1)  # a fixed batch of one (no set_batch)

    def __init__(self, spec, logits: np.ndarray):
        from deeplab_trt.runtime.cuda import api

        self.api = api
        self.spec = spec
        self.input = api.empty((1, 3, *spec.input_size), np.float32)
        self.logits = api.to_device(logits[None])
        self.output = api.empty(self.logits.shape, np.float32)

    def enqueue(self, stream) -> None:
        self.api.copy_async(self.output, self.logits, self.output.nbytes, stream)

    def close(self) -> None:
        pass


@pytest.mark.gpu
def test_cuda_graph_replay_equals_eager(clip):
    from torch_inference import tiny_spec

    spec = tiny_spec(num_classes=6)
    logits = np.random.default_rng(3).standard_normal((6, 8, 12)).astype(np.float32)

    class Holder:
        name = "constant"

    Holder.spec = spec
    runs = {}
    for graph in (False, True):
        sink = CollectSink()
        with open_source(clip) as src:
            stats = gpu_pipeline.run_video(
                Holder(),
                src,
                [sink],
                RunOptions(progress=False),
                inference=ConstantInference(spec, logits),
                cuda_graph=graph,
            )
        runs[graph] = (stats, sink.pictures)
    assert runs[True][0].frames == runs[False][0].frames == FRAMES
    assert all(np.array_equal(a, b) for a, b in zip(runs[False][1], runs[True][1]))


@pytest.mark.gpu
def test_tensorrt_engine_in_the_gpu_pipeline(lowres_onnx, clip, tmp_path):
    """Build an fp32 engine for this GPU (when a TensorRT flavour can) and run it end to end."""
    from deeplab_trt.runtime.errors import ToolkitError
    from deeplab_trt.runtime.tensorrt_flavour import available

    if not available():
        pytest.skip("no TensorRT flavour installed")
    from deeplab_trt.builder.engine import BuildOptions, build_engine

    engine = tmp_path / "m.engine"
    try:
        build_engine(
            lowres_onnx, engine, BuildOptions(precision="fp32", compute_capabilities=["current"], progress=False)
        )
        backend = open_backend(engine)
    except ToolkitError as exc:
        pytest.skip(f"no engine for this GPU: {exc}")
    options = RunOptions(mode="labels", policy="letterbox", progress=False)
    with backend, open_backend(lowres_onnx) as ort:
        x = np.random.default_rng(0).standard_normal((1, 3, 64, 128)).astype(backend.input_dtype)
        np.testing.assert_allclose(backend.infer(x), ort.infer(x.astype(np.float32)), atol=1e-2, rtol=1e-2)
        _, cpu_pictures, _, _ = run_both(ort, clip, options, stage="host")
        for graph in (False, True):
            sink = CollectSink()
            with open_source(clip) as src:
                stats = gpu_pipeline.run_video(backend, src, [sink], options, cuda_graph=graph)
            assert stats.frames == FRAMES and stats.pipeline == "gpu"
            assert agreement(cpu_pictures, sink.pictures) >= 0.99
