"""The CUDA kernels on a real GPU against their numpy references (skipped without a GPU).

Expected: labels exactly equal (the module is compiled with --fmad=false, so the boundary
blend rounds like numpy), preprocessing bit-equal to the table model and within 1e-3 of the
OpenCV reference (fp32) / one fp16 ulp (fp16), pictures exactly equal.
"""

from __future__ import annotations

import numpy as np
import pytest

from deeplab_trt.runtime.cuda.tables import preprocess_model
from deeplab_trt.runtime.postprocess import labels_from_output, palette_bgr, render, upsample_argmax
from deeplab_trt.runtime.preprocess import Geometry, preprocess
from deeplab_trt.runtime.spec import ModelSpec, voc_palette

pytestmark = pytest.mark.gpu
RNG = np.random.default_rng(7)


@pytest.fixture(scope="module")
def api():
    from deeplab_trt.runtime.cuda import api

    api.use_device(0)
    return api


@pytest.fixture(scope="module")
def kernels(api):
    from deeplab_trt.runtime.cuda.kernels import get_kernels

    return get_kernels(0)


def make_spec(classes=5, head="lowres", size=(48, 80)) -> ModelSpec:
    return ModelSpec("t", [f"c{i}" for i in range(classes)], voc_palette(classes), size[0], size[1], head=head)


def upload_pitched(api, frame: np.ndarray, pad: int, stride: int = 3):
    """A device frame with padded rows (pitch = w*stride + pad) and ``stride`` bytes per pixel."""
    h, w, _ = frame.shape
    pitch = w * stride + pad
    host = np.zeros((h, pitch), np.uint8)
    view = np.lib.stride_tricks.as_strided(host, (h, w, 3), (pitch, stride, 1), writeable=True)
    view[...] = frame
    return api.to_device(host), pitch


def tied_logits(c, h, w, dtype):
    x = np.round(RNG.standard_normal((c, h, w)) * 2) / 2
    x[1] = x[0]
    return x.astype(dtype)


def test_device_facts_and_arch(api):
    from deeplab_trt.runtime.cuda.kernels import get_kernels

    info = api.current_device()
    print(info.describe())
    k = get_kernels(0)
    assert k.launcher.compiled.arch in (info.arch,) or k.launcher.compiled.kind == "ptx"


@pytest.mark.parametrize(
    "hw,pad,stride", [((37, 53), 5, 3), ((481, 637), 0, 3), ((1080, 1920), 64, 4), ((7, 301), 3, 3)]
)
@pytest.mark.parametrize("policy", ["stretch", "letterbox"])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_preprocess(api, kernels, hw, pad, stride, policy, dtype):
    spec = make_spec(size=(64, 96))
    frame = RNG.integers(0, 256, (*hw, 3), dtype=np.uint8)
    ref, geo = preprocess(frame, spec, policy, dtype)
    dev, pitch = upload_pitched(api, frame, pad, stride)
    out = api.empty(ref.shape, dtype)
    api.memset_async(out, 0xFF, out.nbytes)  # NaN pattern: every element must be written
    kernels.preprocess(dev, *hw, out, spec, geo, out_dtype=dtype, frame_pitch=pitch, pixel_stride=stride)
    got = out.copy_to_host()
    assert np.array_equal(got, preprocess_model(frame, spec, geo, dtype)), "GPU arithmetic differs from the model"
    err = np.abs(got.astype(np.float64) - ref.astype(np.float64))
    if dtype == np.float32:
        assert err.max() <= 1e-3
    else:
        ulp = np.maximum(np.spacing(np.abs(ref)), np.spacing(np.abs(got))).astype(np.float64)
        assert (err <= ulp + 1e-4).all()


@pytest.mark.parametrize("frame_hw,low_hw", [((37, 53), (6, 10)), ((481, 637), (8, 12)), ((1080, 1920), (64, 128))])
@pytest.mark.parametrize("policy", ["stretch", "letterbox"])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_upsample_argmax_labels_exact(api, kernels, frame_hw, low_hw, policy, dtype):
    c = 21
    low = tied_logits(c, *low_hw, dtype)
    geo = Geometry.compute(frame_hw, (low_hw[0] * 8, low_hw[1] * 8), policy)
    ref = upsample_argmax(low, geo)
    labels = api.empty(frame_hw, np.uint8)
    kernels.upsample_argmax(api.to_device(low), c, *low_hw, geo, labels, dtype=dtype)
    assert np.array_equal(labels.copy_to_host(), ref)


