"""The accuracy benchmark's parts: the table writer, engine sizes, the ModelOpt child protocol.

Fast: a 3-layer model, engines built by the real TensorRT-RTX on this CPU (skipped where absent).
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from deeplab_trt.benchmarks import calibration_accuracy as bench
from deeplab_trt.benchmarks import engine_sizes
from deeplab_trt.runtime.spec import ModelSpec


@pytest.fixture(scope="module")
def small_onnx(tmp_path_factory):
    """conv-relu-conv (lowres head), 1×3×32×64, with our metadata: what build_engine accepts."""
    rng = np.random.default_rng(0)
    spec = ModelSpec(name="small", classes=["a", "b", "c"], palette=[], input_height=32, input_width=64, head="lowres")
    w1 = rng.normal(0, 0.3, size=(8, 3, 3, 3)).astype(np.float32)
    w2 = rng.normal(0, 0.3, size=(3, 8, 1, 1)).astype(np.float32)
    inits = [numpy_helper.from_array(a, n) for a, n in [(w1, "w1"), (w2, "w2")]]
    nodes = [
        helper.make_node("Conv", ["input", "w1"], ["c1"], kernel_shape=[3, 3], pads=[1] * 4, strides=[2, 2]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["output"], kernel_shape=[1, 1]),
    ]
    graph = helper.make_graph(
        nodes,
        "small",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 32, 64])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3, 16, 32])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    for key, value in spec.to_metadata().items():
        model.metadata_props.add(key=key, value=value)
    path = tmp_path_factory.mktemp("small") / "small.onnx"
    onnx.save(model, str(path))
    return path


def test_table_has_engine_columns_and_the_size_note():
    rows = {
        "fp32": {"miou": 0.8571, "agreement_vs_fp32": 1.0, "onnx_mb": 12.0, "ms_per_image": 150.0,
                 "engine": {"precision": "fp32", "engine_mib": 48.04, "build_s": 1.26}},
        "fp16": {"note": "not evaluated", "engine": {"precision": "fp16", "engine_mib": 24.8, "build_s": 9.5}},
        "ours entropy": {"miou": 0.8566, "calib_s": 7.0, "calib_peak_rss_mb": 395.0,
                         "engine": {"precision": "int8", "error": "cannot parse it: DequantizeLinear Int32"}},
        "modelopt entropy": {"note": "skipped: no --modelopt-python"},
    }  # fmt: skip
    table = bench.accuracy_table(rows, "context line")
    lines = table.splitlines()
    assert lines[0] == "context line"
    header = [c.strip() for c in lines[2].strip("|").split("|")]
    assert "engine MiB" in header and "engine build wall (s)" in header
    cells = {line.split("|")[1].strip(): [c.strip() for c in line.strip("|").split("|")] for line in lines[4:8]}
    assert cells["fp32"][header.index("engine MiB")] == "48.0"
    assert cells["fp32"][header.index("engine build wall (s)")] == "1.3"
    assert cells["fp16"][header.index("mIoU")] == "—"  # no accuracy, but an engine
    assert cells["fp16"][header.index("engine MiB")] == "24.8"
    assert cells["ours entropy"][header.index("Δ vs FP32 (points)")] == "-0.05"
    assert cells["ours entropy"][header.index("engine MiB")].startswith("not built: cannot parse")
    assert cells["modelopt entropy"][header.index("engine MiB")] == "—"
    assert cells["modelopt entropy"][header.index("note")] == "skipped: no --modelopt-python"
    assert engine_sizes.SIZE_NOTE in table and "not a speed proxy" in table


def test_engine_sizes_from_build_engine(small_onnx, tmp_path, rtx_flavour):
    rows = engine_sizes.build_engines(
        {"fp32": (small_onnx, "fp32", {}), "fp16": (small_onnx, "fp16", {})},
        tmp_path / "engines",
        flavour="tensorrt-rtx",
    )
    for name in ("fp32", "fp16"):
        assert "error" not in rows[name], rows[name]
        assert rows[name]["precision"] == name
        assert 0 < rows[name]["engine_mib"] < 50 and rows[name]["build_s"] > 0
    engines = sorted(tmp_path.joinpath("engines").glob("*.engine"))
    assert [round(p.stat().st_size / 2**20, 6) for p in engines] == [
        round(rows[n]["engine_mib"], 6) for n in ("fp32", "fp16")
    ]
    table = engine_sizes.engine_table(rows)
    assert "| fp16 | fp16 |" in table and engine_sizes.SIZE_NOTE in table


def test_int8_engine_calibrated_by_build_engine(small_onnx, tmp_path, rtx_flavour):
    """The mixed INT8 + FP16 row's path: FP32 model + calibration data, built by build_engine."""
    bench.write_calibration_frames(tmp_path / "frames", 4, 32, 64)
    extra = {"data": [str(tmp_path / "frames")], "num": 4, "method": "entropy"}
    rows = engine_sizes.build_engines({"int8": (small_onnx, "int8", extra)}, tmp_path / "e", flavour="tensorrt-rtx")
    assert "error" not in rows["int8"], rows["int8"]
    assert rows["int8"]["engine_mib"] > 0 and rows["int8"]["build_s"] >= (rows["int8"]["engine_build_s"] or 0)


