"""``deeplab-trt deploy deepstream``: an nvinfer config whose keys NVIDIA documents, labels, nothing half-written."""

from __future__ import annotations

import configparser
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from deeplab_trt.runtime.errors import ToolkitError

ROOT = Path(__file__).resolve().parents[1]

#: The ``[property]`` keys of the Gst-nvinfer configuration file specification (DeepStream's
#: "Gst-nvinfer File Configuration Specifications" table, the same names as the CONFIG_GROUP_INFER_*
#: macros of gstnvinfer_property_parser.h). A key outside this list would be ignored (or refused) by nvinfer.
NVINFER_PROPERTY_KEYS = {
    "gie-unique-id", "process-mode", "interval", "labelfile-path", "gpu-id", "secondary-reinfer-interval",
    "output-tensor-meta", "enable-dla", "use-dla-core", "batch-size", "tensor-meta-pool-size", "network-mode",
    "model-engine-file", "int8-calib-file", "workspace-size", "output-blob-names", "is-classifier",
    "network-type", "force-implicit-batch-dim", "infer-dims", "output-io-formats", "layer-device-precision",
    "model-color-format", "net-scale-factor", "offsets", "mean-file", "maintain-aspect-ratio",
    "symmetric-padding", "scaling-filter", "scaling-compute-hw", "network-input-order", "custom-lib-path",
    "parse-bbox-func-name", "engine-create-func-name", "parse-classifier-func-name", "custom-network-config",
    "model-file", "proto-file", "uff-file", "uff-input-order", "uff-input-blob-name", "tlt-encoded-model",
    "tlt-model-key", "onnx-file", "num-detected-classes", "cluster-mode", "classifier-threshold",
    "segmentation-threshold", "segmentation-output-order", "input-object-min-width", "input-object-min-height",
    "input-object-max-width", "input-object-max-height", "operate-on-gie-id", "operate-on-class-ids",
    "filter-out-class-ids", "classifier-async-mode", "classifier-type", "output-instance-mask",
}  # fmt: skip
REQUIRED_BY_ISSUE = {
    "network-type", "output-blob-names", "num-detected-classes", "infer-dims", "model-color-format",
    "network-mode", "segmentation-threshold", "model-engine-file", "batch-size", "labelfile-path",
}  # fmt: skip


@pytest.fixture(scope="module")
def trt_engine(onnx_factory, tmp_path_factory, rtx_flavour):
    """A real engine (built with TensorRT-RTX on CPU, 1:4:8 profile) whose sidecar says TensorRT 10.

    nvinfer loads only TensorRT engines; none can be built here, and what the config needs from the
    engine is all in the sidecar.
    """
    from deeplab_trt.builder.engine import BuildOptions, build_engine
    from deeplab_trt.runtime.engine_record import EngineRecord

    onnx = onnx_factory(head="lowres", height=64, width=128, num_classes=5, dynamic_batch=(1, 4, 8))
    root = tmp_path_factory.mktemp("ds")
    built = root / "rtx.engine"
    build_engine(onnx, built, BuildOptions(precision="fp16", flavour="tensorrt-rtx", progress=False))
    engine = root / "seg.fp16.engine"
    engine.write_bytes(built.read_bytes())
    record = EngineRecord.read(built)
    record.tensorrt.update(flavour="tensorrt", version="10.3.0")
    record.write(engine)
    return engine, built


def _read(path: Path) -> dict[str, str]:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_string(path.read_text())
    assert parser.sections() == ["property"]
    return dict(parser["property"])


def test_config_keys_values_labels_and_files(trt_engine, tmp_path, caplog):
    from deeplab_trt.builder.deepstream import deploy_deepstream
    from deeplab_trt.runtime.engine_record import EngineRecord

    engine, _ = trt_engine
    record = EngineRecord.read(engine)
    spec = record.model_spec()
    with caplog.at_level(logging.WARNING):
        out = deploy_deepstream(engine, output=tmp_path / "ds")
    assert "one net-scale-factor" in caplog.text  # ImageNet std differs per channel
    props = _read(out / "config_infer.txt")
    assert set(props) <= NVINFER_PROPERTY_KEYS, set(props) - NVINFER_PROPERTY_KEYS
    assert REQUIRED_BY_ISSUE <= set(props)
    output = next(t["name"] for t in record.io if t["mode"] == "output")
    assert props["network-type"] == "2" and props["network-mode"] == "2"  # fp16
    assert props["output-blob-names"] == output and props["num-detected-classes"] == "5"
    assert props["infer-dims"] == "3;64;128" and props["model-color-format"] == "0"  # RGB
    assert props["batch-size"] == "1" and props["model-engine-file"] == engine.name
    assert float(props["segmentation-threshold"]) < -1e20
    # y = s * (x - offset) agrees with (x/255 - mean)/std up to the per-channel std spread (< 2%).
    scale, offsets = float(props["net-scale-factor"]), [float(v) for v in props["offsets"].split(";")]
    x = np.arange(256, dtype=np.float64)
    for c in range(3):
        want = (x / 255 - spec.mean[c]) / spec.std[c]
        got = scale * (x - offsets[c])
        assert np.allclose(got, want, rtol=0.02, atol=0.02 * np.abs(want).max())
    assert (out / "labels.txt").read_text().splitlines() == spec.classes
    assert (out / engine.name).read_bytes() == engine.read_bytes()
    assert (out / (engine.name + ".json")).exists()
    script = (out / "pipeline.sh").read_text()
    assert "nvinfer config-file-path=config_infer.txt" in script and "nvsegvisual" in script
    subprocess.run(["sh", "-n", str(out / "pipeline.sh")], check=True)


