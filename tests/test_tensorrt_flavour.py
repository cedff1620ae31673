"""Flavour detection and the builder's pure decisions, for TensorRT 10, 11 and TensorRT-RTX.

Only TensorRT-RTX installs here. The TensorRT 10 and 11 cases use *fake* flavour
descriptions built from NVIDIA's documented APIs (``Flavour.documented``), named FAKE_*;
the TensorRT-RTX cases use both its documented description and the real installed module,
and a test checks that the two agree.
"""

from __future__ import annotations

import sys

import pytest

from deeplab_trt.builder.engine import (
    DEFAULT_DYNAMIC_BATCH,
    RTX_DEFAULT_TARGETS,
    DlaPlan,
    plan_calibration_batch,
    plan_compute_capabilities,
    plan_dla,
    plan_precision,
    plan_profile,
    plan_user_allocation,
)
from deeplab_trt.runtime import tensorrt_flavour as tf
from deeplab_trt.runtime.cli_types import parse_batch_range
from deeplab_trt.runtime.errors import ToolkitError
from deeplab_trt.runtime.spec import ModelSpec

FAKE_TRT10 = tf.Flavour.documented("tensorrt", (10, 3, 0))
FAKE_TRT11 = tf.Flavour.documented("tensorrt", (11, 0, 0))
FAKE_RTX = tf.Flavour.documented("tensorrt-rtx", (1, 7, 1))
ALL_FAKES = {"trt10": FAKE_TRT10, "trt11": FAKE_TRT11, "rtx": FAKE_RTX}


def _spec(**extra) -> ModelSpec:
    return ModelSpec(
        name="m",
        classes=["a", "b"],
        palette=[(0, 0, 0), (1, 1, 1)],
        input_height=64,
        input_width=128,
        head="lowres",
        extra=extra,
    )


# ----- detection ----------------------------------------------------------------------------------
def test_detect_finds_installed_rtx_under_either_name(rtx_flavour):
    flavour = rtx_flavour
    assert flavour.name == "tensorrt-rtx"
    assert flavour.module_name in ("tensorrt_rtx", "tensorrt_rtx_bindings")
    assert flavour.version >= (1, 0) and flavour.major == flavour.version[0]
    assert flavour.label.startswith("TensorRT-RTX ")
    assert tf.detect("rtx") is tf.detect("tensorrt-rtx") is flavour  # cached, aliases
    assert tf.detect("auto").name in ("tensorrt", "tensorrt-rtx")  # which one depends on the machine


def test_installed_rtx_capabilities_match_its_documentation(rtx_flavour):
    real = rtx_flavour
    documented = tf.Flavour.documented("tensorrt-rtx", real.version)
    for attr in (
        "has_calibrator_api",
        "has_weak_typing",
        "has_strongly_typed",
        "has_timing_cache",
        "has_compute_capability_targets",
        "has_progress_monitor",
        "has_engine_inspector",
        "has_engine_validity",
        "has_dla",
        "has_runtime_cache",
        "capture_needs_user_allocation",
        "has_user_allocation_flag",
        "strongly_typed_only",
    ):
        assert getattr(real, attr) == getattr(documented, attr), attr
    assert real.strongly_typed_only and not real.has_calibrator_api
    assert set(tf.supported_compute_capabilities(real)) >= {"SM80", "SM86", "SM89", "SM120"}
    assert "SM90" not in tf.supported_compute_capabilities(real)


def test_explicit_flavour_not_installed_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # make sure: not importable here
    tf.detect.cache_clear()
    try:
        with pytest.raises(ToolkitError) as err:
            tf.detect("tensorrt")
        message = str(err.value)
        assert "not installed" in message and "pip install tensorrt" in message and "python3-libnvinfer" in message
        assert "\n" not in message
    finally:
        tf.detect.cache_clear()


def test_no_tensorrt_at_all_is_one_clear_error(monkeypatch):
    for name in ("tensorrt", "tensorrt_rtx", "tensorrt_rtx_bindings"):
        monkeypatch.setitem(sys.modules, name, None)
    tf.detect.cache_clear()
    try:
        with pytest.raises(ToolkitError, match="no TensorRT found.*tensorrt-rtx-cu13-bindings"):
            tf.detect("auto")
    finally:
        tf.detect.cache_clear()


def test_unknown_flavour_name():
    with pytest.raises(ToolkitError, match="--flavour tensorflow"):
        tf.detect("tensorflow")


