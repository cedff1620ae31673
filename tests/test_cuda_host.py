"""The CUDA layer's logic, verified on a machine without a GPU.

* ``kernels.cu`` itself runs on the CPU through ``kernel_emulator`` (the same source compiled by
  g++, every CUDA thread a call), driven by the real Python wrappers in
  ``runtime/cuda/kernels.py``: each kernel against its numpy reference on odd sizes and
  pitches, both resize policies, fp32/fp16, ties.
* The sampling tables against OpenCV, DLPack capsules against numpy/torch (CPU tensors),
  error checking, lazy imports.

What this cannot show (the ``gpu`` tests do): NVRTC's code generation for the device, the
cuda-python calls against a driver, and speed.
"""

from __future__ import annotations

import gc
import re
import subprocess
import sys
from pathlib import Path

import cv2
import kernel_emulator
import numpy as np
import pytest

from deeplab_trt.runtime.cuda import dlpack
from deeplab_trt.runtime.cuda.tables import opencv_linear_taps, preprocess_model
from deeplab_trt.runtime.postprocess import (
    labels_from_output,
    palette_bgr,
    render,
    upsample_argmax,
    upsample_then_argmax,
)
from deeplab_trt.runtime.preprocess import Geometry, preprocess
from deeplab_trt.runtime.spec import ModelSpec, voc_palette

ROOT = Path(__file__).resolve().parents[1]
RNG = np.random.default_rng(20261124)


@pytest.fixture(scope="module")
def kernels(tmp_path_factory):
    if kernel_emulator.compiler() is None:
        pytest.skip("no C++ compiler for the kernel emulator")
    return kernel_emulator.emulated_kernels(tmp_path_factory.mktemp("emu"))


def make_spec(classes: int = 5, head: str = "lowres", size=(48, 80), channel_order: str = "RGB") -> ModelSpec:
    return ModelSpec(
        "t",
        [f"c{i}" for i in range(classes)],
        voc_palette(classes),
        size[0],
        size[1],
        head=head,
        channel_order=channel_order,
    )


def pitched_frame(h: int, w: int, stride: int = 3, pad: int = 0):
    """(HWC uint8 view, backing buffer, pitch bytes): rows padded by ``pad`` bytes, ``stride`` bytes/pixel."""
    pitch = w * stride + pad
    buf = RNG.integers(0, 256, (h, pitch), dtype=np.uint8)
    view = np.lib.stride_tricks.as_strided(buf, (h, w, 3), (pitch, stride, 1))
    return np.ascontiguousarray(view), buf, pitch


# ---------------------------------------------------------------------------------------------
# tables vs OpenCV
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("src,dst", [(637, 85), (481, 64), (17, 33), (1280, 113), (100, 50), (1, 5), (5, 1)])
def test_resize_taps_reproduce_opencv_float_linear(src, dst, opencv_without_ipp):
    row = RNG.integers(0, 256, (2, src), dtype=np.uint8).astype(np.float32)
    ref = cv2.resize(row, (dst, 2), interpolation=cv2.INTER_LINEAR)
    t = opencv_linear_taps(src, dst)
    mine = row[:, t.index[:, 0]] * t.weight[:, 0] + row[:, t.index[:, 1]] * t.weight[:, 1]
    np.testing.assert_allclose(mine, ref, rtol=0, atol=2e-5)