@pytest.mark.parametrize(
    "head,dtype", [("logits", np.float32), ("logits", np.float16), ("labels", np.int64), ("labels", np.int32)]
)
def test_labels_from_output_heads(api, kernels, head, dtype):
    spec = make_spec(classes=6, head=head, size=(24, 40))
    geo = Geometry.compute((53, 37), spec.input_size, "letterbox")
    output = RNG.integers(0, 6, (1, 24, 40)).astype(dtype) if head == "labels" else tied_logits(6, 24, 40, dtype)
    ref = labels_from_output(output, spec, geo)
    labels = api.empty((53, 37), np.uint8)
    kernels.labels_from_output(api.to_device(output), output.shape, output.dtype, spec, geo, labels)
    assert np.array_equal(labels.copy_to_host(), ref)


@pytest.mark.parametrize("mode", ["overlay", "mask", "labels"])
def test_render_in_place(api, kernels, mode):
    spec = make_spec(classes=21)
    frame = RNG.integers(0, 256, (481, 637, 3), dtype=np.uint8)
    labels = RNG.integers(0, 21, (481, 637)).astype(np.uint8)
    dev = api.to_device(frame)
    kernels.render(dev, 481, 637, api.to_device(labels), spec, mode=mode, alpha=0.4)
    assert np.array_equal(dev.copy_to_host(), render(frame, labels, palette_bgr(spec), mode, 0.4))


def test_mapped_pinned_frame_is_read_and_written_in_place(api, kernels):
    spec = make_spec(classes=21)
    frame = RNG.integers(0, 256, (120, 160, 3), dtype=np.uint8)
    labels = RNG.integers(0, 21, (120, 160)).astype(np.uint8)
    pinned = api.PinnedBuffer(frame.nbytes, mapped=True)
    host = pinned.array(frame.shape)
    host[...] = frame
    kernels.render(pinned.device_ptr, 120, 160, api.to_device(labels), spec, mode="overlay", alpha=0.5)
    api.synchronize_device()
    assert np.array_equal(host, render(frame, labels, palette_bgr(spec), "overlay", 0.5))


def test_graph_capture_replays_the_frame(api, kernels):
    spec = make_spec(classes=7, size=(48, 80))
    frame = RNG.integers(0, 256, (97, 131, 3), dtype=np.uint8)
    geo = Geometry.compute((97, 131), spec.input_size, "letterbox")
    low = tied_logits(7, 6, 10, np.float32)
    dev_frame, dev_low = api.to_device(frame), api.to_device(low)
    inp = api.empty((1, 3, 48, 80), np.float32)
    labels = api.empty((97, 131), np.uint8)
    stream = api.Stream()

    def work():
        kernels.preprocess(dev_frame, 97, 131, inp, spec, geo, stream=stream.handle)
        kernels.upsample_argmax(dev_low, 7, 6, 10, geo, labels, stream=stream.handle)

    work()  # eager once: allocates tables and scratch, as the pipeline does before capturing
    stream.synchronize()
    api.memset_async(labels, 0, labels.nbytes, stream)
    api.memset_async(inp, 0, inp.nbytes, stream)
    with stream.capture() as graph:
        work()
    graph.launch(stream)
    stream.synchronize()
    assert np.array_equal(labels.copy_to_host(), upsample_argmax(low, geo))
    assert np.array_equal(inp.copy_to_host(), preprocess_model(frame, spec, geo))
    graph.close()


