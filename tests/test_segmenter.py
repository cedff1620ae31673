"""``Segmenter``'s host path with real ONNX Runtime: the segNet loop on a CPU machine.

The referee is the CPU video loop (``run_video`` with ``HostStage``, what ``deeplab-trt run
--backend onnxruntime`` runs): for the same model and frames, the Segmenter's labels and
pictures must be identical. A ``gpu`` test repeats the loop with device frames.
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest
from video_helpers import write_video

from deeplab_trt import Segmenter
from deeplab_trt.runtime.backends import open_backend
from deeplab_trt.runtime.errors import ToolkitError
from deeplab_trt.runtime.pipeline import RunOptions, run_video
from deeplab_trt.runtime.postprocess import labels_from_output, palette_bgr, render
from deeplab_trt.runtime.preprocess import preprocess
from deeplab_trt.runtime.spec import ModelSpec, voc_palette
from deeplab_trt.runtime.video import Sink, open_source


@pytest.fixture(scope="module")
def lowres_onnx(onnx_factory):
    return onnx_factory(head="lowres")


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """A short synthetic video (a box and a moving disc), written and decoded by OpenCV."""
    return write_video(tmp_path_factory.mktemp("seg") / "clip.avi", 5, (160, 120), fps=10.0, fourcc="MJPG")


class ListSink(Sink):
    def __init__(self):
        self.frames: list[np.ndarray] = []

    def write(self, frame: np.ndarray) -> None:
        self.frames.append(np.array(frame, copy=True))


def pipeline_pictures(model, clip, **options) -> list[np.ndarray]:
    sink = ListSink()
    with open_backend(model, "onnxruntime") as backend, open_source(clip) as source:
        run_video(backend, source, [sink], RunOptions(progress=False, **options))
    return sink.frames


def test_segnet_loop_on_cpu_equals_the_cpu_pipeline(lowres_onnx, clip, monkeypatch):
    """The README loop over a video with an .onnx: no CUDA touched, pictures = run_video's, labels too."""
    from deeplab_trt.runtime.cuda import api

    def no_cuda():
        raise AssertionError("the host path touched CUDA")

    monkeypatch.setattr(api, "cudart", no_cuda)
    monkeypatch.setattr(api, "driver", no_cuda)
    sink, labels_seen = ListSink(), []
    with Segmenter(lowres_onnx) as seg, open_source(clip) as source:
        for frame in source:
            labels = seg.segment(frame)
            labels_seen.append(labels)
            sink.write(seg.render(frame, labels))
    assert len(sink.frames) == 5
    for got, want in zip(sink.frames, pipeline_pictures(lowres_onnx, clip)):
        assert got.dtype == np.uint8 and got.shape == (120, 160, 3)
        assert np.array_equal(got, want)
    for got, grey in zip(labels_seen, pipeline_pictures(lowres_onnx, clip, mode="labels")):
        assert got.dtype == np.uint8 and got.shape == (120, 160)
        assert np.array_equal(got, grey[:, :, 0])


def test_letterbox_and_modes_equal_the_pipeline_and_the_references(lowres_onnx, clip):
    with Segmenter(lowres_onnx, policy="letterbox", alpha=0.3) as seg, open_source(clip) as source:
        frames = list(source)
        want_overlay = pipeline_pictures(lowres_onnx, clip, policy="letterbox", alpha=0.3)
        want_mask = pipeline_pictures(lowres_onnx, clip, policy="letterbox", mode="mask")
        lut = palette_bgr(seg.spec)
        for frame, overlay, mask in zip(frames, want_overlay, want_mask):
            labels, picture = seg.process(frame)
            assert np.array_equal(picture, overlay)
            assert np.array_equal(picture, render(frame, labels, lut, "overlay", 0.3))
            assert np.array_equal(seg.render(frame, labels, mode="mask"), mask)
            assert np.array_equal(seg.render(frame, labels, mode="labels")[:, :, 1], labels)


