"""The pipeline-overhead benchmark's pieces (issue 10 item 3): paired samples, their summary, a short real run.

No timing is asserted: these check that every end-to-end sample has its inference-alone samples beside it
and that the report is computed from them, on a small model in a few seconds.
"""

from __future__ import annotations

import numpy as np
import pytest

from deeplab_trt.benchmarks.pipeline_overhead import Lockstep, lockstep_pairs, main, pipelined_rounds, report, spread


def test_spread_gives_median_quartiles_and_range():
    s = spread([4.0, 1.0, 3.0, 2.0, 5.0])
    assert s == {"median": 3.0, "q1": 2.0, "q3": 4.0, "min": 1.0, "max": 5.0}


def test_each_pair_ratio_uses_the_inference_times_before_and_after_it():
    lock = Lockstep(infer_ms=[100.0, 300.0, 100.0], e2e_ms=[220.0, 210.0], infer_cpu_ms=[1.0] * 3, e2e_cpu_ms=[1.0] * 2)
    assert lock.ratios == pytest.approx([1.1, 1.05])


def test_pooled_runs_pair_within_each_run_and_report_each_runs_median():
    a = Lockstep([100.0, 100.0, 100.0], [104.0, 106.0], [1.0] * 3, [1.0] * 2, {"infer": 100.0, "preprocess": 1.0})
    b = Lockstep([200.0, 200.0], [220.0], [1.0] * 2, [1.0], {"infer": 200.0, "preprocess": 4.0})
    pooled = Lockstep.pooled([a, b])
    assert pooled.ratios == pytest.approx([1.04, 1.06, 1.10])  # b's pair is not averaged with a's last probe
    assert pooled.run_medians == pytest.approx([1.05, 1.10]) and pooled.run_pairs == [2, 1]
    assert pooled.stage_ms == pytest.approx({"infer": 400 / 3, "preprocess": 2.0})
    lines, met = report(pooled, [(100.0, 100.0)])
    assert not met  # the pooled pairs' median is 1.06
    assert any("each of 2 runs: 1.050 1.100 (1 of 2 <= 1.05)" in line for line in lines)
    assert not any("each of" in line for line in report(a, [(100.0, 100.0)])[0])  # one run: no per-run line


def test_one_noisy_pair_does_not_decide_the_verdict():
    lock = Lockstep(infer_ms=[100.0] * 4, e2e_ms=[104.0, 104.0, 200.0], infer_cpu_ms=[1.0] * 4, e2e_cpu_ms=[1.0] * 3)
    lines, met = report(lock, [(105.0, 100.0), (99.0, 100.0), (150.0, 100.0)])
    assert met  # median 1.04, though the ratio of means is 1.36
    assert any("median 1.040" in line and "ratio of means 1.360" in line for line in lines)
    assert any("per round (n=3): median 1.050" in line for line in lines)


@pytest.fixture(scope="module")
def backend(onnx_factory):
    from deeplab_trt.runtime.backends import open_backend

    with open_backend(onnx_factory(), "onnxruntime") as b:
        yield b


def test_lockstep_run_pairs_every_frame_with_inference_alone(backend):
    frames = [np.full((64, 128, 3), v, np.uint8) for v in (0, 90, 180)]
    lock = lockstep_pairs(backend, frames, pairs=4, warmup=1)
    assert len(lock.e2e_ms) == 4 and len(lock.infer_ms) == 5 and len(lock.ratios) == 4
    assert len(lock.e2e_cpu_ms) == 4 and len(lock.infer_cpu_ms) == 5
    assert all(v > 0 for v in lock.e2e_ms + lock.infer_ms)
    assert {"preprocess", "infer", "postprocess"} <= set(lock.stage_ms)


def test_pipelined_rounds_drop_the_warm_up_round(backend):
    frames = [np.full((64, 128, 3), 50, np.uint8)]
    rounds = pipelined_rounds(backend, frames, rounds=2, per_round=3)
    assert len(rounds) == 2 and all(p > 0 and i > 0 for p, i in rounds)


def test_command_runs_on_a_given_onnx(onnx_factory, capsys):
    assert (
        main(["--model", str(onnx_factory()), "--pairs", "2", "--runs", "2", "--rounds", "1", "--per-round", "2"]) == 0
    )
    out = capsys.readouterr().out
    assert "latency ratio, lockstep end-to-end / inference alone, per pair (n=4)" in out
    assert "median lockstep ratio of each of 2 runs:" in out
    assert "load average" in out and "target: median lockstep ratio <= 1.05" in out