@pytest.mark.parametrize("hw", [(481, 637), (37, 53), (720, 1280), (48, 80)])
@pytest.mark.parametrize("policy", ["stretch", "letterbox"])
def test_table_model_equals_reference_preprocess(hw, policy, opencv_without_ipp):
    spec = make_spec()
    frame = RNG.integers(0, 256, (*hw, 3), dtype=np.uint8)
    ref, geo = preprocess(frame, spec, policy)
    np.testing.assert_allclose(preprocess_model(frame, spec, geo), ref, rtol=0, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# kernels (emulated) vs references
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("hw,stride,pad", [((37, 53), 3, 5), ((121, 203), 4, 0), ((48, 80), 3, 0), ((7, 301), 3, 64)])
@pytest.mark.parametrize("policy", ["stretch", "letterbox"])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("bgr", [True, False])
def test_preprocess_kernel(kernels, hw, stride, pad, policy, dtype, bgr):
    spec = make_spec()
    frame, buf, pitch = pitched_frame(*hw, stride=stride, pad=pad)
    ref, geo = preprocess(frame, spec, policy, dtype, bgr=bgr)
    out = np.full(ref.shape, np.nan, dtype)
    kernels.preprocess(
        buf, hw[0], hw[1], out, spec, geo, out_dtype=dtype, frame_pitch=pitch, pixel_stride=stride, bgr=bgr
    )
    assert not np.isnan(out).any(), "every element of the input tensor must be written"
    # Same arithmetic as the table model, bit for bit; vs OpenCV (IPP or not) within the 1e-3 target.
    assert np.array_equal(out, preprocess_model(frame, spec, geo, dtype, bgr=bgr))
    err = np.abs(out.astype(np.float64) - ref.astype(np.float64))
    if dtype == np.float32:
        assert err.max() <= 1e-3
    else:  # fp16 rounding of values ~1e-5 away from OpenCV's (IPP) float result: at most one ulp apart
        ulp = np.maximum(np.spacing(np.abs(ref)), np.spacing(np.abs(out))).astype(np.float64)
        assert (err <= ulp + 1e-4).all()
    if policy == "letterbox" and (geo.height < geo.input_height or geo.width < geo.input_width):
        outside = np.ones(geo.input_height * geo.input_width, bool).reshape(geo.input_height, geo.input_width)
        outside[geo.top : geo.top + geo.height, geo.left : geo.left + geo.width] = False
        assert (out[0][:, outside] == 0).all()


def tied_logits(c: int, h: int, w: int, dtype) -> np.ndarray:
    """Low-res logits with many exact ties (duplicated channels, coarse values)."""
    x = np.round(RNG.standard_normal((c, h, w)) * 2) / 2
    x[1] = x[0]
    x[-1, ::3] = x[0, ::3]
    return x.astype(dtype)


@pytest.mark.parametrize(
    "frame_hw,input_hw,low_hw",
    [
        ((37, 53), (48, 80), (6, 10)),
        ((481, 637), (48, 80), (6, 10)),
        ((20, 20), (64, 64), (16, 16)),
        ((48, 80), (48, 80), (48, 80)),
    ],
)
@pytest.mark.parametrize("policy", ["stretch", "letterbox"])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_upsample_argmax_kernel_equals_reference(kernels, frame_hw, input_hw, low_hw, policy, dtype):
    low = tied_logits(7, *low_hw, dtype)
    geo = Geometry.compute(frame_hw, input_hw, policy)
    ref = upsample_argmax(low, geo)
    assert np.array_equal(ref, upsample_then_argmax(low, geo))
    pitch = frame_hw[1] + 3
    out = np.full((frame_hw[0], pitch), 255, np.uint8)
    kernels.upsample_argmax(low, 7, *low_hw, geo, out, dtype=dtype, label_dtype=np.uint8, label_pitch=pitch)
    assert np.array_equal(out[:, : frame_hw[1]], ref)
    assert (out[:, frame_hw[1] :] == 255).all(), "row padding must not be written"


def test_upsample_argmax_int32_labels_beyond_256_classes(kernels):
    low = tied_logits(300, 5, 7, np.float32)
    geo = Geometry.compute((23, 31), (40, 56), "letterbox")
    ref = upsample_argmax(low, geo)
    assert ref.dtype == np.int32
    out = np.zeros((23, 31), np.int32)
    kernels.upsample_argmax(low, 300, 5, 7, geo, out, label_dtype=np.int32)
    assert np.array_equal(out, ref)


@pytest.mark.parametrize(
    "head,dtype",
    [
        ("logits", np.float32),
        ("logits", np.float16),
        ("labels", np.int64),
        ("labels", np.int32),
        ("labels", np.uint8),
        ("lowres", np.float16),
    ],
)
@pytest.mark.parametrize("policy", ["stretch", "letterbox"])
def test_labels_from_output_every_head(kernels, head, dtype, policy):
    spec = make_spec(classes=6, head=head, size=(24, 40))
    geo = Geometry.compute((53, 37), spec.input_size, policy)
    if head == "labels":
        output = RNG.integers(0, 6, (1, 24, 40)).astype(dtype)
        shape = output.shape
    elif head == "logits":
        output = tied_logits(6, 24, 40, dtype)
        shape = output.shape
    else:
        output = tied_logits(6, 3, 5, dtype)
        shape = output.shape
    ref = labels_from_output(output, spec, geo)
    out = np.zeros((53, 37), np.uint8)
    kernels.labels_from_output(output, shape, output.dtype, spec, geo, out)
    assert np.array_equal(out, ref)


@pytest.mark.parametrize("mode", ["overlay", "mask", "labels"])
@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.5, 1.0])
def test_render_kernel(kernels, mode, alpha):
    spec = make_spec(classes=21)
    frame = RNG.integers(0, 256, (29, 43, 3), dtype=np.uint8)
    labels = RNG.integers(0, 21, (29, 43)).astype(np.uint8)
    ref = render(frame, labels, palette_bgr(spec), mode, alpha)
    in_place = frame.copy()
    kernels.render(in_place, 29, 43, labels, spec, mode=mode, alpha=alpha)
    assert np.array_equal(in_place, ref)
    # out of place into a pitched BGRx buffer: the 4th byte and the row padding stay untouched
    src4 = np.zeros((29, 43, 4), np.uint8)
    src4[..., :3] = frame
    src4[..., 3] = 77
    dst = np.full((29, 43 * 4 + 8), 9, np.uint8)
    kernels.render(
        src4,
        29,
        43,
        labels,
        spec,
        mode=mode,
        alpha=alpha,
        out=dst,
        frame_pitch=43 * 4,
        out_pitch=43 * 4 + 8,
        pixel_stride=4,
    )
    picture = dst[:, : 43 * 4].reshape(29, 43, 4)
    assert np.array_equal(picture[..., :3], ref)
    assert (picture[..., 3] == 9).all() and (dst[:, 43 * 4 :] == 9).all()


