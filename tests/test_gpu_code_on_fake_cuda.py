"""The GPU-side Python run end to end on a FAKE CUDA (``fake_cuda``) with the real kernels.

What is real here: ``kernels.cu`` (NVRTC-compiled cubin handed to the fake driver, and the same
source executed by the CPU grid emulator), every line of ``runtime/cuda/api.py``,
``kernels.py``, ``gpu_pipeline.CudaStage``, ``interop.Segmenter`` and
``backends/tensorrt.TensorRTRunner``/``TensorRTBackend``. What is fake: cuda-python (host memory,
synchronous streams) and, for the runner, the TensorRT engine (a FAKE engine with TensorRT's
name-based API computing a fixed function). The ``gpu`` tests repeat the important parts on
real hardware.
"""

from __future__ import annotations

import ctypes
import types

import cv2
import fake_cuda
import kernel_emulator
import numpy as np
import pytest

from deeplab_trt.runtime.pipeline import RunOptions
from deeplab_trt.runtime.postprocess import labels_from_output, palette_bgr, render
from deeplab_trt.runtime.preprocess import preprocess
from deeplab_trt.runtime.spec import ModelSpec, voc_palette
from deeplab_trt.runtime.video import Sink, open_source

FRAMES = 6
SPEC = ModelSpec("fake", [f"c{i}" for i in range(6)], voc_palette(6), 32, 48, head="lowres", output_stride=8)


@pytest.fixture(scope="module")
def emulator_lib(tmp_path_factory):
    if kernel_emulator.compiler() is None:
        pytest.skip("no C++ compiler for the kernel emulator")
    pytest.importorskip("cuda.bindings.nvrtc")
    return kernel_emulator.build(tmp_path_factory.mktemp("emu"))


@pytest.fixture
def fake(monkeypatch, emulator_lib, tmp_path):
    monkeypatch.setenv("DEEPLAB_TRT_KERNEL_CACHE", str(tmp_path / "kcache"))
    return fake_cuda.install(monkeypatch, emulator_lib)


def model_function(batch: np.ndarray) -> np.ndarray:
    """What the FAKE engine computes: N×3×32×48 → N×6×4×6 'logits' (8×8 mean pools, mixed)."""
    x = batch.astype(np.float32)
    n = x.shape[0]
    pooled = x.reshape(n, 3, 4, 8, 6, 8).mean(axis=(3, 5))
    out = np.stack([pooled[:, c % 3] * (1 + 0.5 * c) - 0.3 * c for c in range(6)], axis=1)
    return out.astype(np.float32)


class NumpyBackend:
    """A host Backend computing :func:`model_function` (the reference side of the comparisons)."""

    name = "numpy model"
    spec = SPEC
    input_dtype = np.dtype(np.float32)
    fixed_batch = None
    batch_limits = (1, None)
    pipeline = "cpu"
    fresh_outputs = True
    runner = None

    def infer(self, batch):
        return model_function(batch)

    def close(self):
        pass


# ---------------------------------------------------------------------------------------------
# a FAKE TensorRT engine (name-based API of TensorRT 10+/RTX)
# ---------------------------------------------------------------------------------------------
class FakeTrt:
    class TensorIOMode:
        INPUT, OUTPUT = "INPUT", "OUTPUT"

    class DataType:
        FLOAT, HALF = "FLOAT", "HALF"

    @staticmethod
    def nptype(dtype):
        return {"FLOAT": np.float32, "HALF": np.float16}[dtype]


class FakeContext:
    def __init__(self, engine):
        self.engine = engine
        self.device = engine.fake.context()  # a TensorRT context lives in the CUDA context current at creation
        self.addresses = {}
        self.batch = None
        self.executions = 0
        self.batches: list[int] = []  # the batch of each execution

    def set_tensor_address(self, name, ptr):
        self.addresses[name] = int(ptr)
        return True

    def set_input_shape(self, name, shape):
        lo, _, hi = self.engine.profile
        if name != "input" or not lo[0] <= shape[0] <= hi[0]:
            return False
        self.batch = shape[0]
        return True

    def get_tensor_shape(self, name):
        n = self.batch if self.engine.dynamic else self.engine.fixed
        return (n, 3, 32, 48) if name == "input" else (n, 6, 4, 6)

    def execute_async_v3(self, stream):
        if self.engine.fake.context() != self.device:
            return False  # TensorRT: enqueue from a thread whose current CUDA context is another one fails
        n = self.batch if self.engine.dynamic else self.engine.fixed
        self.batches.append(n)
        src, dst = self.addresses["input"], self.addresses["logits"]
        self.executions += 1

        def run():
            x = np.ctypeslib.as_array((ctypes.c_float * (n * 3 * 32 * 48)).from_address(src)).reshape(n, 3, 32, 48)
            y = np.ctypeslib.as_array((ctypes.c_float * (n * 6 * 4 * 6)).from_address(dst)).reshape(n, 6, 4, 6)
            y[...] = model_function(x)

        self.engine.fake._enqueue(stream, run)
        return True


