"""``python -m deeplab_trt.benchmarks.gpu_check``: its logic on CPU, before a GPU session sees it.

The runner (a failing, hanging or dying check is recorded and the next one runs; budgets), the
report writer, the JUnit reader, the no-CUDA path (every GPU check skipped with the reason) and,
on the fake CUDA with the real kernels, the kernel checks' own code.
"""

from __future__ import annotations

import json
import os
import time

import pytest
from test_gpu_code_on_fake_cuda import emulator_lib, fake  # noqa: F401 - fixtures

from deeplab_trt.benchmarks import gpu_check
from deeplab_trt.benchmarks.gpu_check import Check, Context


def _passes(ctx):
    return {"value": 1.5, "budget_seen": ctx.budget_s}


def _raises(ctx):
    raise ValueError("kernel said no")


def _misses_goal(ctx):
    return {"ok": False, "ratio": 0.4, "why": "0.40 of memcpy (goal 0.7)"}


def _sleeps(ctx):
    time.sleep(30)
    return {}


def _dies(ctx):
    os._exit(3)


NEEDS = {"cuda": None, "torch": None}


def test_isolated_runner_records_each_outcome_and_keeps_going(tmp_path):
    checks = [
        Check("raises", _raises, budget_s=30),
        Check("sleeps", _sleeps, budget_s=3),
        Check("dies", _dies, budget_s=30),
        Check("misses", _misses_goal, budget_s=30),
        Check("passes", _passes, budget_s=30),
    ]
    lines = []
    records = gpu_check.run_checks(checks, Context(outdir=tmp_path), needs=NEEDS, log=lines.append)
    by = {r["name"]: r for r in records}
    assert [r["name"] for r in records] == ["raises", "sleeps", "dies", "misses", "passes"]
    assert by["raises"]["status"] == "failed" and by["raises"]["ok"] is False
    assert "Traceback" in by["raises"]["error"] and "ValueError: kernel said no" in by["raises"]["error"]
    assert by["sleeps"]["status"] == "timed out" and "budget of 3 s" in by["sleeps"]["error"]
    assert by["sleeps"]["seconds"] < 20
    assert by["dies"]["status"] == "failed" and "exit code 3" in by["dies"]["error"]
    assert by["misses"]["status"] == "failed" and by["misses"]["error"] == "0.40 of memcpy (goal 0.7)"
    assert by["misses"]["numbers"] == {"ratio": 0.4}
    assert by["passes"]["ok"] is True and by["passes"]["numbers"] == {"value": 1.5, "budget_seen": 30}
    assert len(lines) == 5 and lines[0].startswith("raises: failed") and "kernel said no" in lines[0]


def test_in_process_runner_needs_and_total_budget(tmp_path):
    ctx = Context(outdir=tmp_path)
    checks = [
        Check("needs_cupy", _passes, needs=("cuda", "cupy")),
        Check("raises", _raises),
        Check("passes", _passes, budget_s=7),
    ]
    needs = {"cuda": None, "cupy": "CuPy is not installed"}
    records = gpu_check.run_checks(checks, ctx, needs=needs, isolate=False, log=lambda _: None)
    assert [r["status"] for r in records] == ["skipped", "failed", "passed"]
    assert records[0]["reason"] == "CuPy is not installed" and records[0]["ok"] is None
    assert records[2]["numbers"]["budget_seen"] == 7
    spent = gpu_check.run_checks(checks[2:], ctx, needs=needs, total_budget_s=0, isolate=False, log=lambda _: None)
    assert spent[0]["status"] == "skipped" and "total budget of 0 s is spent" in spent[0]["reason"]
    slow = gpu_check.run_check(Check("slow", _passes), Context(outdir=tmp_path, budget_s=-1), isolate=False)
    assert slow["status"] == "timed out" and slow["numbers"]["value"] == 1.5


def test_report_writer_json_and_markdown(tmp_path):
    records = [
        gpu_check.record("alpha", "passed", numbers={"ratio": 0.8123456, "rows": [{"a": 1}]}, seconds=1.25),
        gpu_check.record("beta", "failed", error="Traceback (most recent call last):\n  ...\nValueError: bad | pipe"),
        gpu_check.record("gamma", "skipped", reason="no CUDA device"),
    ]
    env = {"python": "3.12.0", "gpu": "NVIDIA H200"}
    json_path, md_path = gpu_check.write_report(tmp_path / "out", records, env)
    data = json.loads(json_path.read_text())
    assert data == {"environment": env, "checks": records}
    md = md_path.read_text()
    assert md.startswith("# deeplab-trt GPU check") and "- gpu: NVIDIA H200" in md
    assert "Result: 1 passed, 1 failed, 0 timed out, 1 skipped" in md
    assert "| alpha | passed | 1.2 | ratio=0.8123 |  |" in md
    assert "| beta | failed | 0.0 |  | ValueError: bad / pipe |" in md
    assert "| gamma | skipped | 0.0 |  | no CUDA device |" in md
    assert "Skipped: no CUDA device" in md and "ValueError: bad | pipe\n```" in md and '"a": 1' in md
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["gpu_check.json", "gpu_check.md"]