def test_render_rgb_frames_use_an_rgb_palette(kernels):
    spec = make_spec(classes=21)
    labels = np.arange(21, dtype=np.uint8).reshape(3, 7)
    frame = np.zeros((3, 7, 3), np.uint8)
    kernels.render(frame, 3, 7, labels, spec, mode="mask", channel_order="RGB")
    assert np.array_equal(frame, np.asarray(spec.palette, np.uint8)[labels])


def test_render_clamps_labels_outside_the_palette(kernels):
    spec = make_spec(classes=300)  # int32 labels, a 300-entry table
    labels = np.array([[0, 299, 5000, -3]], np.int32)
    frame = np.zeros((1, 4, 3), np.uint8)
    kernels.render(frame, 1, 4, labels, spec, mode="mask", label_dtype=np.int32)
    lut = palette_bgr(spec)
    assert np.array_equal(frame[0], lut[[0, 299, 299, 0]])


def test_tables_are_uploaded_once_per_geometry(kernels):
    spec = make_spec()
    frame = RNG.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    geo = Geometry.compute((30, 40), spec.input_size, "stretch")
    out = np.zeros((1, 3, *spec.input_size), np.float32)
    before = len(kernels._tables)
    for _ in range(3):
        kernels.preprocess(frame, 30, 40, out, spec, geo)
    assert len(kernels._tables) == before + 1


# ---------------------------------------------------------------------------------------------
# DLPack (CPU tensors exercise the same structs and lifetimes as CUDA ones)
# ---------------------------------------------------------------------------------------------
class _Exporter:
    def __init__(self, array: np.ndarray):
        self.array = array

    def __dlpack__(self, stream=None, max_version=None, dl_device=None, copy=None):
        a = self.array
        return dlpack.export_capsule(a.ctypes.data, a.shape, a.dtype, a.strides, dlpack.kDLCPU, 0, owner=a)

    def __dlpack_device__(self):
        return (dlpack.kDLCPU, 0)


@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.int64, np.float16, np.float32])
def test_dlpack_export_is_zero_copy_and_released(dtype):
    base = np.arange(24).astype(dtype).reshape(4, 6)
    view = base[:, 1::2]
    before = dlpack.live_exports()
    got = np.from_dlpack(_Exporter(view))
    assert np.array_equal(got, view) and got.ctypes.data == view.ctypes.data
    assert dlpack.live_exports() == before + 1
    del got
    gc.collect()
    assert dlpack.live_exports() == before
    capsule = _Exporter(view).__dlpack__()  # never consumed: the capsule's destructor releases it
    del capsule
    gc.collect()
    assert dlpack.live_exports() == before


def test_dlpack_import_from_numpy_and_torch():
    a = np.arange(12, dtype=np.float32).reshape(3, 4)[:, ::2]
    t = dlpack.from_dlpack(a)
    assert (t.ptr, t.shape, t.strides, t.dtype, t.device_type) == (
        a.ctypes.data,
        (3, 2),
        (16, 8),
        np.dtype(np.float32),
        dlpack.kDLCPU,
    )
    t.release()
    torch = pytest.importorskip("torch")
    x = torch.arange(6, dtype=torch.float16).reshape(2, 3).t()
    t = dlpack.from_dlpack(x)
    assert t.ptr == x.data_ptr() and t.shape == (3, 2) and t.strides == (2, 6) and t.dtype == np.float16
    y = torch.from_dlpack(_Exporter(np.ones((2, 2), np.int32)))
    assert y.dtype == torch.int32 and int(y.sum()) == 4