class FakeEngine:
    num_io_tensors = 2
    fixed = 1  # the batch of a static (dynamic=False) engine

    def __init__(self, fake, dynamic=True):
        self.fake, self.dynamic = fake, dynamic
        self.profile = ((1, 3, 32, 48), (1, 3, 32, 48), (4, 3, 32, 48))
        self.contexts = []

    def get_tensor_name(self, i):
        return ("input", "logits")[i]

    def get_tensor_mode(self, name):
        return FakeTrt.TensorIOMode.INPUT if name == "input" else FakeTrt.TensorIOMode.OUTPUT

    def get_tensor_dtype(self, name):
        return FakeTrt.DataType.FLOAT

    def get_tensor_shape(self, name):
        n = -1 if self.dynamic else self.fixed
        return (n, 3, 32, 48) if name == "input" else (n, 6, 4, 6)

    def get_tensor_profile_shape(self, name, profile):
        return self.profile

    def create_execution_context(self):
        ctx = FakeContext(self)
        self.contexts.append(ctx)
        return ctx


class FakeRuntimeCache:
    """TensorRT-RTX's ``IRuntimeCache`` (same method names): kernels 'compiled' by the FAKE RTX context."""

    def __init__(self):
        self.entries = b""
        self.deserialized = []

    def serialize(self):
        return self.entries

    def deserialize(self, blob):
        self.deserialized.append(bytes(blob))
        ok = bytes(blob).startswith(b"FAKE-RTX")  # the real one validates RTX version and GPU
        if ok:
            self.entries = bytes(blob)
        return ok

    def reset(self):
        self.entries = b""
        return True


class FakeRuntimeConfig:
    """TensorRT-RTX's ``IRuntimeConfig`` (the runtime-cache part, same method names)."""

    def __init__(self):
        self.cache = None

    def create_runtime_cache(self):
        return FakeRuntimeCache()

    def set_runtime_cache(self, cache):
        self.cache = cache
        return True

    def get_runtime_cache(self):
        return self.cache


class FakeRtxContext(FakeContext):
    def __init__(self, engine, runtime_config):
        super().__init__(engine)
        self.runtime_config = runtime_config

    def execute_async_v3(self, stream):
        cache = self.runtime_config.cache if self.runtime_config is not None else None
        if cache is None or not cache.entries:  # JIT compile, kept in the runtime cache if there is one
            self.engine.compiles += 1
            if cache is not None:
                cache.entries = b"FAKE-RTX kernels"
        return super().execute_async_v3(stream)


class FakeRtxEngine(FakeEngine):
    """A FAKE TensorRT-RTX engine: ``create_runtime_config`` and contexts created from one."""

    def __init__(self, fake, dynamic=True):
        super().__init__(fake, dynamic)
        self.compiles = 0
        self.configs = []

    def create_runtime_config(self):
        self.configs.append(FakeRuntimeConfig())
        return self.configs[-1]

    def create_execution_context(self, runtime_config=None):
        ctx = FakeRtxContext(self, runtime_config)
        self.contexts.append(ctx)
        return ctx


class CollectSink(Sink):
    description = "collect"

    def __init__(self):
        self.pictures, self.frames = [], 0

    def write(self, frame):
        self.pictures.append(frame.copy())
        self.frames += 1


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("clip") / "c.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (75, 45))
    rng = np.random.default_rng(1)
    for i in range(FRAMES):
        frame = np.full((45, 75, 3), 60, np.uint8)
        cv2.circle(frame, (10 + 9 * i, 22), 12, (int(rng.integers(0, 255)), 200, 30), -1)
        writer.write(frame)
    writer.release()
    return path


def reference_pictures(clip, options) -> list[np.ndarray]:
    out = []
    with open_source(clip) as src:
        for frame in src:
            x, geo = preprocess(frame, SPEC, options.policy)
            labels = labels_from_output(model_function(x)[0], SPEC, geo)
            out.append(render(frame, labels, palette_bgr(SPEC), options.mode, options.alpha))
    return out


# ---------------------------------------------------------------------------------------------
# tests
# ---------------------------------------------------------------------------------------------


def fake_loaded_engine(fake):
    """What ``load_engine`` returns, around a fake engine: the input of ``TensorRTBackend``."""
    return types.SimpleNamespace(
        path="fake.engine",
        engine=FakeEngine(fake),
        spec=SPEC,
        flavour=types.SimpleNamespace(label="FAKE TensorRT", module=FakeTrt),
    )


def test_api_objects_on_fake(fake):
    from deeplab_trt.runtime.cuda import api

    info = api.use_device(0)
    assert info.arch == "sm_87" and not info.integrated and info.zero_copy is False
    host = np.arange(10, dtype=np.float32)
    dev = api.to_device(host)
    assert np.array_equal(dev.copy_to_host(), host)
    cai = dev.__cuda_array_interface__
    assert cai["version"] == 3 and cai["typestr"] == "<f4" and cai["shape"] == (10,) and cai["data"][0] == dev.ptr
    pinned = api.PinnedBuffer(64, mapped=True)
    assert pinned.device_ptr == pinned.ptr and pinned.array((4, 4), np.float32).shape == (4, 4)
    s, a, b = api.Stream(), api.Event(), api.Event()
    a.record(s)
    b.record(s)
    assert a.elapsed_ms(b) >= 0 and b.query()
    two = api.empty((2, 3), np.int32)
    assert two[1].ptr == two.ptr + 12 and two.reshape(-1).shape == (6,)
    with pytest.raises(api.CudaError, match="^cudaSetDevice failed: cudaErrorInvalidValue"):
        api.check(fake.runtime.cudaSetDevice(3), "cudaSetDevice")


