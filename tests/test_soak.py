"""The soak benchmark's pieces (issue 13 item 4): RSS sampling, the growth rule, and a short real run."""

from __future__ import annotations

import numpy as np
import pytest

from deeplab_trt.benchmarks.soak import MAX_GROWTH, RssSink, growth, rss_bytes, soak


def test_sink_samples_the_first_frame_and_every_kth():
    values = iter(range(100, 200))
    sink = RssSink(3, read_rss=lambda: next(values))
    for _ in range(7):
        sink.write(np.zeros((2, 2, 3), np.uint8))
    assert sink.frames == 7 and sink.samples == [(1, 100), (3, 101), (6, 102)]


def test_growth_is_measured_from_the_first_sample_after_warm_up():
    samples = [(1, 50), (500, 90), (1000, 100), (1500, 103), (2000, 104)]
    assert abs(growth(samples) - 0.04) < 1e-12 and growth(samples) <= MAX_GROWTH
    assert growth([(1, 50), (500, 60)]) is None  # never reached frame 1000: no verdict


def test_rss_is_read_from_proc():
    assert rss_bytes() > 10 * 2**20  # a Python process with numpy loaded


def test_short_soak_through_the_video_loop(onnx_factory):
    from deeplab_trt.runtime.backends import open_backend

    with open_backend(onnx_factory(), "onnxruntime") as backend:
        frames = [np.full((64, 128, 3), v, np.uint8) for v in (0, 80, 160)]
        result = soak(backend, frames, count=120, every=40)
    assert result["frames"] == 120 and [s["frame"] for s in result["samples"]] == [1, 40, 80, 120]
    assert result["growth_1000_to_last"] is None and not result["met"]  # too short for a verdict


def test_soak_samples_device_memory_when_asked_and_judges_it_too(onnx_factory):
    """The GPU path's device sampling (a real reader needs a GPU: the values are scripted here)."""
    from deeplab_trt.runtime.backends import open_backend

    used = iter(range(1000, 2000, 10))
    with open_backend(onnx_factory(), "onnxruntime") as backend:
        frames = [np.full((64, 128, 3), v, np.uint8) for v in (0, 80)]
        result = soak(backend, frames, count=1600, every=400, read_device=lambda: next(used) << 20)
    assert [s["device_mb"] for s in result["device_samples"]] == [1000, 1010, 1020, 1030, 1040]
    assert abs(result["device_growth_1000_to_last"] - 10 / 1030) < 1e-9  # frame 1200 -> 1600
    assert result["met"] == (result["growth_1000_to_last"] <= 0.05)


@pytest.mark.gpu
def test_device_memory_in_use_on_a_real_device():
    from deeplab_trt.benchmarks.soak import device_used_bytes

    assert 0 < device_used_bytes()