def test_interop_rejects_host_arrays_clearly():
    from deeplab_trt.runtime.errors import ToolkitError
    from deeplab_trt.runtime.interop import as_device_array

    with pytest.raises(ToolkitError, match="lives on cpu, not on a CUDA device"):
        as_device_array(_Exporter(np.zeros((2, 2), np.uint8)))
    with pytest.raises(ToolkitError, match="expected a CUDA array"):
        as_device_array([1, 2, 3])


def test_interop_image_layout_reads_pitch_and_pixel_stride():
    from deeplab_trt.runtime.cuda.api import DeviceArray
    from deeplab_trt.runtime.errors import ToolkitError
    from deeplab_trt.runtime.interop import image_layout

    assert image_layout(DeviceArray(0, (5, 7, 3), np.uint8)) == (5, 7, 21, 3)
    assert image_layout(DeviceArray(0, (5, 7, 3), np.uint8, strides=(64, 4, 1))) == (5, 7, 64, 4)
    with pytest.raises(ToolkitError, match="not an interleaved HWC layout"):
        image_layout(DeviceArray(0, (5, 7, 3), np.uint8, strides=(7, 1, 35)))  # planar
    with pytest.raises(ToolkitError, match="uint8"):
        image_layout(DeviceArray(0, (5, 7, 3), np.float32))


# ---------------------------------------------------------------------------------------------
# CUDA API layer without a GPU
# ---------------------------------------------------------------------------------------------
def test_check_names_the_call():
    rt = pytest.importorskip("cuda.bindings.runtime")
    from deeplab_trt.runtime.cuda.api import CudaError, check

    assert check((rt.cudaError_t.cudaSuccess, 42), "cudaMalloc") == 42
    assert check((rt.cudaError_t.cudaSuccess, 1, 2), "x") == (1, 2)
    assert check(rt.cudaError_t.cudaSuccess, "x") is None
    with pytest.raises(CudaError) as err:
        check((rt.cudaError_t.cudaErrorInvalidValue, None), "cudaMemcpyAsync")
    assert str(err.value) == "cudaMemcpyAsync failed: cudaErrorInvalidValue (invalid argument)"
    assert err.value.call == "cudaMemcpyAsync" and err.value.name == "cudaErrorInvalidValue"


def test_no_gpu_is_a_clear_error():
    pytest.importorskip("cuda.bindings.runtime")
    from deeplab_trt.runtime.cuda import api

    if api.device_count() > 0:
        pytest.skip("this machine has a GPU")
    with pytest.raises(api.CudaError, match=r"^cudaGetDeviceCount failed: cudaError\w+ .*no usable CUDA GPU"):
        api.use_device(0)


def test_every_cuda_python_call_used_exists():
    """Each ``rt.X`` / ``cudart().X`` / ``drv.X`` name in the GPU code exists in this cuda-python."""
    rt = pytest.importorskip("cuda.bindings.runtime")
    from cuda.bindings import driver

    files = [
        *(ROOT / "runtime" / "cuda").glob("*.py"),
        ROOT / "runtime" / "gpu_pipeline.py",
        ROOT / "runtime" / "interop.py",
        ROOT / "runtime" / "backends" / "tensorrt.py",
    ]
    used_rt, used_drv = set(), set()
    for path in files:
        text = path.read_text()
        used_rt |= set(re.findall(r"\b(?:rt|cudart\(\))\.(cuda\w+)", text))
        used_drv |= set(re.findall(r"\b(?:drv|driver\(\))\.(cu\w+|CU\w+)", text))
    assert {"cudaHostAlloc", "cudaHostGetDevicePointer", "cudaStreamBeginCapture", "cudaEventElapsedTime"} <= used_rt
    assert {"cuModuleLoadData", "cuLaunchKernel"} <= used_drv
    assert sorted(n for n in used_rt if not hasattr(rt, n)) == []
    assert sorted(n for n in used_drv if not hasattr(driver, n)) == []


def test_runtime_imports_without_cuda_python_or_torch():
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'cuda' or name.startswith('cuda.') or name == 'torch':\n"
        "            raise ImportError('blocked ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import deeplab_trt.runtime.gpu_pipeline, deeplab_trt.runtime.interop, deeplab_trt.runtime.backends.tensorrt, deeplab_trt.runtime.cuda.kernels\n"
        "import deeplab_trt.runtime.cuda.api as api\n"
        "assert 'torch' not in sys.modules\n"
        "try:\n"
        "    api.device_count()\n"
        "except api.CudaError as exc:\n"
        "    print('ERR', exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ERR cuda-python is not installed")