def test_engine_build_failure_is_a_row_not_a_crash(tmp_path, rtx_flavour):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not onnx")
    rows = engine_sizes.build_engines({"int8": (bad, "int8", {})}, tmp_path / "e", flavour="tensorrt-rtx")
    assert rows["int8"]["precision"] == "int8" and "bad.onnx" in rows["int8"]["error"]
    assert "\n" not in rows["int8"]["error"]


def test_engines_unavailable_names_the_reason():
    reason = engine_sizes.engines_unavailable("no-such-flavour")
    assert reason and reason.startswith("engines skipped:") and "\n" not in reason


# ----- the ModelOpt child protocol ------------------------------------------------------------------
def _calib_npy(tmp_path, n=4):
    path = tmp_path / "calib.npy"
    np.save(path, np.random.default_rng(1).normal(size=(n, 3, 32, 64)).astype(np.float32))
    return path


def _assert_qdq_result(out, record):
    model = onnx.load(str(out))
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert record["seconds"] > 0 and record["peak_rss_mb"] > 0 and record["modelopt_version"]


def test_modelopt_child_in_process(small_onnx, tmp_path):
    """The child side as the parent calls it, run in this process (needs modelopt here)."""
    pytest.importorskip("modelopt.onnx.quantization", reason="nvidia-modelopt is not installed in this venv")
    from deeplab_trt.benchmarks import modelopt_child

    out, result = tmp_path / "mo.onnx", tmp_path / "mo.json"
    argv = ["--onnx", str(small_onnx), "--calib", str(_calib_npy(tmp_path)), "--method", "max"]
    assert modelopt_child.main(argv + ["--out", str(out), "--result", str(result)]) == 0
    _assert_qdq_result(out, json.loads(result.read_text()))


def test_modelopt_skips_in_one_line_without_a_usable_python(tmp_path):
    assert bench.modelopt_unavailable(None).startswith("skipped: no --modelopt-python")
    # this venv's python: skipped unless modelopt happens to be installed here
    reason = bench.modelopt_unavailable(sys.executable)
    if reason is not None:
        assert reason.startswith(f"skipped: --modelopt-python {sys.executable} cannot import") and "\n" not in reason
    assert bench.modelopt_unavailable(str(tmp_path / "no-python")).startswith("skipped: --modelopt-python")


def test_calibration_npy_is_the_preprocessed_frames(tmp_path):
    from deeplab_trt.calibration.data import CalibrationData

    spec = ModelSpec(name="s", classes=["a", "b"], palette=[], input_height=32, input_width=64, head="lowres")
    bench.write_calibration_frames(tmp_path / "frames", 3, 48, 80)
    n = bench.write_calibration_npy(tmp_path / "frames", spec, tmp_path / "c.npy")
    batch = np.load(tmp_path / "c.npy")
    assert n == 3 and batch.shape == (3, 3, 32, 64) and batch.dtype == np.float32
    np.testing.assert_array_equal(batch, np.concatenate(list(CalibrationData([tmp_path / "frames"], spec).batches(1))))