def test_host_verbs_return_numpy_with_the_references_numbers(lowres_onnx, clip):
    with Segmenter(lowres_onnx) as seg, open_source(clip) as source:
        frame = source.read()
        backend = seg.backend
        x, geo = preprocess(frame, seg.spec, "stretch", backend.input_dtype)
        assert np.array_equal(seg.preprocess(frame), x)
        labels = labels_from_output(backend.infer(x)[0], seg.spec, geo)
        assert np.array_equal(seg.segment(frame), labels) and seg.label_dtype == labels.dtype
        out = np.zeros(x.shape, x.dtype)
        assert seg.preprocess(frame, out=out) is out and np.array_equal(out, x)
        lab_out = np.zeros(labels.shape, np.int32)
        assert seg.segment(frame, out=lab_out) is lab_out and np.array_equal(lab_out, labels)
        pic_out = np.zeros(frame.shape, np.uint8)
        assert seg.render(frame, labels, out=pic_out) is pic_out
        assert np.array_equal(pic_out, render(frame, labels, palette_bgr(seg.spec)))
        canvas = frame.copy()
        assert seg.render(canvas, labels, mode="mask", in_place=True) is canvas
        assert np.array_equal(canvas, palette_bgr(seg.spec)[labels])
        # RGB frames: the same labels as the BGR frame, the picture in RGB order
        rgb = np.ascontiguousarray(frame[:, :, ::-1])
        assert np.array_equal(seg.segment(rgb, bgr=False), labels)
        assert np.array_equal(seg.render(rgb, labels, bgr=False), seg.render(frame, labels)[:, :, ::-1])


def test_cpu_dlpack_tensors_take_the_host_path(lowres_onnx, clip):
    torch = pytest.importorskip("torch")
    with Segmenter(lowres_onnx) as seg, open_source(clip) as source:
        frame = source.read()
        labels = seg.segment(torch.from_numpy(frame))
        assert isinstance(labels, np.ndarray) and np.array_equal(labels, seg.segment(frame))


def test_options_are_keyword_only_and_typed():
    for fn in (Segmenter.__init__, Segmenter.preprocess, Segmenter.segment, Segmenter.render, Segmenter.process):
        params = list(inspect.signature(fn).parameters.values())[1:]
        positional = [p.name for p in params if p.kind is not inspect.Parameter.KEYWORD_ONLY]
        assert positional in (["model"], ["image"], ["image", "labels"]), fn.__qualname__
        assert all(p.annotation is not inspect.Parameter.empty for p in params), fn.__qualname__
        assert "Args:" in (fn.__doc__ or ""), fn.__qualname__


def test_bad_inputs_are_one_line_errors(lowres_onnx, clip, tmp_path):
    with pytest.raises(TypeError):
        Segmenter(lowres_onnx, "onnxruntime")
    with pytest.raises(ToolkitError, match="no such file"):
        Segmenter(tmp_path / "missing.onnx")
    with pytest.raises(ToolkitError, match="unknown resize policy"):
        Segmenter(lowres_onnx, policy="crop")
    with pytest.raises(ToolkitError, match="alpha must be within"):
        Segmenter(lowres_onnx, alpha=2.0)
    with pytest.raises(ToolkitError, match="a model .* or inference="):
        Segmenter()
    (tmp_path / "m.engine").touch()
    with pytest.raises(ToolkitError, match="TensorRT engine cannot run on ONNX Runtime"):
        Segmenter(tmp_path / "m.engine", backend="onnxruntime")
    with Segmenter(lowres_onnx) as seg, open_source(clip) as source:
        frame = source.read()
        labels = seg.segment(frame)
        with pytest.raises(ToolkitError, match="expected a numpy uint8"):
            seg.segment([[1, 2, 3]])
        with pytest.raises(ToolkitError, match="expected a uint8 HxWx3 frame"):
            seg.segment(frame[:, :, 0])
        with pytest.raises(ToolkitError, match="do not match"):
            seg.render(frame, labels[1:])
        with pytest.raises(ToolkitError, match="out: expected a writeable contiguous 120×160"):
            seg.segment(frame, out=np.zeros((120, 161), np.uint8))
        with pytest.raises(ToolkitError, match="read-only"):
            readonly = frame.copy()
            readonly.flags.writeable = False
            seg.render(readonly, labels, in_place=True)
        with pytest.raises(ToolkitError, match="unknown output mode"):
            seg.render(frame, labels, mode="sepia")


