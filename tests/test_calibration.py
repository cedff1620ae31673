"""INT8 calibration: data, histograms, entropy, cache, Q/DQ placement, TensorRT-RTX build, adapter, CLI."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from deeplab_trt.calibration import cache as cache_mod
from deeplab_trt.calibration.data import CalibrationData, discover, read_frames, select
from deeplab_trt.calibration.histogram import AbsHistogram
from deeplab_trt.calibration.qdq import insert_qdq, plan_qdq
from deeplab_trt.calibration.quantize import quantize_onnx
from deeplab_trt.calibration.scales import entropy_amax, kl_divergences, max_amax, percentile_amax
from deeplab_trt.runtime.errors import ToolkitError
from deeplab_trt.runtime.preprocess import preprocess
from deeplab_trt.runtime.spec import ModelSpec

ROOT = Path(__file__).resolve().parents[1]
PYTHON = "/work/venv/bin/python" if Path("/work/venv/bin/python").exists() else sys.executable


# ----- fixtures ---------------------------------------------------------------------------------
def _frame(rng, h=48, w=80):
    """A smooth-ish random BGR frame: blobs of colour, like a photo at low resolution."""
    small = rng.integers(0, 256, size=(6, 10, 3), dtype=np.uint8)
    frame = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    noise = rng.normal(0, 8, size=frame.shape)
    return np.clip(frame + noise, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    """A folder of images (png, jpg, bmp, webp, plus a non-image), and a 10-frame video."""
    root = tmp_path_factory.mktemp("media")
    rng = np.random.default_rng(0)
    folder = root / "images"
    (folder / "sub").mkdir(parents=True)
    for k, ext in enumerate(["png", "jpg", "bmp", "webp", "png"]):
        target = folder / ("sub" if k == 4 else "") / f"img{k}.{ext}"
        assert cv2.imwrite(str(target), _frame(rng))
    (folder / "notes.txt").write_text("not an image")
    video = root / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (80, 48))
    for _ in range(10):
        writer.write(_frame(rng))
    writer.release()
    return {"root": root, "folder": folder, "video": video}


def _spec(h=32, w=64, classes=4, name="tiny") -> ModelSpec:
    return ModelSpec(
        name=name, classes=[f"c{i}" for i in range(classes)], palette=[], input_height=h, input_width=w, head="lowres"
    )


def _conv(name, x, w, b, out, pads=1, stride=1):
    inits = [numpy_helper.from_array(w, f"{name}.weight"), numpy_helper.from_array(b, f"{name}.bias")]
    k = w.shape[2]
    node = helper.make_node(
        "Conv",
        [x, f"{name}.weight", f"{name}.bias"],
        [out],
        name=name,
        kernel_shape=[k, k],
        pads=[pads] * 4,
        strides=[stride, stride],
    )
    return node, inits


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    """conv-relu → conv + residual Add → relu → strided conv-relu → 1x1 classifier (lowres head).

    Weights are He-initialised with a fixed seed, so activations keep their scale through the
    layers (unlike a randomly initialised DeepLab, whose activations vanish).
    """
    rng = np.random.default_rng(42)
    spec = _spec()

    def he(cout, cin, k):
        return (rng.normal(0, np.sqrt(2.0 / (cin * k * k)), size=(cout, cin, k, k))).astype(np.float32)

    def bias(c):
        return rng.normal(0, 0.1, size=c).astype(np.float32)

    nodes, inits = [], []
    for args in [
        ("conv1", "input", he(8, 3, 3), bias(8), "c1"),
        ("conv2", "r1", he(8, 8, 3), bias(8), "c2"),
        ("conv3", "r2", he(16, 8, 3), bias(16), "c3"),
    ]:
        kw = {"stride": 2} if args[0] == "conv3" else {}
        node, init = _conv(*args, **kw)
        nodes.append(node)
        inits += init
    nodes.insert(1, helper.make_node("Relu", ["c1"], ["r1"], name="relu1"))
    nodes.insert(3, helper.make_node("Add", ["c2", "r1"], ["a2"], name="add2"))
    nodes.insert(4, helper.make_node("Relu", ["a2"], ["r2"], name="relu2"))
    nodes.append(helper.make_node("Relu", ["c3"], ["r3"], name="relu3"))
    head, init = _conv("classifier", "r3", he(4, 16, 1), bias(4), "output", pads=0)
    nodes.append(head)
    inits += init
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 32, 64])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 4, 16, 32])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    for key, value in spec.to_metadata().items():
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model, full_check=True)
    path = tmp_path_factory.mktemp("tiny") / "tiny.onnx"
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def tiny_int8(tiny_onnx, media, tmp_path_factory):
    """The tiny model calibrated (entropy) on the media folder + video, with a cache and a report."""
    out_dir = tmp_path_factory.mktemp("tiny_int8")
    cache = out_dir / "tiny.cache"
    out = quantize_onnx(
        tiny_onnx,
        data=[media["folder"], media["video"]],
        output=out_dir / "tiny.int8.onnx",
        cache=cache,
        report_dir=out_dir / "report",
        progress=False,
    )
    return {"model": out, "cache": cache, "report": out_dir / "report"}


# ----- data ---------------------------------------------------------------------------------------
def test_discover_mixed_sources_and_video_every_k(media):
    refs = discover([media["folder"], media["video"]], every=3)
    images = [r for r in refs if r.index is None]
    frames = [r.index for r in refs if r.index is not None]
    assert sorted(p.path.suffix for p in images) == [".bmp", ".jpg", ".png", ".png", ".webp"]
    assert frames == [0, 3, 6, 9]
    # a glob and a duplicate of the same file count once
    globbed = discover([str(media["folder"] / "*.png"), media["folder"] / "img0.png"])
    assert [r.path.name for r in globbed] == ["img0.png"]
    # every k-th frame is the k-th decoded frame
    cap = cv2.VideoCapture(str(media["video"]))
    decoded = [cap.read()[1] for _ in range(10)]
    got = [(r.index, f) for r, f in read_frames([r for r in refs if r.index is not None])]
    assert all(np.array_equal(f, decoded[i]) for i, f in got)


def test_batches_use_runtime_preprocessing(media):
    spec = _spec()
    data = CalibrationData([media["folder"]], spec)
    batches = list(data.batches(2))
    assert [b.shape for b in batches] == [(2, 3, 32, 64), (2, 3, 32, 64), (1, 3, 32, 64)]
    first = next(data.frames())[1]
    np.testing.assert_array_equal(batches[0][0], preprocess(first, spec)[0][0])
    assert sum(b.shape[0] for b in data.batches(2, drop_last=True)) == 4


def test_num_sampling_is_seeded_and_in_file_order(media):
    refs = discover([media["folder"], media["video"]])
    a, b = select(refs, 6, seed=1), select(refs, 6, seed=1)
    positions = [refs.index(r) for r in a]
    assert a == b and positions == sorted(positions) and len(set(a)) == 6
    assert any(select(refs, 6, seed=s) != a for s in range(2, 6))
    assert select(refs, 100) == refs


@pytest.mark.parametrize("case", ["missing", "empty_dir", "glob", "not_media", "corrupt", "tiny"])
def test_bad_data_names_the_file(case, tmp_path):
    spec = _spec()
    if case == "missing":
        target = tmp_path / "nope"
    elif case == "empty_dir":
        target = tmp_path / "empty"
        target.mkdir()
    elif case == "glob":
        target = tmp_path / "*.jpg"
    elif case == "not_media":
        target = tmp_path / "a.txt"
        target.write_text("x")
    elif case == "corrupt":
        target = tmp_path / "bad.png"
        target.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    else:
        target = tmp_path / "small.png"
        cv2.imwrite(str(target), np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(ToolkitError) as err:
        list(CalibrationData([target], spec).batches(1))
    message = str(err.value)
    assert str(target) in message and "\n" not in message


# ----- histograms -----------------------------------------------------------------------------------
def test_streamed_histogram_equals_one_shot():
    rng = np.random.default_rng(3)
    chunks = [rng.normal(0, s, size=5000).astype(np.float32) for s in (0.01, 0.5, 0.2, 9.0, 3.0, 40.0)]
    chunks.append(np.zeros(100, np.float32))
    streamed = AbsHistogram(512)
    for c in chunks:
        streamed.update(c)
    assert streamed.range > streamed.amax > streamed.range / 2  # grew by powers of two
    one_shot = AbsHistogram(512)
    one_shot.bins_per_unit = streamed.bins_per_unit  # same final range, all data at once
    one_shot.update(np.concatenate(chunks))
    np.testing.assert_array_equal(streamed.counts, one_shot.counts)
    ref, _ = np.histogram(np.abs(np.concatenate(chunks)), bins=512, range=(0, streamed.range))
    assert np.abs(ref - streamed.counts).sum() <= 2  # numpy's own edge rounding may move a value
    assert streamed.count == 30100 and streamed.zeros == 100
    assert streamed.amax == float(np.abs(np.concatenate(chunks)).max())


# ----- scale choice -------------------------------------------------------------------------------
def _kl_direct(counts, start=128, levels=128, eps=1e-4):
    """TensorRT's algorithm written out candidate by candidate (independent of the vectorised one)."""

    def smooth(d):
        zero = d == 0
        if zero.all():
            return None
        out = d.astype(np.float64)
        out[zero] = eps
        out[~zero] -= eps * zero.sum() / (~zero).sum()
        return out

    counts = np.asarray(counts, np.float64)
    result = []
    for i in range(start, counts.size + 1):
        kept = counts[:i]
        p = kept.copy()
        p[-1] += counts[i:].sum()
        q = np.zeros(i)
        level = (np.arange(i) * levels) // i
        for g in range(levels):
            members = np.flatnonzero(level == g)
            nonzero = members[kept[members] > 0]
            if nonzero.size:
                q[nonzero] = kept[members].sum() / nonzero.size
        p, q = smooth(p), smooth(q)
        if p is None or q is None:
            result.append(np.inf)
            continue
        p, q = p / p.sum(), q / q.sum()
        result.append(float(np.sum(p * np.log(p / q))))
    return np.array(result)