def test_parse_junit(tmp_path):
    xml = tmp_path / "j.xml"
    xml.write_text(
        '<?xml version="1.0"?><testsuites><testsuite name="pytest" tests="3" failures="1" errors="0" skipped="1">'
        '<testcase classname="tests.test_a" name="test_ok"/>'
        '<testcase classname="tests.test_a" name="test_bad"><failure message="assert 1 == 2&#10;more">x</failure></testcase>'
        '<testcase classname="tests.test_b" name="test_skip"><skipped message="gpu test: no CUDA device"/></testcase>'
        "</testsuite></testsuites>"
    )
    got = gpu_check.parse_junit(xml)
    assert (got["tests"], got["failures"], got["errors"], got["skipped"]) == (3, 1, 0, 1)
    assert got["failed"] == [{"test": "tests.test_a::test_bad", "kind": "failure", "message": ["assert 1 == 2"]}]
    assert got["skipped_tests"][0]["reason"] == "gpu test: no CUDA device"


def test_without_cuda_every_gpu_check_is_skipped_with_the_reason(tmp_path, capsys):
    needs = gpu_check.probe_needs()
    if needs["cuda"] is None:
        pytest.skip("this machine has a CUDA device")
    assert gpu_check.main([str(tmp_path)]) == 0
    data = json.loads((tmp_path / "gpu_check.json").read_text())
    records = data["checks"]
    assert [r["name"] for r in records] == [c.name for c in gpu_check.CHECKS]
    assert all(r["status"] == "skipped" and r["ok"] is None for r in records)
    assert all(needs["cuda"] in r["reason"] for r in records)
    assert [r["optional"] for r in records] == [c.optional for c in gpu_check.CHECKS] and records[-1]["optional"]
    assert (tmp_path / "gpu_check.md").read_text().count("| skipped |") == len(records)
    assert data["environment"]["gpu"] is None and "wrote" in capsys.readouterr().out


def test_kernel_checks_run_on_the_fake_cuda(fake, tmp_path):  # noqa: F811 - the fixture
    """The real kernels through the fake driver: numerics pass; bandwidth runs (its numbers are meaningless)."""
    ctx = Context(outdir=tmp_path, frame_sizes=((45, 75),), model_input=(16, 24), iters=1, repeats=1, budget_s=300)
    numerics = gpu_check.run_check(Check("kernel_numerics", gpu_check.check_kernel_numerics), ctx, isolate=False)
    assert numerics["status"] == "passed", numerics["error"]
    assert numerics["numbers"]["cases"] == 9 and numerics["numbers"]["failed_cases"] == 0
    bandwidth = gpu_check.run_check(Check("kernel_bandwidth", gpu_check.check_kernel_bandwidth), ctx, isolate=False)
    assert bandwidth["status"] in ("passed", "failed") and "Traceback" not in (bandwidth["error"] or "")
    assert len(bandwidth["numbers"]["rows"]) == 2 and bandwidth["numbers"]["memcpy_d2d_gbs"] > 0


def test_video_check_inputs_the_torch_stand_in_is_the_exported_model(tmp_path):
    """What check_video_pipeline compares: its torch module (run on CPU here) and the ONNX the CPU path runs agree."""
    torch = pytest.importorskip("torch")
    from deeplab_trt.runtime.backends import open_backend
    from deeplab_trt.runtime.postprocess import labels_from_output
    from deeplab_trt.runtime.preprocess import preprocess
    from deeplab_trt.runtime.video import open_source

    ctx = Context(outdir=tmp_path, frames=3)
    clip = gpu_check._demo_video(ctx)
    onnx_path, spec, module = gpu_check._demo_model(ctx)
    with open_source(clip) as source:
        frames = list(source)
    assert len(frames) == 3 and frames[0].shape == (360, 640, 3)
    with open_backend(onnx_path, "onnxruntime") as backend:
        for frame in frames:
            x, geo = preprocess(frame, spec, "stretch")
            ort = labels_from_output(backend.infer(x)[0], spec, geo)
            with torch.no_grad():
                ours = labels_from_output(module(torch.from_numpy(x)).numpy()[0], spec, geo)
            assert (ort == ours).mean() >= 0.999