def test_device_arrays_report_their_device_ordinal(fake):
    """Issue 11 item 8: buffers made after ``use_device(1)`` live on device 1 (DLPack must say so)."""
    from deeplab_trt.runtime.cuda import api, dlpack

    fake.device_count = 2
    api.use_device(1)
    buffer = api.DeviceBuffer(64)
    assert buffer.array((16,), np.float32).__dlpack_device__() == (dlpack.kDLCUDA, 1)
    one = api.empty((2, 3), np.int32)
    assert one.__dlpack_device__() == (dlpack.kDLCUDA, 1)
    assert one[1].device_id == 1 and one.reshape(-1).device_id == 1
    api.use_device(0)
    assert api.empty((4,), np.uint8).__dlpack_device__() == (dlpack.kDLCUDA, 0)
    assert one.__dlpack_device__() == (dlpack.kDLCUDA, 1)  # an array keeps the device it was made on


@pytest.mark.parametrize("policy", ["stretch", "letterbox"])
@pytest.mark.parametrize("integrated", [False, True])
def test_cuda_stage_with_fake_tensorrt_engine(fake, clip, policy, integrated, opencv_without_ipp):
    from deeplab_trt.runtime import gpu_pipeline
    from deeplab_trt.runtime.backends.tensorrt import TensorRTRunner

    fake.device.integrated = integrated
    runner = TensorRTRunner(FakeEngine(fake), SPEC, FakeTrt, name="fake TensorRT")
    options = RunOptions(mode="overlay", policy=policy, progress=False)
    sink = CollectSink()
    holder = types.SimpleNamespace(spec=SPEC, name="fake")
    with open_source(clip) as src:
        stats = gpu_pipeline.run_video(holder, src, [sink], options, inference=runner, slots=2)
    assert stats.frames == FRAMES and stats.pipeline == "gpu"
    expected = reference_pictures(clip, options)
    agree = np.mean([np.mean(a == b) for a, b in zip(expected, sink.pictures)])
    assert agree >= 0.999
    assert "upload" in stats.stage_s if not integrated else "upload" not in stats.stage_s
    for name in ("preprocess_u8_f32", "argmax_f32", "upsample_argmax_f32_u8", "render_u8"):
        assert fake.launches.count(name) == FRAMES


def test_cuda_graph_replays_the_same_pictures(fake, clip, opencv_without_ipp):
    from deeplab_trt.runtime import gpu_pipeline
    from deeplab_trt.runtime.backends.tensorrt import TensorRTRunner

    options = RunOptions(mode="labels", policy="letterbox", progress=False)
    pictures = {}
    for graph in (False, True):
        engine = FakeEngine(fake)
        runner = TensorRTRunner(engine, SPEC, FakeTrt)
        sink = CollectSink()
        with open_source(clip) as src:
            stats = gpu_pipeline.run_video(
                types.SimpleNamespace(spec=SPEC, name="fake"),
                src,
                [sink],
                options,
                inference=runner,
                slots=3,
                cuda_graph=graph,
            )
        pictures[graph] = sink.pictures
        assert stats.frames == FRAMES
    assert all(np.array_equal(a, b) for a, b in zip(pictures[False], pictures[True]))
    # One graph per slot, captured after the first (eager) frame; the other frames replay them.
    assert fake.captures == 3 and fake.graph_launches == FRAMES - 1
    assert not fake.graphs, "graphs destroyed when the stage closes"
    assert engine.contexts[0].executions == 1 + 3  # the eager frame + one enqueue recorded per capture


def test_cuda_stage_with_host_backend_inference(fake, clip, opencv_without_ipp):
    from deeplab_trt.runtime import gpu_pipeline

    options = RunOptions(mode="mask", policy="stretch", progress=False)
    sink = CollectSink()
    with open_source(clip) as src:
        stats = gpu_pipeline.run_video(NumpyBackend(), src, [sink], options)
    assert stats.frames == FRAMES and stats.backend == "numpy model (host inference)"
    expected = reference_pictures(clip, options)
    assert np.mean([np.mean(a == b) for a, b in zip(expected, sink.pictures)]) >= 0.999


def test_tensorrt_backend_host_contract(fake):
    from deeplab_trt.runtime.backends.base import Backend
    from deeplab_trt.runtime.backends.tensorrt import TensorRTBackend
    from deeplab_trt.runtime.errors import ToolkitError

    loaded = fake_loaded_engine(fake)
    backend = TensorRTBackend(loaded)
    assert isinstance(backend, Backend) and backend.pipeline == "gpu" and backend.fixed_batch is None
    x = np.random.default_rng(0).standard_normal((3, 3, 32, 48)).astype(np.float32)
    np.testing.assert_allclose(backend.infer(x), model_function(x), rtol=1e-6)  # grows to batch 3
    np.testing.assert_allclose(backend.infer(x[:1]), model_function(x[:1]), rtol=1e-6)
    assert backend.runner.capacity == 3 and backend.runner.batch == 1
    with pytest.raises(ToolkitError, match="outside the engine's profile"):
        backend.infer(np.zeros((5, 3, 32, 48), np.float32))
    with pytest.raises(ToolkitError, match="expected an N×3×32×48 batch"):
        backend.infer(np.zeros((1, 3, 30, 48), np.float32))
    backend.close()