def test_kl_matches_direct_algorithm():
    rng = np.random.default_rng(7)
    for n in (200, 333):
        counts = rng.poisson(rng.exponential(40, n) * (rng.random(n) > 0.3)).astype(np.int64)
        counts[0] += 5000
        _, fast = kl_divergences(counts)
        slow = _kl_direct(counts)
        assert np.array_equal(np.isfinite(fast), np.isfinite(slow))
        ok = np.isfinite(slow)
        np.testing.assert_allclose(fast[ok], slow[ok], rtol=1e-9, atol=1e-12)
        assert np.argmin(fast) == np.argmin(slow)


def test_entropy_clips_outliers_of_a_gaussian():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 1, 400_000), rng.uniform(-40, 40, 40)]).astype(np.float32)
    h = AbsHistogram()
    for part in np.array_split(x, 7):
        h.update(part)
    ent, pct, mx = entropy_amax(h), percentile_amax(h, 99.99), max_amax(h)
    assert mx == pytest.approx(float(np.abs(x).max()))
    assert 2.5 < ent < 0.25 * mx  # keeps the bulk (|x| < 2.5 is 98.8 %), drops the outliers
    assert pct <= mx
    # ReLU-like data: half exact zeros must not drag the threshold down
    relu = np.maximum(rng.normal(0, 1, 200_000), 0).astype(np.float32)
    hr = AbsHistogram()
    hr.update(relu)
    assert entropy_amax(hr) > 2.5