def test_events_time_kernels(api, kernels):
    stream = api.Stream()
    start, end = api.Event(), api.Event()
    spec = make_spec()
    frame = api.to_device(RNG.integers(0, 256, (1080, 1920, 3), dtype=np.uint8))
    geo = Geometry.compute((1080, 1920), spec.input_size, "stretch")
    out = api.empty((1, 3, *spec.input_size), np.float32)
    start.record(stream)
    kernels.preprocess(frame, 1080, 1920, out, spec, geo, stream=stream.handle)
    end.record(stream)
    end.synchronize()
    assert start.elapsed_ms(end) > 0  # events work; no upper bound (timings belong in benchmarks/)


# ---------------------------------------------------------------------------------------------
# interop
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def torch_cuda():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA here")
    return torch


def test_device_array_round_trips_through_torch_without_copies(api, torch_cuda):
    from deeplab_trt.runtime.interop import as_device_array

    torch = torch_cuda
    t = torch.arange(24, device="cuda", dtype=torch.float32).reshape(4, 6)
    view = t[:, 1::2]  # strided
    arr = as_device_array(view)
    assert arr.ptr == view.data_ptr() and arr.shape == (4, 3) and arr.byte_strides == (24, 8)

    class OnlyDLPack:
        def __init__(self, x):
            self.x = x

        def __dlpack__(self, stream=None, **kw):
            return self.x.__dlpack__(stream=stream)

        def __dlpack_device__(self):
            return self.x.__dlpack_device__()

    arr2 = as_device_array(OnlyDLPack(view))
    assert arr2.ptr == view.data_ptr() and arr2.byte_strides == (24, 8)
    ours = api.to_device(np.arange(6, dtype=np.int32).reshape(2, 3))
    back = torch.as_tensor(ours, device="cuda")  # __cuda_array_interface__
    assert back.data_ptr() == ours.ptr and back.cpu().tolist() == [[0, 1, 2], [3, 4, 5]]
    back2 = torch.from_dlpack(ours)
    assert back2.data_ptr() == ours.ptr


def test_segmenter_on_torch_tensors(api, torch_cuda):
    from torch_inference import TorchInference, tiny_lowres_model, tiny_spec

    from deeplab_trt.runtime.interop import Segmenter

    torch = torch_cuda
    spec = tiny_spec()
    seg = Segmenter(inference=TorchInference(tiny_lowres_model(), spec), policy="letterbox")
    frame = RNG.integers(0, 256, (181, 257, 3), dtype=np.uint8)
    wide = torch.zeros((181, 300, 3), dtype=torch.uint8, device="cuda")
    wide[:, :257] = torch.from_numpy(frame).cuda()
    image = wide[:, :257]  # padded rows: pitch 900 bytes
    labels, picture = seg.process(image, mode="overlay", alpha=0.5)
    ref_input, geo = preprocess(frame, spec, "letterbox")
    assert np.abs(seg.inference.input.copy_to_host() - ref_input).max() <= 1e-3
    logits = seg.inference.output.copy_to_host()[0]
    ref_labels = labels_from_output(logits, spec, geo)
    got = torch.as_tensor(labels, device="cuda")
    assert got.data_ptr() == labels.ptr
    assert np.array_equal(got.cpu().numpy(), ref_labels)
    assert np.array_equal(picture.copy_to_host(), render(frame, ref_labels, palette_bgr(spec), "overlay", 0.5))
    seg.render(image, labels, mode="mask", in_place=True)
    assert np.array_equal(wide[:, :257].cpu().numpy(), palette_bgr(spec)[ref_labels])
    seg.close()


def _frame_written_late(torch, frame, stream):
    """A CUDA tensor whose pixels land on ``stream`` only after tens of ms of GPU spinning (zeros before)."""
    image = torch.zeros(frame.shape, dtype=torch.uint8, device="cuda")
    torch.cuda.synchronize()
    host = torch.from_numpy(frame).pin_memory()
    with torch.cuda.stream(stream):
        torch.cuda._sleep(100_000_000)  # cycles: keeps the copy below pending when we look
        image.copy_(host, non_blocking=True)
    return image