def test_fake_rtx_runtime_api_mirrors_the_real_bindings(rtx_flavour):
    """The FAKE RTX classes use only names the real TensorRT-RTX bindings have."""
    trt = rtx_flavour.module
    for fake_cls, real in (
        (FakeRuntimeCache, trt.IRuntimeCache),
        (FakeRuntimeConfig, trt.IRuntimeConfig),
        (FakeRtxEngine, trt.ICudaEngine),
    ):
        public = {n for n, v in vars(fake_cls).items() if callable(v) and not n.startswith("_")}
        assert public <= set(dir(real)), (fake_cls.__name__, public - set(dir(real)))
    assert "runtime_config: " in trt.ICudaEngine.create_execution_context.__doc__  # the keyword the runner passes


def test_rtx_runtime_cache_is_loaded_at_creation_and_saved_at_close(fake, tmp_path):
    """Issue 11 item 6: the second start loads what the first compiled (no JIT again); off means no config."""
    from deeplab_trt.runtime.backends.tensorrt import TensorRTRunner
    from deeplab_trt.runtime.cuda import api

    path = tmp_path / "rc" / "m.cache"
    first = FakeRtxEngine(fake)
    runner = TensorRTRunner(first, SPEC, FakeTrt, runtime_cache=path)
    assert first.contexts[0].runtime_config is first.configs[0] and first.configs[0].cache is not None
    stream = api.Stream()
    runner.enqueue(stream)
    stream.synchronize()
    assert first.compiles == 1 and not path.exists()
    runner.close()
    assert path.read_bytes() == b"FAKE-RTX kernels" and [p.name for p in path.parent.iterdir()] == ["m.cache"]

    second = FakeRtxEngine(fake)
    runner = TensorRTRunner(second, SPEC, FakeTrt, runtime_cache=path)
    assert second.configs[0].cache.deserialized == [b"FAKE-RTX kernels"]
    runner.enqueue(stream)
    stream.synchronize()
    assert second.compiles == 0  # loaded, not compiled
    runner.close()

    path.write_bytes(b"from another GPU")  # rejected by deserialize: a new cache, then saved over it
    third = FakeRtxEngine(fake)
    runner = TensorRTRunner(third, SPEC, FakeTrt, runtime_cache=path)
    runner.enqueue(stream)
    stream.synchronize()
    runner.close()
    assert third.compiles == 1 and path.read_bytes() == b"FAKE-RTX kernels"

    off = FakeRtxEngine(fake)
    TensorRTRunner(off, SPEC, FakeTrt).close()
    assert off.configs == [] and off.contexts[0].runtime_config is None
    stream.close()


def test_tensorrt_backend_keeps_the_rtx_runtime_cache_per_engine_and_gpu(fake, tmp_path, monkeypatch):
    from deeplab_trt.runtime.backends.tensorrt import TensorRTBackend
    from deeplab_trt.runtime.run_command import _engine_options

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))

    def loaded(engine):
        return types.SimpleNamespace(
            path="fake.engine",
            engine=engine,
            spec=SPEC,
            flavour=types.SimpleNamespace(
                label="FAKE TensorRT-RTX",
                module=FakeTrt,
                version_string="1.7.1.116",
                has_runtime_cache=True,
                capture_needs_user_allocation=True,
            ),
            record=types.SimpleNamespace(engine=types.SimpleNamespace(sha256="ab" * 32), user_allocation=True),
        )

    backend = TensorRTBackend(loaded(FakeRtxEngine(fake)))
    backend.infer(np.zeros((1, 3, 32, 48), np.float32))
    backend.close()
    folder = tmp_path / "xdg" / "deeplab-trt" / "tensorrt-rtx-runtime"
    assert [p.name for p in folder.iterdir()] == ["abababababababab-rtx1.7.1.116-sm87-fake-gpu-host-memory.cache"]
    off = FakeRtxEngine(fake)
    TensorRTBackend(loaded(off), runtime_cache=False).close()
    assert off.configs == []
    assert _engine_options(types.SimpleNamespace(model="m.engine", no_runtime_cache=True)) == {"runtime_cache": False}
    assert _engine_options(types.SimpleNamespace(model="m.onnx", no_runtime_cache=True)) == {}
    assert _engine_options(types.SimpleNamespace(model="m.plan", no_runtime_cache=False)) == {}
    many = types.SimpleNamespace(model="m.engine", no_runtime_cache=False)
    assert _engine_options(many, streams=3) == {"batch": 3}  # run -s A -s B -s C: buffers for 3 images
    assert _engine_options(types.SimpleNamespace(model="m.onnx", no_runtime_cache=False), streams=3) == {}