# ----- calibration cache ----------------------------------------------------------------------------
def test_cache_round_trip_is_bit_exact(tmp_path):
    rng = np.random.default_rng(1)
    scales = {
        "input": 0.0123,
        "/backbone/conv1/Relu_output_0": 1e-7,
        "(Unnamed Layer* 3) [Shuffle]_output": 3.5,
        "a:b": 0.25,
    }
    scales.update({f"t{k}": float(np.float32(v)) for k, v in enumerate(rng.exponential(0.1, 50))})
    path = cache_mod.write_cache(tmp_path / "x.cache", scales, version=cache_mod.trt_version_number("10.3.0.30"))
    lines = path.read_text().splitlines()
    assert lines[0] == "TRT-100300-EntropyCalibration2"
    assert all(re.fullmatch(r".+: [0-9a-f]{8}", line) for line in lines[1:])
    assert lines[1] == "input: " + np.array(0.0123, ">f4").tobytes().hex()
    back, version, algo = cache_mod.read_cache(path)
    assert (version, algo) == (100300, "EntropyCalibration2")
    assert list(back) == list(scales)
    assert all(np.float32(back[k]).tobytes() == np.float32(v).tobytes() for k, v in scales.items())
    assert cache_mod.trt_version_number("8.6.1") == 8601
    for bad in ("hello\n", "TRT-8601-EntropyCalibration2\ninput 3c010a14\n", ""):
        (tmp_path / "bad.cache").write_text(bad)
        with pytest.raises(ToolkitError, match="bad.cache"):
            cache_mod.read_cache(tmp_path / "bad.cache")