@pytest.mark.slow  # ~20-40 s on 2 loaded cores: ModelOpt's import + two child runs
def test_modelopt_subprocess_protocol(small_onnx, tmp_path):
    """The real child in the ModelOpt venv named by DEEPLAB_TRT_MODELOPT_PYTHON; metadata carried over."""
    python = os.environ.get("DEEPLAB_TRT_MODELOPT_PYTHON")
    reason = bench.modelopt_unavailable(python)
    if reason:
        pytest.skip(f"ModelOpt venv: {reason} (set DEEPLAB_TRT_MODELOPT_PYTHON)")
    out = tmp_path / "mo.onnx"
    record = bench.run_modelopt(python, small_onnx, _calib_npy(tmp_path), "entropy", "fp32", out)
    _assert_qdq_result(out, record)
    assert record["child_ru_maxrss_mb"] >= record["peak_rss_mb"] * 0.5
    from deeplab_trt.runtime.spec import spec_from_onnx

    assert spec_from_onnx(out).name == "small"  # our metadata, so our backends can run it
    with pytest.raises(RuntimeError, match="ModelOpt max/fp32 failed"):
        bench.run_modelopt(
            python, tmp_path / "missing.onnx", tmp_path / "calib.npy", "max", "fp32", tmp_path / "x.onnx"
        )


# ----- placement rule 9: a pool between quantized tensors reads the quantized one -------------------
def _pool_graph(shared: bool) -> onnx.ModelProto:
    """conv1-relu → [conv2 if shared] and GlobalAveragePool → conv3 (1×1); Mul; float head Conv.

    ``shared``: the ReLU output also feeds a quantized Conv (ASPP: the backbone output feeds ASPP's
    Convs and its image pool); otherwise it feeds only the pool and a float Mul (a squeeze-excitation).
    """
    rng = np.random.default_rng(3)

    def w(*shape):
        return numpy_helper.from_array(rng.normal(0, 0.3, size=shape).astype(np.float32))

    inits = {"w1": w(8, 3, 3, 3), "w2": w(8, 8, 3, 3), "w3": w(8, 8, 1, 1), "wh": w(3, 8, 1, 1)}
    for name, tensor in inits.items():
        tensor.name = name
    nodes = [
        helper.make_node("Conv", ["input", "w1"], ["c1"], name="conv1", kernel_shape=[3, 3], pads=[1] * 4),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("GlobalAveragePool", ["r1"], ["g"], name="pool"),
        helper.make_node("Conv", ["g", "w3"], ["c3"], name="conv3", kernel_shape=[1, 1]),
    ]
    if shared:
        nodes.append(helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2", kernel_shape=[3, 3], pads=[1] * 4))
    nodes.append(helper.make_node("Mul", ["c2" if shared else "r1", "c3"], ["m"], name="mul"))
    nodes.append(helper.make_node("Conv", ["m", "wh"], ["output"], name="head", kernel_shape=[1, 1]))
    graph = helper.make_graph(
        nodes,
        "pool",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3, 16, 16])],
        [t for name, t in inits.items() if shared or name != "w2"],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_pool_between_quantized_tensors_reads_the_quantized_input():
    import onnxruntime as ort

    from deeplab_trt.calibration.qdq import insert_qdq, plan_qdq

    model = _pool_graph(shared=True)
    plan = plan_qdq(model)
    assert plan.quantized_pools == ["pool"]
    assert ("pool", 0) in plan.activations["r1"] and ("conv2", 0) in plan.activations["r1"]
    qmodel = insert_qdq(model, plan, {t: 4.0 for t in plan.tensors})
    nodes = {n.name: n for n in qmodel.graph.node}
    producer = {o: n for n in qmodel.graph.node for o in n.output}
    assert producer[nodes["pool"].input[0]].op_type == "DequantizeLinear"
    assert nodes["pool"].input[0] == nodes["conv2"].input[0]  # one Q/DQ pair, shared (one scale)
    onnx.checker.check_model(qmodel)
    x = np.random.default_rng(0).normal(size=(1, 3, 16, 16)).astype(np.float32)
    got = ort.InferenceSession(qmodel.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"input": x})
    assert np.isfinite(got[0]).all()


def test_pool_whose_input_is_not_otherwise_quantized_stays_float():
    from deeplab_trt.calibration.qdq import plan_qdq

    plan = plan_qdq(_pool_graph(shared=False))
    assert plan.quantized_pools == [] and "r1" not in plan.activations  # no extra Q before a float Mul
    assert "g" in plan.activations  # the pool's consumer Conv is still quantized


def test_fp16_qdq_note_says_mis_execution_only_when_agreement_collapses():
    assert "mis-executes" in bench.fp16_qdq_note(0.05)
    assert "no proven oracle" in bench.fp16_qdq_note(0.974) and "mis-executes" not in bench.fp16_qdq_note(0.974)