def test_cuda_graph_on_rtx_needs_an_engine_built_with_user_allocation(fake, clip, opencv_without_ipp):
    """Issue 11 item 5: asked for and impossible is one line saying why, not a silent eager run."""
    from deeplab_trt.runtime import gpu_pipeline
    from deeplab_trt.runtime.backends.tensorrt import TensorRTRunner
    from deeplab_trt.runtime.errors import ToolkitError

    options = RunOptions(mode="labels", policy="letterbox", progress=False)
    host = types.SimpleNamespace(spec=SPEC, name="fake")
    for recorded, how in ((False, "was built without it"), (None, "does not record it")):
        runner = TensorRTRunner(
            FakeRtxEngine(fake), SPEC, FakeTrt, capture_needs_user_allocation=True, user_allocation=recorded
        )
        assert not runner.capturable and how in runner.graph_refusal
        with open_source(clip) as src, pytest.raises(ToolkitError, match=f"REQUIRE_USER_ALLOCATION; this one {how}"):
            gpu_pipeline.run_video(host, src, [CollectSink()], options, inference=runner, cuda_graph=True)
        with open_source(clip) as src:  # without cuda_graph the same engine runs
            assert gpu_pipeline.run_video(host, src, [CollectSink()], options, inference=runner).frames == FRAMES
        runner.close()
    runner = TensorRTRunner(
        FakeRtxEngine(fake), SPEC, FakeTrt, capture_needs_user_allocation=True, user_allocation=True
    )
    assert runner.graph_refusal is None and runner.capturable
    with open_source(clip) as src:
        stats = gpu_pipeline.run_video(host, src, [CollectSink()], options, inference=runner, slots=3, cuda_graph=True)
    assert stats.frames == FRAMES and fake.captures == 3


def test_static_engine_rejects_other_batches(fake):
    from deeplab_trt.runtime.backends.tensorrt import TensorRTRunner
    from deeplab_trt.runtime.errors import ToolkitError

    runner = TensorRTRunner(FakeEngine(fake, dynamic=False), SPEC, FakeTrt)
    assert runner.fixed_batch == 1 and runner.input.shape == (1, 3, 32, 48) and runner.output.shape == (1, 6, 4, 6)
    with pytest.raises(ToolkitError, match="fixed batch of 1"):
        runner.set_batch(2)


def test_segmenter_on_cuda_array_interface_images(fake, opencv_without_ipp):
    from deeplab_trt.runtime.backends.tensorrt import TensorRTRunner
    from deeplab_trt.runtime.cuda import api
    from deeplab_trt.runtime.interop import Segmenter

    class ForeignArray:  # what a CuPy/pycuda array looks like to us: pitched rows, our fake device memory
        def __init__(self, buffer, shape, strides):
            self.buffer = buffer
            self.__cuda_array_interface__ = {
                "shape": shape,
                "typestr": "|u1",
                "data": (buffer.ptr, False),
                "strides": strides,
                "version": 3,
                "stream": 1,
            }

    frame = np.random.default_rng(5).integers(0, 256, (45, 75, 3), dtype=np.uint8)
    pitch = 75 * 3 + 13
    padded = np.zeros((45, pitch), np.uint8)
    padded[:, :225] = frame.reshape(45, 225)
    buffer = api.to_device(padded)
    image = ForeignArray(buffer, (45, 75, 3), (pitch, 3, 1))
    seg = Segmenter(inference=TensorRTRunner(FakeEngine(fake), SPEC, FakeTrt), policy="letterbox")
    labels, picture = seg.process(image, mode="overlay", alpha=0.25)
    x, geo = preprocess(frame, SPEC, "letterbox")
    expected_labels = labels_from_output(model_function(x)[0], SPEC, geo)
    assert np.array_equal(labels.copy_to_host(), expected_labels)
    assert np.array_equal(picture.copy_to_host(), render(frame, expected_labels, palette_bgr(SPEC), "overlay", 0.25))
    assert labels.__cuda_array_interface__.get("stream") is None  # sync=True: complete on return
    out = api.empty((45, 75), np.uint8)
    again = seg.segment(image, out=out, sync=False)
    assert again.ptr == out.ptr and again.__cuda_array_interface__["stream"] == seg.stream.handle
    seg.render(image, labels, mode="labels", in_place=True)
    rendered = buffer.copy_to_host()[:, :225].reshape(45, 75, 3)
    assert np.array_equal(rendered, np.repeat(expected_labels[:, :, None], 3, axis=2))
    assert (buffer.copy_to_host()[:, 225:] == 0).all(), "row padding untouched"
    seg.close()


def test_segmenter_over_a_host_backend_starts_the_gpu_path_on_the_first_device_frame(fake, clip, opencv_without_ipp):
    """numpy frames → host path (no CUDA call at all); a device frame → kernels + host inference; same numbers."""
    from deeplab_trt.runtime.cuda import api
    from deeplab_trt.runtime.interop import Segmenter as OldName
    from deeplab_trt.runtime.segmenter import Segmenter

    assert OldName is Segmenter  # the README's old import path still works
    seg = Segmenter(NumpyBackend(), policy="letterbox")
    with open_source(clip) as src:
        frames = list(src)
    host = [seg.process(frame) for frame in frames]
    assert fake.calls == [], "the host path must not touch CUDA"
    for frame, (labels, picture) in zip(frames, host):
        x, geo = preprocess(frame, SPEC, "letterbox")
        assert isinstance(labels, np.ndarray) and np.array_equal(
            labels, labels_from_output(model_function(x)[0], SPEC, geo)
        )
        dev = api.to_device(frame)
        dev_labels = seg.segment(dev)
        assert isinstance(dev_labels, api.DeviceArray) and np.array_equal(dev_labels.copy_to_host(), labels)
        assert np.array_equal(seg.render(dev, dev_labels).copy_to_host(), picture)
    assert seg.inference.name == "numpy model (host inference)" and "cudaSetDevice" in fake.calls
    seg.close()