# ----- Q/DQ model ------------------------------------------------------------------------------------
def _ort(path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def test_qdq_placement_and_accuracy(tiny_onnx, tiny_int8, media):
    model = onnx.load(str(tiny_int8["model"]))
    onnx.checker.check_model(model, full_check=True)
    nodes = {n.name: n for n in model.graph.node}
    inits = {t.name: t for t in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    # no int32 DequantizeLinear; every DQ reads int8
    for n in model.graph.node:
        if n.op_type == "DequantizeLinear":
            src = inits.get(n.input[0])
            dtype = src.data_type if src is not None else TensorProto.INT8
            assert dtype == TensorProto.INT8, n.name
    for name in ("conv1", "conv2", "conv3"):
        conv = nodes[name]
        assert producers[conv.input[0]].op_type == "DequantizeLinear"
        wdq = producers[conv.input[1]]
        assert wdq.op_type == "DequantizeLinear" and inits[wdq.input[0]].data_type == TensorProto.INT8
        assert inits[wdq.input[1]].dims == [conv.input and numpy_helper.to_array(inits[wdq.input[0]]).shape[0]]
        assert conv.input[2] in inits and inits[conv.input[2]].data_type == TensorProto.FLOAT  # bias float
    # residual Add: the identity branch is quantized, the Conv branch is not (Conv+Add fusion)
    add = nodes["add2"]
    assert add.input[0] == "c2" and producers[add.input[1]].op_type == "DequantizeLinear"
    # the classifier stays float, metadata survives
    assert nodes["classifier"].input[0] == "r3" and "classifier.weight" in inits
    meta = {p.key: p.value for p in model.metadata_props}
    assert "classes" in meta and "int8_calibration" in meta
    # ONNX Runtime runs it; labels agree with FP32
    fp32, int8 = _ort(tiny_onnx), _ort(tiny_int8["model"])
    spec = _spec()
    agree, diffs = [], []
    for _, frame in CalibrationData([media["folder"], media["video"]], spec).frames():
        x = preprocess(frame, spec)[0]
        a, b = fp32.run(None, {"input": x})[0], int8.run(None, {"input": x})[0]
        agree.append(np.mean(a.argmax(1) == b.argmax(1)))
        diffs.append(np.abs(a - b).mean() / np.abs(a).mean())
    assert np.mean(agree) > 0.95 and 0 < np.mean(diffs) < 0.1


def test_exclude_and_quantize_head(tiny_onnx):
    model = onnx.load(str(tiny_onnx))
    plan = plan_qdq(model, exclude=["conv3"])
    assert "conv3" not in plan.weights and "classifier" not in plan.weights
    assert set(plan.float_convs) == {"conv3", "classifier"}
    assert "classifier" in plan_qdq(model, quantize_head=True).weights
    q = insert_qdq(model, plan, {t: 1.0 for t in plan.tensors})
    conv3 = next(n for n in q.graph.node if n.name == "conv3")
    assert conv3.input[0] == "r2" and conv3.input[1] == "conv3.weight"


def test_report_files(tiny_int8):
    import json

    report = tiny_int8["report"]
    doc = json.loads((report / "calibration.json").read_text())
    assert doc["method"] == "entropy" and doc["quantized_tensors"] == 3
    assert {t["tensor"] for t in doc["tensors"]} == {"input", "r1", "r2"}
    assert all(0 < t["amax"] <= t["max_abs"] for t in doc["tensors"])
    pngs = sorted(report.glob("hist_*.png"))
    assert len(pngs) == 3 and all(p.read_bytes()[:4] == b"\x89PNG" for p in pngs)
    assert "| tensor | amax |" in (report / "calibration.md").read_text()


def test_cache_to_qdq_gives_the_same_model(tiny_onnx, tiny_int8, tmp_path):
    out = quantize_onnx(tiny_onnx, cache=tiny_int8["cache"], output=tmp_path / "from_cache.onnx", progress=False)

    def scales(path):
        m = onnx.load(str(path))
        return {t.name: numpy_helper.to_array(t).tobytes() for t in m.graph.initializer if t.name.endswith("_scale")}

    assert scales(out) == scales(tiny_int8["model"])
    with pytest.raises(ToolkitError, match="no such calibration cache"):
        quantize_onnx(tiny_onnx, cache=tmp_path / "missing.cache", output=tmp_path / "x.onnx")


def _rtx_build(trt, path) -> int:
    logger = trt.Logger(trt.Logger.ERROR)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    ok = parser.parse_from_file(str(path))
    assert ok, [str(parser.get_error(i)) for i in range(parser.num_errors)]
    plan = builder.build_serialized_network(network, builder.create_builder_config())
    assert plan is not None, f"TensorRT-RTX could not build {path}"
    return plan.nbytes


@pytest.mark.parametrize("weights", ["int8", "qdq"])
def test_tensorrt_rtx_builds_tiny_qdq(tiny_onnx, tiny_int8, weights, tmp_path, rtx_flavour):
    trt = rtx_flavour.module
    path = tiny_int8["model"]
    if weights == "qdq":
        path = quantize_onnx(
            tiny_onnx, cache=tiny_int8["cache"], output=tmp_path / "qdq.onnx", weights="qdq", progress=False
        )
    assert _rtx_build(trt, path) > 0


def test_tensorrt_rtx_builds_exported_deeplab(onnx_factory, media, tmp_path, rtx_flavour):
    trt = rtx_flavour.module
    fp32 = onnx_factory(head="lowres", height=64, width=128, num_classes=5)
    out = quantize_onnx(fp32, data=[media["video"]], output=tmp_path / "deeplab.int8.onnx", progress=False)
    model = onnx.load(str(out))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuantizeLinear") > 50 and ops.count("DequantizeLinear") > 100
    _ort(out).run(None, {"input": np.zeros((1, 3, 64, 128), np.float32)})
    assert _rtx_build(trt, out) > 0


@pytest.mark.slow
def test_tensorrt_rtx_census_of_mixed_deeplab(onnx_factory, media, tmp_path, rtx_flavour):
    """The strongly typed RTX network of the mixed DeepLab graph: no FP32 compute layer outside the guard."""
    import json

    from deeplab_trt.builder.census import parsed_census

    trt = rtx_flavour.module
    fp32 = onnx_factory(head="lowres", height=64, width=128, num_classes=5)
    out = quantize_onnx(fp32, data=[media["video"]], output=tmp_path / "mixed.onnx", rest="fp16", progress=False)
    census = parsed_census(trt, out)
    guard = json.loads({p.key: p.value for p in onnx.load(str(out)).metadata_props}["int8_calibration"])["fp32_nodes"]
    assert census.int8 > 50 and census.fp16 > 50
    assert set(census.fp32_layers) <= set(guard), census.fp32_layers
    assert _rtx_build(trt, out) > 0


# ----- TensorRT 10 calibrator adapter -------------------------------------------------------------
class FakeEntropyCalibrator2:
    """Stands in for tensorrt.IInt8EntropyCalibrator2 (a pybind11 base class)."""

    def __init__(self):
        self.base_initialised = True


class FakeTensorRT:
    __name__ = "tensorrt"
    __version__ = "10.3.0.30"
    IInt8EntropyCalibrator2 = FakeEntropyCalibrator2


class FakeDeviceBuffer:
    """Stands in for the cudaMalloc/cudaMemcpy copy: keeps the uploaded batches."""

    def __init__(self):
        self.uploads, self.freed = [], 0

    def upload(self, array):
        self.uploads.append(array.copy())
        return 0x1000 + len(self.uploads)

    def free(self):
        self.freed += 1


def test_entropy_calibrator_adapter(media, tiny_int8, tmp_path):
    from deeplab_trt.calibration.trt_calibrator import make_entropy_calibrator

    spec = _spec()
    device = FakeDeviceBuffer()
    cache = tmp_path / "trt.cache"
    cal = make_entropy_calibrator(
        FakeTensorRT, [media["folder"], media["video"]], spec, cache, batch_size=2, num=7, device=device
    )
    assert isinstance(cal, FakeEntropyCalibrator2) and cal.base_initialised
    assert cal.get_batch_size() == 2 and cal.read_calibration_cache() is None
    pointers = []
    while (ptrs := cal.get_batch(["input"])) is not None:
        pointers.append(ptrs)
    assert len(pointers) == 3 and all(len(p) == 1 and isinstance(p[0], int) for p in pointers)
    assert [u.shape for u in device.uploads] == [(2, 3, 32, 64)] * 3 and device.freed == 1
    # same data, same preprocessing as the Q/DQ path
    data = CalibrationData([media["folder"], media["video"]], spec, num=7)
    np.testing.assert_array_equal(device.uploads[0], next(data.batches(2)))
    # TensorRT writes its cache through the adapter; an existing cache is handed back untouched
    cal.write_calibration_cache(memoryview(tiny_int8["cache"].read_bytes()))
    assert cache.read_bytes() == tiny_int8["cache"].read_bytes()
    assert cal.read_calibration_cache() == cache.read_bytes()


def test_build_sizes_the_implicit_calibrator_from_the_profile(media):
    """Issue 11 item 1: the build's calibrator serves the kOPT batch TensorRT 10 calibrates at, not 1."""
    from deeplab_trt.builder.engine import BuildOptions, _make_calibrator, plan_profile
    from deeplab_trt.calibration.options import CalibrationOptions

    spec = _spec()
    options = BuildOptions(
        precision="int8", int8_mode="implicit", calibration=CalibrationOptions(data=[str(media["video"])], num=6)
    )
    dims = [None, 3, spec.input_height, spec.input_width]
    profile = plan_profile("input", dims, spec, (1, 3, 8))
    cal = _make_calibrator(FakeTensorRT, spec, options, profile=profile, dims=dims)
    cal.device = FakeDeviceBuffer()
    assert cal.get_batch_size() == 3
    while cal.get_batch(["input"]) is not None:
        pass
    assert [u.shape for u in cal.device.uploads] == [(3, 3, 32, 64)] * 2
    static = _make_calibrator(FakeTensorRT, spec, options, profile=None, dims=[4, *dims[1:]])
    assert static.get_batch_size() == 4
    with pytest.raises(ToolkitError, match="2 calibration frame.*at batch 3"):
        _make_calibrator(
            FakeTensorRT,
            spec,
            BuildOptions(calibration=CalibrationOptions(data=[str(media["video"])], num=2)),
            profile=profile,
            dims=dims,
        )
    # TensorRT's own calibrator takes the data options; scale options would be silently ignored there
    every = BuildOptions(calibration=CalibrationOptions(data=[str(media["video"])], every=2, policy="letterbox"))
    calibrator = _make_calibrator(FakeTensorRT, spec, every, profile=None, dims=[1, *dims[1:]])
    assert len(calibrator.data) == 5 and calibrator.data.policy == "letterbox"
    for ignored in ({"method": "max"}, {"exclude": ["*head*"]}, {"batch_size": 2}):
        options = BuildOptions(calibration=CalibrationOptions(data=[str(media["video"])], **ignored))
        with pytest.raises(ToolkitError, match="explicit INT8 only"):
            _make_calibrator(FakeTensorRT, spec, options, profile=profile, dims=dims)


def test_calibrator_refused_without_calibrator_api(media, rtx_flavour):
    from deeplab_trt.calibration.trt_calibrator import make_entropy_calibrator

    trt = rtx_flavour.module
    with pytest.raises(ToolkitError, match="no calibrator API"):
        make_entropy_calibrator(trt, [media["folder"]], _spec(), None)


# ----- CLI -------------------------------------------------------------------------------------------
def _cli(*args, cwd):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [PYTHON, "-m", "deeplab_trt", "calibrate", *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("case", ["no_data_files", "unreadable_image", "missing_model", "no_data_or_cache"])
def test_cli_bad_inputs(case, tiny_onnx, tmp_path):
    out = tmp_path / "out.int8.onnx"
    model, data = tiny_onnx, tmp_path / "frames"
    data.mkdir()
    if case == "unreadable_image":
        (data / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
        named = data / "broken.jpg"
    elif case == "missing_model":
        model = tmp_path / "missing.onnx"
        cv2.imwrite(str(data / "a.png"), np.full((40, 40, 3), 128, np.uint8))
        named = model
    else:
        named = data
    args = [model, "-o", out] + ([] if case == "no_data_or_cache" else ["--data", data])
    proc = _cli(*args, cwd=tmp_path)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode != 0
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    if case != "no_data_or_cache":
        assert str(named) in lines[0]
    else:
        assert "--data" in lines[0]
    assert not out.exists() and not list(tmp_path.glob(".out*"))


@pytest.mark.gpu
def test_calibrator_device_buffer_round_trip():
    from deeplab_trt.calibration.trt_calibrator import CudaDeviceBuffer
    from deeplab_trt.runtime.cuda import api

    batch = np.random.default_rng(0).normal(size=(2, 3, 8, 16)).astype(np.float32)
    buf = CudaDeviceBuffer()
    ptr = buf.upload(batch)
    back = np.empty_like(batch)
    rt = api.cudart()
    api.check(
        rt.cudaMemcpy(back.ctypes.data, ptr, batch.nbytes, rt.cudaMemcpyKind.cudaMemcpyDeviceToHost), "cudaMemcpy"
    )
    np.testing.assert_array_equal(back, batch)
    assert buf.upload(batch[:1]) == ptr  # a smaller batch reuses the allocation
    buf.free()


# ----- mixed INT8 + FP16 graph (strongly typed TensorRT) ----------------------------------------
@pytest.fixture(scope="module")
def tiny_mixed(tiny_onnx, tiny_int8, media, tmp_path_factory):
    out = tmp_path_factory.mktemp("mixed") / "tiny.mixed.onnx"
    return quantize_onnx(tiny_onnx, data=[media["folder"], media["video"]], output=out, rest="fp16", progress=False)


def test_mixed_graph_is_int8_plus_fp16_and_matches_fp32(tiny_onnx, tiny_int8, tiny_mixed, media):
    from deeplab_trt.calibration.layer_census import onnx_census

    model = onnx.load(str(tiny_mixed))
    onnx.checker.check_model(model)
    assert model.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT16
    assert model.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT16
    census = onnx_census(model)
    assert (census.int8, census.fp32) == (3, 0), census  # conv1-3 INT8; relus, add, classifier FP16
    assert census.fp16 >= 4
    before = onnx_census(tiny_int8["model"])
    assert before.int8 == 3 and before.fp16 == 0 and before.fp32 >= 4
    meta = {p.key: p.value for p in model.metadata_props}
    assert '"rest": "fp16"' in meta["int8_calibration"] and '"input_dtype": "float16"' in meta["extra"]

    # the Q/DQ scales of the FP32-rest graph are unchanged: same calibration, only the rest differs
    def scales(m):
        return {t.name: numpy_helper.to_array(t).tolist() for t in m.graph.initializer if t.name.endswith("_scale")}

    assert scales(model) == scales(onnx.load(str(tiny_int8["model"])))
    fp32, mixed = _ort(tiny_onnx), _ort(tiny_mixed)
    spec = _spec()
    agree = []
    for _, frame in CalibrationData([media["folder"], media["video"]], spec).frames():
        x = preprocess(frame, spec)[0]
        a, b = fp32.run(None, {"input": x})[0], mixed.run(None, {"input": x.astype(np.float16)})[0]
        agree.append(np.mean(a.argmax(1) == b.argmax(1)))
    assert np.mean(agree) > 0.95


def test_tensorrt_rtx_census_of_mixed_graph(tiny_mixed, rtx_flavour):
    from deeplab_trt.builder.census import parsed_census

    trt = rtx_flavour.module
    census = parsed_census(trt, tiny_mixed)
    assert census.int8 == 3 and census.fp32_layers == [], census
    assert _rtx_build(trt, tiny_mixed) > 0


def test_report_shows_layer_counts(tiny_int8):
    import json

    doc = json.loads((tiny_int8["report"] / "calibration.json").read_text())
    assert doc["layers"]["int8"] == 3 and doc["layers"]["fp16"] == 0
    assert "INT8 3 / FP16 0 / FP32" in (tiny_int8["report"] / "calibration.md").read_text()


def test_int8_fp16_ratio_and_layers_column():
    from deeplab_trt.benchmarks.bench import int8_fp16_ratio
    from deeplab_trt.benchmarks.report import _layers, ratio_line

    results = {"fp16": {"latency_ms": {"mean": 10.0}}, "int8": {"latency_ms": {"mean": 6.0}}}
    assert int8_fp16_ratio(results) == 0.6
    assert int8_fp16_ratio({"int8": results["int8"]}) is None
    assert "unmeasured" in ratio_line({"int8_over_fp16": None})
    assert "0.600" in ratio_line({"int8_over_fp16": 0.6, "config": {"backend": "tensorrt"}})
    assert _layers({"int8": 69, "fp16": 83, "fp32": 0}) == "69/83/0" and _layers(None) == "-"


def test_rest_for_follows_typing():
    from deeplab_trt.calibration.quantize import rest_for

    assert rest_for("fp32") == "fp32" and rest_for("fp16") == "fp16"
    assert rest_for("auto", "tensorrt-rtx") in ("fp16",)  # strongly typed only (or not installed → fp16)
