"""``deeplab-trt bench`` on the CPU backend: real ONNX Runtime runs of a tiny model.

What is real here: the export (onnx_factory), the FP16 pass, the INT8 calibration + Q/DQ
graph, ONNX Runtime inference, the video loop. Iterations are few: these tests check the
plumbing and the report schema, not the speed.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from deeplab_trt.benchmarks import bench, bench_data, environment
from deeplab_trt.benchmarks.report import RESULT_KEYS, SCHEMA, STAT_KEYS, format_markdown, format_table
from deeplab_trt.cli import main

FAST = ["--iterations", "3", "--warmup", "1", "--e2e-frames", "2", "--fidelity-frames", "2", "--quiet"]


@pytest.fixture(scope="module")
def tiny(onnx_factory) -> Path:
    return onnx_factory(head="lowres", height=64, width=128, num_classes=5)


@pytest.fixture(scope="module")
def scene_data(tmp_path_factory) -> Path:
    """Synthetic scenes as an ``images/`` + ``labels/`` folder (labels must not become frames)."""
    from deeplab_trt.benchmarks.scenes import SceneGenerator

    root = tmp_path_factory.mktemp("scenes")
    (root / "images").mkdir()
    (root / "labels").mkdir()
    for i, (img, lab) in enumerate(SceneGenerator(64, 128, seed=123).scenes(8)):
        cv2.imwrite(str(root / "images" / f"{i:03d}.png"), img)
        cv2.imwrite(str(root / "labels" / f"{i:03d}.png"), np.minimum(lab, 4))  # the model has 5 classes
    return root


def _one_error_line(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def test_bench_all_precisions_writes_reports(tiny, scene_data, tmp_path, capsys):
    out = tmp_path / "out"
    cache = tmp_path / "cache"
    rc = main(
        [
            "bench",
            str(tiny),
            "--precisions",
            "fp32,fp16,int8",
            "--backend",
            "onnxruntime",
            "--data",
            str(scene_data),
            "--calibration-frames",
            "4",
            *FAST,
            "--cache-dir",
            str(cache),
            "--json",
            str(out / "r.json"),
            "--plot",
            str(out / "r.png"),
            "--markdown",
            str(out / "r.md"),
        ]
    )
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "fp32" in captured.out and "int8" in captured.out  # console table

    report = json.loads((out / "r.json").read_text())
    assert report["schema"] == SCHEMA
    env = report["environment"]
    for key in (
        "cpu",
        "cpu_cores",
        "gpu",
        "driver",
        "cuda",
        "tensorrt_flavour",
        "tensorrt_version",
        "onnxruntime",
        "numpy",
        "opencv",
    ):
        assert key in env
    assert env["onnxruntime"] and env["cpu_cores"] >= 1
    cfg = report["config"]
    assert cfg["backend"] == "onnxruntime" and cfg["precisions"] == ["fp32", "fp16", "int8"]
    assert cfg["input_size"] == [64, 128] and cfg["fidelity_source"] == "--data"
    assert cfg["calibration_frames"] == 4 and cfg["fidelity_frames"] == 2

    assert list(report["results"]) == ["fp32", "fp16", "int8"]
    for precision, r in report["results"].items():
        for key in RESULT_KEYS:
            assert key in r, (precision, key)
        for key in ("latency_ms", "e2e_latency_ms"):
            s = r[key]
            assert set(STAT_KEYS) <= set(s)
            assert 0 < s["min"] <= s["p50"] <= s["p90"] <= s["p99"] <= s["max"]
        assert r["latency_source"] == "wall-clock"
        assert r["throughput_fps"] > 0 and r["peak_memory_mb"] > 0
        assert 0.0 <= r["agreement"] <= 1.0 and 0.0 <= r["miou_vs_fp32"] <= 1.0
        assert r["miou_vs_gt"] is not None  # labels/ beside images/
        assert Path(r["model"]).exists()
    assert report["results"]["fp32"]["agreement"] == 1.0
    assert report["results"]["fp32"]["miou_vs_fp32"] == 1.0

    import onnx

    int8 = onnx.load(report["results"]["int8"]["model"], load_external_data=False)
    assert any(n.op_type == "QuantizeLinear" for n in int8.graph.node)
    fp16 = onnx.load(report["results"]["fp16"]["model"], load_external_data=False)
    assert fp16.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    assert Path(report["results"]["int8"]["model"]).parent == cache

    assert (out / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "r.md").read_text()
    assert "| precision |" in md and "| int8 |" in md and "## Environment" in md
    assert not list(out.glob(".*"))  # no temporaries left behind

    # Second run: the prepared fp16 graph is reused from the cache, not rebuilt.
    again = bench.run_bench(
        bench.BenchConfig(
            model=tiny,
            precisions=["fp16"],
            backend="onnxruntime",
            iterations=2,
            warmup=0,
            e2e_frames=0,
            fidelity_frames=1,
            cache_dir=cache,
            progress=False,
        )
    )
    r16 = again["results"]["fp16"]
    assert r16["cached"] is True and r16["prepare_s"] == 0
    assert r16["agreement"] is not None  # fp32 labels computed as the reference even when not asked for
    assert r16["e2e_latency_ms"] is None and r16["throughput_fps"] is None


def test_synthetic_fidelity_without_data(tiny, tmp_path):
    report = bench.run_bench(
        bench.BenchConfig(
            model=tiny,
            precisions=["fp32"],
            backend="auto",
            iterations=2,
            warmup=0,
            e2e_frames=1,
            fidelity_frames=2,
            cache_dir=tmp_path,
            progress=False,
        )
    )
    assert report["config"]["backend"] in ("onnxruntime", "tensorrt")
    assert report["config"]["fidelity_source"] == "synthetic scenes"
    # Scene labels mean nothing to a model with other classes: no mIoU vs GT rather than a wrong one.
    assert report["results"]["fp32"]["miou_vs_gt"] is None
    text = format_table(report) + format_markdown(report)
    assert "fp32" in text


def test_e2e_from_a_video_file(tiny, tmp_path):
    from deeplab_trt.benchmarks.scenes import SceneGenerator

    video = tmp_path / "street.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (160, 96))
    for img, _ in SceneGenerator(96, 160, seed=5).video_frames(5):
        writer.write(img)
    writer.release()
    report = bench.run_bench(
        bench.BenchConfig(
            model=tiny,
            precisions=["fp32"],
            backend="onnxruntime",
            iterations=2,
            warmup=1,
            e2e_frames=3,
            fidelity_frames=1,
            video=video,
            cache_dir=tmp_path / "cache",
            progress=False,
        )
    )
    r = report["results"]["fp32"]
    assert report["config"]["video"] == str(video)
    assert r["e2e_latency_ms"]["min"] > 0 and r["throughput_fps"] > 0
    assert set(r["stage_ms"]) >= {"preprocess", "infer", "postprocess"}


def test_split_is_disjoint():
    frames = [bench_data.Frame(np.zeros((4, 4, 3), np.uint8), None, f"f{i}") for i in range(9)]
    cal, fid = bench_data.split_data(frames, calibration=3, fidelity=10)
    assert [f.source for f in cal] == ["f0", "f2", "f4"]
    assert [f.source for f in fid] == ["f1", "f3", "f5", "f7"]
    assert not {f.source for f in cal} & {f.source for f in fid}


def test_gt_used_only_for_scene_classes():
    from deeplab_trt.benchmarks.scenes import CLASSES
    from deeplab_trt.runtime.spec import ModelSpec

    frames = [bench_data.Frame(np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4), np.uint8), "s")]
    scene_spec = ModelSpec("demo", list(CLASSES), [], 4, 4)
    other = ModelSpec("voc", [f"c{i}" for i in range(len(CLASSES))], [], 4, 4)
    assert bench._gt_usable(scene_spec, frames, synthetic=True)[0]
    assert not bench._gt_usable(other, frames, synthetic=True)[0]
    assert bench._gt_usable(other, frames, synthetic=False)[0]  # data without classes.json: trusted
    named = [bench_data.Frame(f.image, f.labels, "d", classes=list(CLASSES)) for f in frames]
    assert not bench._gt_usable(other, named, synthetic=False)[0]
    assert bench._gt_usable(scene_spec, named, synthetic=False)[0]
    unlabelled = [bench_data.Frame(f.image, None, "d") for f in frames]
    assert not bench._gt_usable(scene_spec, unlabelled, synthetic=False)[0]


def test_latency_stats():
    s = bench.latency_stats([1.0, 2.0, 3.0, 4.0, 100.0])
    assert list(s) == list(STAT_KEYS)
    assert s["min"] == 1.0 and s["max"] == 100.0 and s["p50"] == 3.0 and s["mean"] == 22.0
    assert bench.latency_stats([]) is None


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--precisions", "fp32,int4"], "int4"),
        (["--precisions", "int8"], "--data"),
        (["--iterations", "0"], "--iterations"),
        (["--batch", "0"], "--batch"),
        (["--precisions", "fp32", "--batch", "2"], "fixed at 1"),
        (["--precisions", "fp32", "--data", "/nonexistent/frames"], "/nonexistent/frames"),
        (["--precisions", "fp32", "--video", "/nonexistent/clip.mp4"], "/nonexistent/clip.mp4"),
    ],
)
def test_bad_options_one_line_nothing_written(tiny, tmp_path, capsys, args, needle):
    out = tmp_path / "out"
    rc = main(
        [
            "bench",
            str(tiny),
            "--backend",
            "onnxruntime",
            *args,
            "--cache-dir",
            str(tmp_path / "cache"),
            "--json",
            str(out / "r.json"),
            "--plot",
            str(out / "r.png"),
            "--markdown",
            str(out / "r.md"),
            "--quiet",
        ]
    )
    err = capsys.readouterr().err
    assert rc != 0
    line = _one_error_line(err)
    assert line.startswith("deeplab-trt bench: error:") and needle in line
    assert not out.exists() and not (tmp_path / "cache").exists()


def test_missing_model_names_the_file(tmp_path, capsys):
    rc = main(["bench", str(tmp_path / "nope.onnx"), "--json", str(tmp_path / "r.json")])
    line = _one_error_line(capsys.readouterr().err)
    assert rc != 0 and "nope.onnx" in line and not (tmp_path / "r.json").exists()


@pytest.mark.skipif(environment.cuda_device_reason() is None, reason="a GPU is present: RTX engines can run here")
def test_tensorrt_rtx_without_gpu_says_build_only(tiny, tmp_path, capsys, rtx_flavour):
    rc = main(
        [
            "bench",
            str(tiny),
            "--backend",
            "tensorrt-rtx",
            "--precisions",
            "fp32",
            "--cache-dir",
            str(tmp_path / "cache"),
            "--json",
            str(tmp_path / "r.json"),
        ]
    )
    line = _one_error_line(capsys.readouterr().err)
    assert rc != 0
    assert "TensorRT-RTX" in line and "GPU" in line
    assert not (tmp_path / "r.json").exists() and not (tmp_path / "cache").exists()


@pytest.mark.gpu
def test_bench_tensorrt_uses_cuda_events(tiny, tmp_path):
    from deeplab_trt.runtime import tensorrt_flavour as tf

    backend, flavour = bench.resolve_backend("auto")
    if backend != "tensorrt":
        pytest.skip("GPU present but no TensorRT flavour installed")
    cc, _ = tf.current_gpu()
    if flavour == "tensorrt-rtx" and tf.sm_name(cc) not in tf.DOCUMENTED_RTX_TARGETS:
        pytest.skip(f"TensorRT-RTX does not target {tf.sm_name(cc)}")
    report = bench.run_bench(
        bench.BenchConfig(
            model=tiny,
            precisions=["fp32", "fp16"],
            backend="auto",
            iterations=5,
            warmup=2,
            e2e_frames=3,
            fidelity_frames=2,
            cache_dir=tmp_path,
            progress=False,
        )
    )
    for r in report["results"].values():
        assert r["latency_source"] == "cuda-events" and r["latency_ms"]["min"] > 0
        assert r["peak_gpu_memory_mb"] and r["model"].endswith(".engine")
        assert r["throughput_fps"] > 0 and r["agreement"] > 0.9
    assert report["environment"]["gpu"]