def test_segmenter_over_an_engine_serves_host_and_device_frames(fake, clip, opencv_without_ipp):
    """A TensorRT backend: host frames through its host I/O (pinned staging), device frames through its runner."""
    from deeplab_trt.runtime.backends.tensorrt import TensorRTBackend
    from deeplab_trt.runtime.cuda import api
    from deeplab_trt.runtime.segmenter import Segmenter

    loaded = fake_loaded_engine(fake)
    backend = TensorRTBackend(loaded)
    seg = Segmenter(backend)
    context = loaded.engine.contexts[0]
    with open_source(clip) as src:
        frame = src.read()
    x, geo = preprocess(frame, SPEC)
    expected = labels_from_output(model_function(x)[0], SPEC, geo)
    labels = seg.segment(frame)
    assert isinstance(labels, np.ndarray) and np.array_equal(labels, expected) and context.executions == 1
    assert fake.launches == [], "host frames: the numpy references, no kernels"
    dev_labels = seg.segment(api.to_device(frame))
    assert np.array_equal(dev_labels.copy_to_host(), expected) and context.executions == 2
    assert seg.inference is backend.runner and "upsample_argmax_f32_u8" in fake.launches
    seg.close()
    assert backend.runner is not None, "a Backend passed in stays open: its owner closes it"
    backend.close()


def test_segmenter_over_a_device_inference_rejects_host_frames(fake, clip):
    from deeplab_trt.runtime.backends.tensorrt import TensorRTRunner
    from deeplab_trt.runtime.errors import ToolkitError
    from deeplab_trt.runtime.segmenter import Segmenter

    seg = Segmenter(inference=TensorRTRunner(FakeEngine(fake), SPEC, FakeTrt))
    with open_source(clip) as src:
        frame = src.read()
    with pytest.raises(ToolkitError, match=r"takes CUDA arrays only, got a host \(numpy\) frame"):
        seg.segment(frame)
    seg.close()


def test_segmenter_binds_its_device_in_every_entry_point(fake, clip, opencv_without_ipp):
    """Issue 11 item 4: calls from another thread, or after the caller switched devices, launch in
    the Segmenter's context (the fake refuses launches in none or another device's context)."""
    import threading

    from deeplab_trt.runtime.backends.tensorrt import TensorRTRunner
    from deeplab_trt.runtime.cuda import api
    from deeplab_trt.runtime.segmenter import Segmenter

    fake.device_count = 2
    api.use_device(1)
    seg = Segmenter(inference=TensorRTRunner(FakeEngine(fake), SPEC, FakeTrt, device_index=1), device=1)
    with open_source(clip) as src:
        frame = src.read()
    x, geo = preprocess(frame, SPEC)
    expected = labels_from_output(model_function(x)[0], SPEC, geo)
    image = api.to_device(frame)
    api.use_device(0)  # the caller works on device 0 now
    labels = seg.segment(image)
    assert np.array_equal(labels.copy_to_host(), expected)
    results: dict[str, object] = {}

    def worker():
        try:
            results["labels"], results["picture"] = seg.process(image)
            seg.preprocess(image)
            seg.render(image, labels, mode="labels")
        except Exception as exc:  # noqa: BLE001 - reported to the test thread
            results["error"] = exc

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert "error" not in results, results.get("error")
    assert np.array_equal(results["labels"].copy_to_host(), expected)
    api.use_device(1)
    fake.runtime.cudaSetDevice(0)  # what torch.cuda.set_device(0) does: cudart moves, our cache does not know
    assert np.array_equal(seg.segment(image).copy_to_host(), expected)
    seg.close()


def test_engine_host_frames_from_another_thread_run_on_the_engines_device(fake, clip, opencv_without_ipp):
    """Issue 11 item 4 for the host path over an engine: TensorRTBackend.infer binds its device."""
    import threading

    from deeplab_trt.runtime.backends.tensorrt import TensorRTBackend
    from deeplab_trt.runtime.cuda import api
    from deeplab_trt.runtime.segmenter import Segmenter

    fake.device_count = 2
    loaded = fake_loaded_engine(fake)
    backend = TensorRTBackend(loaded, device_index=1)
    seg = Segmenter(backend, device=1)
    with open_source(clip) as src:
        frame = src.read()
    x, geo = preprocess(frame, SPEC)
    expected = labels_from_output(model_function(x)[0], SPEC, geo)
    api.use_device(0)
    results: dict[str, object] = {}

    def worker():
        try:
            results["labels"] = seg.segment(frame)
        except Exception as exc:  # noqa: BLE001 - reported to the test thread
            results["error"] = exc

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert "error" not in results, results.get("error")
    assert np.array_equal(results["labels"], expected) and np.array_equal(seg.segment(frame), expected)
    seg.close()
    backend.close()