def test_equal_std_is_exact_and_letterbox_batch(trt_engine):
    from deeplab_trt.builder.deepstream import nvinfer_config
    from deeplab_trt.runtime.engine_record import EngineRecord

    record = EngineRecord.read(trt_engine[0])
    record.spec.update(mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25], channel_order="BGR")
    path = trt_engine[0].with_name("exact.txt")
    path.write_text(nvinfer_config(record, engine_file="e.engine", batch_size=4, policy="letterbox"))
    props = _read(path)
    assert float(props["net-scale-factor"]) == 1 / (255 * 0.25) and props["offsets"] == "127.5;127.5;127.5"
    assert props["model-color-format"] == "1" and props["batch-size"] == "4"
    assert props["maintain-aspect-ratio"] == "1" and props["symmetric-padding"] == "1"
    with pytest.raises(ToolkitError, match="outside the engine profile's batch range 1..8"):
        nvinfer_config(record, engine_file="e.engine", batch_size=9)
    record.spec["head"] = "labels"
    with pytest.raises(ToolkitError, match="'labels' head"):
        nvinfer_config(record, engine_file="e.engine")


@pytest.mark.parametrize("case", ["rtx_engine", "no_sidecar", "onnx"])
def test_bad_input_is_one_line_and_writes_nothing(case, trt_engine, onnx_factory, tmp_path):
    if case == "rtx_engine":
        model, expect = trt_engine[1], "TensorRT-RTX"
    elif case == "no_sidecar":
        model, expect = tmp_path / "x.engine", "no sidecar"
        model.write_bytes(b"engine")
    else:
        model, expect = onnx_factory(), "not a TensorRT engine"
    proc = subprocess.run(
        [sys.executable, "-m", "deeplab_trt", "deploy", "deepstream", str(model), "-o", str(tmp_path / "out" / "ds")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=str(ROOT),
    )
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and expect in lines[0], proc.stderr
    assert not (tmp_path / "out").exists()


def test_fold_normalization_matches_the_unfolded_model_and_makes_nvinfer_exact(onnx_factory, tmp_path, caplog):
    """export --fold-normalization: 0-255 input, same outputs as the unfolded model; nvinfer scale 1, offsets 0."""
    from deeplab_trt.benchmarks.scenes import render_video
    from deeplab_trt.builder.deepstream import nvinfer_config
    from deeplab_trt.runtime.backends import open_backend
    from deeplab_trt.runtime.engine_record import EngineFile, EngineRecord
    from deeplab_trt.runtime.preprocess import preprocess
    from deeplab_trt.runtime.spec import spec_from_onnx

    plain = onnx_factory(head="lowres", height=64, width=128, num_classes=5)
    folded = onnx_factory(head="lowres", height=64, width=128, num_classes=5, fold_normalization=True)
    spec = spec_from_onnx(folded)
    assert spec.mean == (0.0, 0.0, 0.0) and spec.std == (1 / 255, 1 / 255, 1 / 255)
    assert spec.extra["folded_normalization"] == {
        "mean": list(spec_from_onnx(plain).mean),
        "std": list(spec_from_onnx(plain).std),
    }
    frames = [f for f, _ in render_video(2, 3, size=(72, 136))]
    with open_backend(plain) as a, open_backend(folded) as b:
        exact = render_video(2, 1, size=(64, 128))[0][0]  # at the model size: no resize
        rgb = exact[..., ::-1].transpose(2, 0, 1).astype(np.float32)
        assert np.array_equal(preprocess(exact, b.spec)[0][0], rgb)  # the runtime hands over the pixels unchanged
        for frame in frames:
            want = a.infer(preprocess(frame, a.spec)[0])
            got = b.infer(preprocess(frame, b.spec)[0])
            assert np.max(np.abs(got - want)) <= 1e-3 * max(1.0, float(np.max(np.abs(want))))
            assert np.mean(got.argmax(1) == want.argmax(1)) >= 0.999
    record = EngineRecord(
        engine=EngineFile("folded.engine"),
        tensorrt={"flavour": "tensorrt", "version": "10.3.0"},
        spec=spec.to_dict(),
        precision="fp32",
        io=[
            {"name": "input", "mode": "input", "shape": [1, 3, 64, 128], "dtype": "float32"},
            {"name": "output", "mode": "output", "shape": [1, 5, 8, 16], "dtype": "float32"},
        ],
    )
    path = tmp_path / "folded.txt"
    with caplog.at_level(logging.WARNING):
        path.write_text(nvinfer_config(record, engine_file="folded.engine"))
    props = _read(path)
    assert float(props["net-scale-factor"]) == 1.0 and props["offsets"] == "0.0;0.0;0.0"
    assert "net-scale-factor" not in caplog.text