class _ForeignCudaArray:
    """What a CuPy/torch CUDA array looks like to us (never dereferenced on this path)."""

    __cuda_array_interface__ = {"shape": (120, 160, 3), "typestr": "|u1", "data": (1 << 20, False), "version": 3}


def test_device_frame_without_a_gpu_is_one_clear_error(lowres_onnx, clip):
    from deeplab_trt.runtime.cuda import api

    try:
        if api.device_count() > 0:
            pytest.skip("this machine has a GPU: the GPU path starts (the gpu test covers it)")
    except ToolkitError:
        pass  # no usable CUDA at all: the same error path
    with Segmenter(lowres_onnx) as seg, open_source(clip) as source:
        frame = source.read()
        with pytest.raises(ToolkitError, match="a CUDA array needs the GPU path, which cannot start here") as info:
            seg.segment(_ForeignCudaArray())
        assert "\n" not in str(info.value)
        with pytest.raises(ToolkitError, match="same place"):
            seg.render(frame, _ForeignCudaArray())
        assert seg.segment(frame).shape == (120, 160)  # the host path is unaffected


def test_an_open_backend_is_used_not_closed(lowres_onnx, clip):
    with open_backend(lowres_onnx) as backend, open_source(clip) as source:
        frame = source.read()
        with Segmenter(backend) as seg:
            labels = seg.segment(frame)
        x, geo = preprocess(frame, backend.spec)
        assert np.array_equal(labels, labels_from_output(backend.infer(x)[0], backend.spec, geo))  # still open


# ---------------------------------------------------------------------------------------------
# the same loop with device frames (real GPU)
# ---------------------------------------------------------------------------------------------
SPEC = ModelSpec("numpy", [f"c{i}" for i in range(6)], voc_palette(6), 32, 48, head="lowres", output_stride=8)


class PooledBackend:
    """A host Backend computing a fixed function (8×8 mean pools, mixed): no export, no torch needed."""

    name = "numpy model"
    spec = SPEC
    input_dtype = np.dtype(np.float32)
    fixed_batch = None
    batch_limits = (1, None)
    pipeline = "cpu"
    fresh_outputs = True
    runner = None

    def infer(self, batch):
        x = batch.astype(np.float32)
        pooled = x.reshape(x.shape[0], 3, 4, 8, 6, 8).mean(axis=(3, 5))
        return np.stack([pooled[:, c % 3] * (1 + 0.5 * c) - 0.3 * c for c in range(6)], axis=1)

    def close(self):
        pass


@pytest.mark.gpu
def test_segnet_loop_with_device_frames_equals_the_host_path(clip):
    from deeplab_trt.runtime.cuda import api

    host_sink, device_sink = ListSink(), ListSink()
    with Segmenter(PooledBackend(), policy="letterbox") as seg, open_source(clip) as source:
        for frame in source:
            host_sink.write(seg.render(frame, seg.segment(frame)))
            device_frame = api.to_device(frame)
            labels = seg.segment(device_frame)
            assert isinstance(labels, api.DeviceArray) and labels.shape == (120, 160)
            assert np.array_equal(labels.copy_to_host(), seg.segment(frame))
            device_sink.write(seg.render(device_frame, labels).copy_to_host())
    assert len(device_sink.frames) == 5
    for got, want in zip(device_sink.frames, host_sink.frames):
        assert np.array_equal(got, want)