def test_preprocess_without_out_advertises_the_pending_stream(fake, clip, monkeypatch):
    """Issue 11 item 7: ``preprocess(sync=False)`` into the engine's own buffer says which stream
    still writes it, through ``__cuda_array_interface__`` and ``__dlpack__``."""
    from deeplab_trt.runtime.backends.tensorrt import TensorRTRunner
    from deeplab_trt.runtime.cuda import api
    from deeplab_trt.runtime.segmenter import Segmenter

    seg = Segmenter(inference=TensorRTRunner(FakeEngine(fake), SPEC, FakeTrt))
    with open_source(clip) as src:
        image = api.to_device(src.read())
    pending = seg.preprocess(image, sync=False)
    assert pending.ptr == seg.inference.input.ptr
    assert pending.__cuda_array_interface__["stream"] == seg.stream.handle
    ordered = []
    monkeypatch.setattr(api, "_order_streams", lambda producer, consumer: ordered.append((producer, consumer)))
    capsule = pending.__dlpack__(stream=7)
    assert ordered == [(seg.stream.handle, 7)] and capsule is not None
    done = seg.preprocess(image)
    assert "stream" not in done.__cuda_array_interface__
    assert seg.inference.input.stream is None, "the engine's own buffer is not re-labelled"
    seg.close()


def test_gpu_benchmark_script_runs(fake, tmp_path, capsys):
    """``benchmarks/gpu_kernels.py`` end to end on the fake (numbers meaningless; the code path is not)."""
    import json

    from deeplab_trt.benchmarks import gpu_kernels

    out = tmp_path / "bench.json"
    rc = gpu_kernels.main(
        [
            "--frame",
            "45x75",
            "--input",
            "16x24",
            "--classes",
            "5",
            "--iters",
            "1",
            "--repeats",
            "1",
            "--copy-mib",
            "1",
            "--json",
            str(out),
        ]
    )
    assert rc == 0
    text = capsys.readouterr().out
    assert text.startswith("device: Fake GPU") and "memcpy D2D" in text and "upsample+argmax" in text
    data = json.loads(out.read_text())
    assert len(data["preprocess"]) == 4 and len(data["upsample_argmax"]) == 4 and data["arch"] == "sm_87"