def test_module_imports_without_tensorrt():
    """deeplab_trt.runtime.tensorrt_flavour imports, and explains, with no TensorRT importable."""
    import subprocess

    code = (
        "import sys\n"
        "for n in ('tensorrt', 'tensorrt_rtx', 'tensorrt_rtx_bindings'): sys.modules[n] = None\n"
        "from runtime import tensorrt_flavour as tf\n"
        "from deeplab_trt.runtime.errors import ToolkitError\n"
        "assert tf.Flavour.documented('tensorrt', '10.3.0.30').has_calibrator_api\n"
        "try:\n    tf.detect()\nexcept ToolkitError as e:\n    print(e)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=str(__import__("pathlib").Path(__file__).resolve().parents[1]),
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("no TensorRT found")


@pytest.mark.parametrize(
    "text, expected",
    [("10.3.0.30", (10, 3, 0, 30)), ("1.7.1.116", (1, 7, 1, 116)), ("11.0.0b1", (11, 0, 0)), ("10.13.post1", (10, 13))],
)
def test_parse_version(text, expected):
    assert tf.parse_version(text) == expected


def test_documented_capabilities():
    assert FAKE_TRT10.has_weak_typing and FAKE_TRT10.has_calibrator_api and not FAKE_TRT10.strongly_typed_only
    assert FAKE_TRT11.strongly_typed_only and not FAKE_TRT11.has_calibrator_api and FAKE_TRT11.has_timing_cache
    assert FAKE_RTX.strongly_typed_only and not FAKE_RTX.has_timing_cache and FAKE_RTX.has_compute_capability_targets


def test_user_allocation_is_planned_for_tensorrt_rtx_only():
    """Issue 11 item 5: RTX engines are capturable into a CUDA graph only with REQUIRE_USER_ALLOCATION."""
    assert plan_user_allocation(FAKE_RTX)
    assert not plan_user_allocation(FAKE_TRT10) and not plan_user_allocation(FAKE_TRT11)
    assert not plan_user_allocation(tf.Flavour.documented("tensorrt-rtx", (1, 1, 0)))  # flag added in 1.2
    assert FAKE_RTX.has_runtime_cache and not FAKE_TRT10.has_runtime_cache and not FAKE_TRT11.has_runtime_cache


def test_installed_rtx_plans_user_allocation(rtx_flavour):
    assert plan_user_allocation(rtx_flavour) and rtx_flavour.has_runtime_cache
    assert hasattr(rtx_flavour.module.BuilderFlag, "REQUIRE_USER_ALLOCATION")


# ----- precision plans ----------------------------------------------------------------------------
@pytest.mark.parametrize("key", ALL_FAKES)
def test_fp32_is_the_graph_as_is(key):
    plan = plan_precision(ALL_FAKES[key], "fp32")
    assert plan.onnx_pass is None and plan.builder_flags == () and not plan.calibrator
    assert plan.strongly_typed == (key != "trt10")
    assert plan.cleared_flags == ("TF32",)  # issue 11 item 9: FP32 means FP32, not TF32


def test_fp16_trt10_uses_the_builder_flag_on_the_fp32_graph():
    plan = plan_precision(FAKE_TRT10, "fp16")
    assert plan.builder_flags == ("FP16",) and not plan.strongly_typed and plan.onnx_pass is None


@pytest.mark.parametrize("key", ["trt11", "rtx"])
def test_fp16_strongly_typed_flavours_use_the_fp16_pass(key):
    plan = plan_precision(ALL_FAKES[key], "fp16")
    assert plan.strongly_typed and plan.onnx_pass == "fp16" and plan.builder_flags == ()


@pytest.mark.parametrize("key", ALL_FAKES)
def test_fp16_graph_given_is_built_as_is(key):
    plan = plan_precision(ALL_FAKES[key], "fp16", onnx_is_fp16=True)
    assert plan.onnx_pass is None and plan.strongly_typed and plan.builder_flags == ()


def test_int8_explicit_trt10_qdq_with_int8_and_fp16_flags():
    plan = plan_precision(FAKE_TRT10, "int8", "explicit", onnx_is_qdq=True)
    assert plan.builder_flags == ("INT8", "FP16") and not plan.strongly_typed and plan.onnx_pass is None


@pytest.mark.parametrize("key", ["trt11", "rtx"])
def test_int8_explicit_strongly_typed(key):
    given = plan_precision(ALL_FAKES[key], "int8", onnx_is_qdq=True)
    assert given.strongly_typed and given.onnx_pass is None and given.builder_flags == ()
    calibrated = plan_precision(ALL_FAKES[key], "int8", onnx_is_qdq=False, has_data=True)
    assert calibrated.strongly_typed and calibrated.onnx_pass == "qdq"


@pytest.mark.parametrize("key", ALL_FAKES)
def test_mixed_int8_fp16_graph_given_builds_as_int8(key):
    """'calibrate --int8-rest fp16' writes a Q/DQ graph with an FP16 input: an INT8 graph, not an FP16 one."""
    plan = plan_precision(ALL_FAKES[key], "int8", onnx_is_qdq=True, onnx_is_fp16=True)
    assert plan.precision == "int8" and plan.onnx_pass is None
    with pytest.raises(ToolkitError, match="FP16 graph"):
        plan_precision(ALL_FAKES[key], "fp32", onnx_is_fp16=True)


def test_int8_implicit_only_on_trt10():
    plan = plan_precision(FAKE_TRT10, "int8", "implicit", has_data=True)
    assert plan.calibrator and "INT8" in plan.builder_flags and not plan.strongly_typed and plan.onnx_pass is None
    for key in ("trt11", "rtx"):
        with pytest.raises(ToolkitError, match="implicit needs TensorRT 10's calibrator API"):
            plan_precision(ALL_FAKES[key], "int8", "implicit", has_data=True)


@pytest.mark.parametrize("key", ALL_FAKES)
def test_int8_without_data_or_qdq_is_an_error(key):
    with pytest.raises(ToolkitError, match="needs calibration data"):
        plan_precision(ALL_FAKES[key], "int8", "explicit", onnx_is_qdq=False, has_data=False)


def test_impossible_combinations():
    with pytest.raises(ToolkitError, match="Q/DQ nodes"):
        plan_precision(FAKE_RTX, "fp16", onnx_is_qdq=True)
    with pytest.raises(ToolkitError, match="already has Q/DQ"):
        plan_precision(FAKE_TRT10, "int8", "implicit", onnx_is_qdq=True, has_data=True)
    with pytest.raises(ToolkitError, match="implicit needs calibration data"):
        plan_precision(FAKE_TRT10, "int8", "implicit")
    with pytest.raises(ToolkitError, match="FP16 graph"):
        plan_precision(FAKE_RTX, "fp32", onnx_is_fp16=True)
    with pytest.raises(ToolkitError, match="--precision int4"):
        plan_precision(FAKE_RTX, "int4")
    with pytest.raises(ToolkitError, match="applies to --precision int8"):
        plan_precision(FAKE_TRT10, "fp16", "implicit")


def test_plan_for_the_real_rtx_module(rtx_flavour):
    plan = plan_precision(rtx_flavour, "fp16")
    assert plan.onnx_pass == "fp16" and plan.strongly_typed


# ----- DLA (issue 11 item 12) ---------------------------------------------------------------------
def test_dla_releases():
    """DLA: TensorRT up to 10.7 (JetPack 6 has 10.3), not 10.8..11.3, again from 11.4; never TensorRT-RTX,
    whose real bindings keep ``DeviceType.DLA`` (the capability must not come from that attribute)."""
    assert FAKE_TRT10.has_dla and tf.Flavour.documented("tensorrt", (10, 7, 0)).has_dla
    assert not tf.Flavour.documented("tensorrt", (10, 8, 0)).has_dla and not FAKE_TRT11.has_dla
    assert tf.Flavour.documented("tensorrt", (11, 4, 1)).has_dla and not FAKE_RTX.has_dla


def test_rtx_module_has_dla_enum_but_no_dla(rtx_flavour):
    assert hasattr(rtx_flavour.module.DeviceType, "DLA") and not rtx_flavour.has_dla


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_dla_plan_on_trt10(precision):
    assert plan_dla(FAKE_TRT10, None, False, precision) is None
    assert plan_dla(FAKE_TRT10, 1, True, precision) == DlaPlan(core=1, gpu_fallback=True)
    assert plan_dla(FAKE_TRT10, 0, False, precision).to_dict() == {"core": 0, "gpu_fallback": False}


@pytest.mark.parametrize(
    "flavour, core, fallback, precision, message",
    [
        (FAKE_RTX, 0, False, "fp16", r"--dla-core 0: TensorRT-RTX 1\.7\.1 has no DLA"),
        (FAKE_TRT11, 0, True, "int8", r"TensorRT 11\.0\.0 has no DLA"),
        (FAKE_TRT10, None, True, "fp16", "--gpu-fallback applies with --dla-core N only"),
        (FAKE_TRT10, -1, False, "fp16", "expected a DLA core number"),
        (FAKE_TRT10, 0, True, "fp32", "DLA runs FP16 and INT8 layers only"),
    ],
)
def test_dla_plan_errors(flavour, core, fallback, precision, message):
    with pytest.raises(ToolkitError, match=message):
        plan_dla(flavour, core, fallback, precision)


# ----- optimization profiles ----------------------------------------------------------------------
def test_static_model_needs_no_profile():
    assert plan_profile("input", [1, 3, 64, 128], _spec(), None) is None
    assert plan_profile("input", [2, 3, 64, 128], _spec(), (2, 2, 2)) is None


def test_static_batch_excluded_by_the_profile_is_an_error():
    with pytest.raises(ToolkitError, match="static batch of 1, which --profile-batch 2:2:4 excludes"):
        plan_profile("input", [1, 3, 64, 128], _spec(), (2, 2, 4), "m.onnx")
    with pytest.raises(ToolkitError, match="static batch of 1; a batch range needs"):
        plan_profile("input", [1, 3, 64, 128], _spec(), (1, 2, 4), "m.onnx")


def test_dynamic_batch_profile_sources():
    shapes = plan_profile("input", [None, 3, 64, 128], _spec(), (1, 4, 8))
    assert shapes == ((1, 3, 64, 128), (4, 3, 64, 128), (8, 3, 64, 128))
    from_export = plan_profile("input", [None, 3, 64, 128], _spec(dynamic_batch=[2, 3, 5]), None)
    assert [s[0] for s in from_export] == [2, 3, 5]
    fallback = plan_profile("input", [None, 3, None, None], _spec(), None)
    assert [s[0] for s in fallback] == list(DEFAULT_DYNAMIC_BATCH) and fallback[0][2:] == (64, 128)


def test_profile_checks_the_metadata_size():
    with pytest.raises(ToolkitError, match="metadata says 3×64×128"):
        plan_profile("input", [1, 3, 32, 32], _spec(), None)


@pytest.mark.parametrize("text, expected", [("1:4:8", (1, 4, 8)), ("3", (3, 3, 3)), (None, None)])
def test_parse_batch(text, expected):
    assert parse_batch_range(text) == expected


@pytest.mark.parametrize("text", ["0:1:2", "4:2:8", "a:b:c", "1:2"])
def test_parse_batch_rejects(text):
    with pytest.raises(ToolkitError, match="--profile-batch"):
        parse_batch_range(text, flag="--profile-batch")


# ----- compute capability targets -----------------------------------------------------------------
def test_rtx_targets_default_without_gpu():
    targets, source = plan_compute_capabilities(FAKE_RTX, None, None, "no CUDA device")
    assert targets == list(RTX_DEFAULT_TARGETS) and source.startswith("default (no GPU")


def test_rtx_targets_current_gpu_and_unsupported_gpu():
    assert plan_compute_capabilities(FAKE_RTX, None, (8, 9)) == (["SM89"], "current GPU")
    targets, source = plan_compute_capabilities(FAKE_RTX, None, (9, 0))  # H100: not an RTX target
    assert targets == list(RTX_DEFAULT_TARGETS) and "SM90" in source


def test_rtx_targets_from_the_option():
    targets, source = plan_compute_capabilities(FAKE_RTX, ["SM89,sm_120", "8.6", "SM89"], None)
    assert targets == ["SM89", "SM120", "SM86"] and source == "option"
    assert plan_compute_capabilities(FAKE_RTX, ["current"], (12, 0))[0] == ["SM120"]
    with pytest.raises(ToolkitError, match="no GPU here"):
        plan_compute_capabilities(FAKE_RTX, ["current"], None, "no CUDA device")
    with pytest.raises(ToolkitError, match="not SM90"):
        plan_compute_capabilities(FAKE_RTX, ["SM90"], None)
    with pytest.raises(ToolkitError, match="expected names like SM89"):
        plan_compute_capabilities(FAKE_RTX, ["ampere"], None)


@pytest.mark.parametrize("key", ["trt10", "trt11"])
def test_tensorrt_builds_for_its_own_gpu(key):
    assert plan_compute_capabilities(ALL_FAKES[key], None, (8, 7)) == (["SM87"], "build GPU")
    with pytest.raises(ToolkitError, match="applies to TensorRT-RTX"):
        plan_compute_capabilities(ALL_FAKES[key], ["SM87"], (8, 7))


@pytest.mark.parametrize(
    ("dims", "batch", "expected"),
    [
        ([4, 3, 64, 128], None, 4),  # exported with --batch 4: static batch, no profile
        ([None, 3, 64, 128], (1, 4, 8), 4),  # --profile-batch 1:4:8: TensorRT calibrates at kOPT
        ([None, 3, 64, 128], None, DEFAULT_DYNAMIC_BATCH[1]),
        ([2, 3, None, None], None, 2),  # static batch, dynamic H×W: a fixed profile
        ([1, 3, 64, 128], None, 1),
    ],
)
def test_implicit_calibrator_batch_is_the_batch_tensorrt_calibrates_at(dims, batch, expected):
    """Issue 11 item 1: a calibrator batch below TensorRT's makes it read past the buffer."""
    profile = plan_profile("input", dims, _spec(), batch)
    assert plan_calibration_batch(profile, dims) == expected