def test_segmenter_waits_for_torch_frames_written_on_another_stream(api, torch_cuda):
    """Issue 11 item 2 for real: the preprocess kernel must not read a half-written frame.

    DLPack: torch orders its current (side) stream before ours; CAI v2 only (no ``stream`` key):
    we wait for the legacy default stream, where torch's default stream writes.
    """
    from torch_inference import TorchInference, tiny_lowres_model, tiny_spec

    from deeplab_trt.runtime.interop import Segmenter

    torch = torch_cuda
    spec = tiny_spec()
    seg = Segmenter(inference=TorchInference(tiny_lowres_model(), spec))
    frame = RNG.integers(1, 256, (181, 257, 3), dtype=np.uint8)
    reference, _ = preprocess(frame, spec, "stretch")
    side = torch.cuda.Stream()
    image = _frame_written_late(torch, frame, side)
    with torch.cuda.stream(side):  # torch's contract: the producer's stream is current at the hand-over
        got = seg.preprocess(image).copy_to_host()
    assert np.abs(got - reference).max() <= 1e-3, "read before torch's side stream wrote the frame (DLPack)"

    class CaiV2Only:  # torch's __cuda_array_interface__ (version 2, no stream), without __dlpack__
        def __init__(self, tensor):
            self.tensor = tensor
            self.__cuda_array_interface__ = tensor.__cuda_array_interface__

    legacy = torch.cuda.default_stream()
    image = _frame_written_late(torch, frame, legacy)
    got = seg.preprocess(CaiV2Only(image)).copy_to_host()
    assert np.abs(got - reference).max() <= 1e-3, "read before the legacy default stream wrote the frame (CAI v2)"
    seg.close()


def test_segmenter_on_cupy_arrays(api):
    cupy = pytest.importorskip("cupy")
    from deeplab_trt.runtime.cuda.inference import HostBackendInference  # noqa: F401 - documented alternative
    from deeplab_trt.runtime.interop import as_device_array

    x = cupy.arange(12, dtype=cupy.uint8).reshape(2, 2, 3)
    arr = as_device_array(x)
    assert arr.ptr == x.data.ptr and arr.shape == (2, 2, 3)
    y = cupy.asarray(api.to_device(np.ones((2, 3), np.float32)))
    assert float(y.sum()) == 6.0


def test_device_arrays_report_the_device_they_live_on(api):
    """Issue 11 item 8 for real: every device's arrays say its ordinal, and torch agrees."""
    from deeplab_trt.runtime.cuda import dlpack

    torch = pytest.importorskip("torch")
    try:
        for index in range(api.device_count()):
            api.use_device(index)
            array = api.to_device(np.arange(8, dtype=np.float32))
            assert array.__dlpack_device__() == (dlpack.kDLCUDA, index)
            tensor = torch.from_dlpack(array)
            assert tensor.device == torch.device("cuda", index) and tensor.data_ptr() == array.ptr
            assert torch.equal(tensor.cpu(), torch.arange(8, dtype=torch.float32))
    finally:
        api.use_device(0)


def test_triton_gpu_instance_work_on_torch_inference(api, torch_cuda):
    """Issue 14 for real: segment_frames_on_gpu (a Triton GPU instance's work) uploads each host frame and runs
    the kernels around the inference; labels and overlay equal the references on the same logits."""
    from torch_inference import TorchInference, tiny_lowres_model, tiny_spec

    from deeplab_trt.runtime.segmenter import Segmenter
    from deeplab_trt.runtime.triton_python import segment_frames_on_gpu

    spec = tiny_spec()
    seg = Segmenter(inference=TorchInference(tiny_lowres_model(), spec), alpha=0.5)
    frames = [RNG.integers(0, 256, (120, 200, 3), dtype=np.uint8) for _ in range(2)]
    labels, pictures = segment_frames_on_gpu(seg, frames, overlay=True)
    # the inference buffers hold the last frame's input and logits
    ref_input, geo = preprocess(frames[-1], spec)
    assert np.abs(seg.inference.input.copy_to_host() - ref_input).max() <= 1e-3
    ref_labels = labels_from_output(seg.inference.output.copy_to_host()[0], spec, geo)
    assert isinstance(labels[-1], np.ndarray) and np.array_equal(labels[-1], ref_labels)
    assert np.array_equal(pictures[-1], render(frames[-1], ref_labels, palette_bgr(spec), "overlay", 0.5))
    seg.close()