def test_gpu_benchmark_without_gpu_says_so():
    import subprocess
    import sys

    from deeplab_trt.runtime.cuda import api

    if api.device_count() > 0:
        pytest.skip("this machine has a GPU")
    out = subprocess.run(
        [sys.executable, "-m", "deeplab_trt.benchmarks.gpu_kernels"], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 2 and "no CUDA GPU on this machine" in out.stderr and "Traceback" not in out.stderr


def test_bindings_newer_than_the_driver_name_the_extra(fake, monkeypatch):
    """Issue 11 item 10: 13.x bindings on JetPack 6's 12.6 driver fail in one line naming [cuda12]."""
    from deeplab_trt.runtime.cuda import api

    monkeypatch.setattr(fake.runtime, "cudaDriverGetVersion", lambda: (0, 12060))
    monkeypatch.setattr(fake.runtime, "cudaRuntimeGetVersion", lambda: (0, 13040))
    fake.device_count = 0  # what cudaGetDeviceCount reports under a too-old driver
    monkeypatch.setattr(api._current, "index", None, raising=False)
    with pytest.raises(api.CudaError, match=r"driver is 12\.6 .* CUDA 13\.4: pip install 'deeplab-trt\[cuda12\]'"):
        api.use_device(0)


@pytest.mark.parametrize(
    ("driver", "runtime", "extra"),
    [
        (12060, 13040, "cuda12"),
        (13000, 13040, None),
        (13000, 12090, None),
        (0, 13040, None),
        (11080, 12060, "CUDA 12 or 13 driver"),
    ],
)
def test_driver_mismatch_rule(driver, runtime, extra):
    """Same or newer driver major runs the bindings (minor-version compatibility); no driver is no mismatch."""
    from deeplab_trt.runtime.cuda import api

    message = api.driver_mismatch(driver, runtime)
    assert (message is None) == (extra is None)
    if extra:
        assert (f"deeplab-trt[{extra}]" if extra.startswith("cuda") else extra) in message


# ---------------------------------------------------------------------------------------------
# issue 11 item 2: our stream waits for the producer of a foreign frame (CAI v2/v3, DLPack)
# ---------------------------------------------------------------------------------------------
class _CaiFrame:
    """A foreign CUDA array speaking only ``__cuda_array_interface__`` (``extra``: version/stream)."""

    def __init__(self, buffer, **extra):
        self.buffer = buffer
        self.__cuda_array_interface__ = {"shape": (4, 6, 3), "typestr": "|u1", "data": (buffer.ptr, False), **extra}


@pytest.mark.parametrize(
    "extra, producer",
    [
        ({"version": 2}, 1),  # torch today: v2, no key -> the legacy default stream (fails before the fix)
        ({"version": 3, "stream": 2}, 2),  # per-thread default stream
        ({"version": 3, "stream": "side"}, "side"),  # a producer's own stream
        ({"version": 3, "stream": None}, None),  # CAI v3: None = no synchronization needed
        ({"version": 3}, None),
        ({"version": 3, "stream": "ours"}, None),  # already our stream: nothing to order
    ],
)
def test_cai_frames_order_our_stream_after_the_producer(fake, extra, producer):
    from deeplab_trt.runtime.cuda import api
    from deeplab_trt.runtime.interop import as_device_array

    ours, side = api.Stream(), api.Stream()
    names = {"side": side.handle, "ours": ours.handle}
    extra = {k: names.get(v, v) if isinstance(v, str) else v for k, v in extra.items()}
    buffer = api.to_device(np.zeros((4, 6, 3), np.uint8))
    fake.stream_waits.clear()
    arr = as_device_array(_CaiFrame(buffer, **extra), ours)
    assert arr.ptr == buffer.ptr and arr.shape == (4, 6, 3)
    expected = [] if producer is None else [(ours.handle, names.get(producer, producer))]
    assert fake.stream_waits == expected


class _DLPackFrame:
    """A torch-like frame: ``__dlpack__`` plus a CAI v2 dict (no ``stream``); records what it was asked."""

    def __init__(self, buffer, takes_stream: bool = True):
        self.buffer, self.takes_stream, self.asked = buffer, takes_stream, []
        self.__cuda_array_interface__ = {
            "shape": (4, 6, 3),
            "typestr": "|u1",
            "data": (buffer.ptr, False),
            "version": 2,
        }

    def __dlpack_device__(self):
        from deeplab_trt.runtime.cuda import dlpack

        return (dlpack.kDLCUDA, 0)

    def __dlpack__(self, **kwargs):
        from deeplab_trt.runtime.cuda import dlpack

        if kwargs and not self.takes_stream:
            raise TypeError("__dlpack__() got an unexpected keyword argument 'stream'")
        self.asked.append(kwargs)
        return dlpack.export_capsule(self.buffer.ptr, (4, 6, 3), np.uint8, owner=self)


def test_dlpack_is_preferred_and_asked_for_our_stream(fake):
    """The producer orders its own work before ``stream=ours`` (DLPack), so we add no wait of our own."""
    from deeplab_trt.runtime.cuda import api
    from deeplab_trt.runtime.interop import as_device_array

    ours = api.Stream()
    frame = _DLPackFrame(api.to_device(np.zeros((4, 6, 3), np.uint8)))
    fake.stream_waits.clear()
    arr = as_device_array(frame, ours)
    assert arr.ptr == frame.buffer.ptr and arr.shape == (4, 6, 3)
    assert frame.asked == [{"stream": ours.handle}], "DLPack was not used (or not told our stream)"
    assert fake.stream_waits == []


def test_dlpack_producer_without_stream_support_is_waited_for_on_the_legacy_stream(fake):
    from deeplab_trt.runtime.cuda import api
    from deeplab_trt.runtime.interop import as_device_array

    ours = api.Stream()
    frame = _DLPackFrame(api.to_device(np.zeros((4, 6, 3), np.uint8)), takes_stream=False)
    fake.stream_waits.clear()
    as_device_array(frame, ours)
    assert frame.asked == [{}]
    assert fake.stream_waits == [(ours.handle, 1)]


def test_segmenter_waits_for_the_legacy_stream_before_reading_a_cai_v2_frame(fake, opencv_without_ipp):
    from deeplab_trt.runtime.backends.tensorrt import TensorRTRunner
    from deeplab_trt.runtime.cuda import api
    from deeplab_trt.runtime.segmenter import Segmenter

    frame = np.random.default_rng(11).integers(0, 256, (4, 6, 3), dtype=np.uint8)
    image = _CaiFrame(api.to_device(frame), version=2)
    seg = Segmenter(inference=TensorRTRunner(FakeEngine(fake), SPEC, FakeTrt))
    fake.stream_waits.clear()
    labels = seg.segment(image)
    assert (seg.stream.handle, 1) in fake.stream_waits
    x, geo = preprocess(frame, SPEC, "stretch")
    assert np.array_equal(labels.copy_to_host(), labels_from_output(model_function(x)[0], SPEC, geo))
    seg.close()


def test_triton_gpu_instance_runs_the_cuda_kernels(fake, clip, opencv_without_ipp):
    """Issue 14: a GPU instance serving an engine segments on the kernels (upload, preprocess, infer, fused
    upsample+argmax, overlay in place), with the host path's labels and overlay."""
    from deeplab_trt.runtime.backends.tensorrt import TensorRTBackend
    from deeplab_trt.runtime.postprocess import overlay, palette_bgr
    from deeplab_trt.runtime.segmenter import Segmenter
    from deeplab_trt.runtime.triton_python import segment_frames_on_gpu

    loaded = fake_loaded_engine(fake)
    backend = TensorRTBackend(loaded)
    seg = Segmenter(backend, alpha=0.5)
    with open_source(clip) as src:
        frames = [src.read(), src.read()]
    labels, pictures = segment_frames_on_gpu(seg, frames, overlay=True)
    for frame, got, picture in zip(frames, labels, pictures):
        x, geo = preprocess(frame, SPEC)
        want = labels_from_output(model_function(x)[0], SPEC, geo)
        assert isinstance(got, np.ndarray) and np.array_equal(got, want)
        assert np.array_equal(picture, overlay(frame, want, palette_bgr(SPEC), 0.5))
    assert {"preprocess_u8_f32", "upsample_argmax_f32_u8", "render_u8"} <= set(fake.launches), "kernels, not numpy"
    assert loaded.engine.contexts[0].executions == 2
    seg.close()
    backend.close()


def test_soak_reads_device_memory_in_use_through_cuda_mem_get_info(fake):
    from deeplab_trt.benchmarks.soak import device_used_bytes

    assert device_used_bytes() == (8 << 30) - (4 << 30)  # the fake's total - free
