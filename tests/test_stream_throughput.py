"""N streams batched vs N sequential runs (issue 13 items 4 and 5): the benchmark module and ``bench --streams``.

Real parts: ONNX Runtime on small exported models, the one video loop. These check what was
measured and how it is reported, never how fast: the numbers are the benchmark's to print.
"""

from __future__ import annotations

import json

import pytest

from deeplab_trt.benchmarks import stream_throughput as st
from deeplab_trt.cli import main
from deeplab_trt.runtime.backends import open_backend
from deeplab_trt.runtime.errors import ToolkitError

FAST = ["--iterations", "2", "--warmup", "0", "--e2e-frames", "3", "--fidelity-frames", "1", "--quiet"]


@pytest.fixture(scope="module")
def dynamic_onnx(onnx_factory):
    return onnx_factory(head="lowres", height=64, width=128, num_classes=5, dynamic_batch=(1, 2, 4))


@pytest.fixture(scope="module")
def fixed_onnx(onnx_factory):
    return onnx_factory(head="lowres", height=64, width=128, num_classes=5)


def _check_entry(entry: dict, n: int, frames: int, repeats: int) -> None:
    assert entry["streams"] == n and entry["frames_per_stream"] == frames
    for side in ("batched", "sequential"):
        s = entry[side]
        assert s["frames"] == [n * frames] * repeats  # every frame of every stream, both sides alike
        assert len(s["fps"]) == repeats and all(f > 0 for f in s["fps"])
        assert set(s["fps_spread"]) == {"median", "min", "max"}
        assert set(s["latency_ms"]) == {"p50", "p99", "max"} and s["latency_ms"]["p50"] > 0
        assert len(s["per_stream_latency_ms"]) == n
    assert entry["batched"]["mean_batch"] == n  # files: every tick holds every stream's frame
    assert entry["sequential"]["mean_batch"] == 1
    assert len(entry["ratio"]) == repeats and entry["ratio_spread"]["min"] <= entry["ratio_spread"]["median"]


def test_measure_runs_the_same_frames_both_ways(dynamic_onnx):
    frames = st.stream_frames(64, 128, 4, 2)
    seen = []
    with open_backend(dynamic_onnx) as backend:
        entries = st.measure(
            backend,
            frames,
            [1, 4],
            frames=3,
            repeats=2,
            warmup=1,
            infer_iterations=1,
            on_repeat=lambda n, r, ratio: seen.append((n, r)),
        )
    assert [e["streams"] for e in entries] == [1, 4]
    for entry in entries:
        _check_entry(entry, entry["streams"], 3, 2)
    assert entries[1]["inference"]["batch_n_ms"] > 0 and entries[0]["inference"]["speedup"] == pytest.approx(1.0)
    assert seen == [(1, 0), (4, 0), (1, 1), (4, 1)]  # interleaved: every N in each repeat


def test_main_writes_table_json_and_plot(dynamic_onnx, tmp_path, capsys):
    pytest.importorskip("matplotlib", reason="--plot needs the plots extra")
    out, png = tmp_path / "streams.json", tmp_path / "streams.png"
    argv = ["--model", str(dynamic_onnx), "--streams", "1", "2", "--frames", "2", "--repeats", "1", "--warmup", "0"]
    rc = st.main([*argv, "--infer-iterations", "0", "--threads", "1", "--json", str(out), "--plot", str(png)])
    assert rc == 0
    report = json.loads(out.read_text())
    assert report["schema"] == st.SCHEMA and report["config"]["threads"] == 1 and report["goal"] == st.GOAL
    assert report["config"]["streams"] == [1, 2] and isinstance(report["met"], bool)
    for entry in report["results"]:
        _check_entry(entry, entry["streams"], 2, 1)
        assert entry["inference"] is None
    assert png.stat().st_size > 0
    text = capsys.readouterr().out
    assert "| N | batched FPS | sequential FPS |" in text and "\n| 2 | " in text


def test_a_model_whose_batch_cannot_hold_the_streams_is_one_line(fixed_onnx):
    with open_backend(fixed_onnx) as backend, pytest.raises(ToolkitError) as err:
        st.measure(backend, st.stream_frames(64, 128, 2, 1), [1, 2], frames=1, model=str(fixed_onnx))
    assert "\n" not in str(err.value) and str(fixed_onnx) in str(err.value) and "fixed batch of 1" in str(err.value)


def test_bench_streams_end_to_end(dynamic_onnx, tmp_path, capsys):
    out, md = tmp_path / "bench.json", tmp_path / "bench.md"
    args = ["bench", str(dynamic_onnx), "--precisions", "fp32", "--backend", "onnxruntime", *FAST]
    rc = main(
        [*args, "--streams", "2", "--stream-repeats", "2", "--cache-dir", str(tmp_path / "c")]
        + [
            "--json",
            str(out),
            "--markdown",
            str(md),
        ]
    )
    assert rc == 0
    report = json.loads(out.read_text())
    assert report["config"]["streams"] == 2 and report["config"]["stream_repeats"] == 2
    _check_entry(report["results"]["fp32"]["streams"], 2, 3, 2)
    text = capsys.readouterr().out
    assert "2 streams, 3 frames each" in text and "| fp32 | " in text
    assert "| precision | batched FPS |" in md.read_text()


def test_bench_without_streams_reports_none(dynamic_onnx, tmp_path):
    out = tmp_path / "bench.json"
    args = ["bench", str(dynamic_onnx), "--precisions", "fp32", "--backend", "onnxruntime", *FAST]
    assert main([*args, "--e2e-frames", "0", "--cache-dir", str(tmp_path / "c"), "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["results"]["fp32"]["streams"] is None and report["config"]["streams"] is None


def test_bench_streams_beyond_the_batch_is_the_capacity_error(fixed_onnx, tmp_path, capsys):
    out = tmp_path / "bench.json"
    args = ["bench", str(fixed_onnx), "--precisions", "fp32", "--backend", "onnxruntime", *FAST]
    rc = main([*args, "--streams", "2", "--cache-dir", str(tmp_path / "c"), "--json", str(out)])
    assert rc != 0 and not out.exists()
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "2 streams need a batch of 2" in lines[0] and str(fixed_onnx) in lines[0]
    assert "--dynamic-batch 1:2:2" in lines[0]


def test_bench_streams_must_be_positive(dynamic_onnx, tmp_path, capsys):
    rc = main(["bench", str(dynamic_onnx), "--precisions", "fp32", *FAST, "--streams", "0"])
    assert rc != 0 and "--streams 0: must be at least 1" in capsys.readouterr().err
