"""Several streams through the one video loop: one batched inference per tick (issue #13 item 1).

Real parts: ONNX Runtime over exported models (dynamic and fixed batch), OpenCV-written clips of
different sizes and lengths. The referee for every stream is the single-stream run of the same
clip: batching must not change a picture.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from video_helpers import synthetic_frame, write_video

from deeplab_trt.runtime.backends import open_backend
from deeplab_trt.runtime.errors import ToolkitError
from deeplab_trt.runtime.pipeline import RunOptions, check_batch_capacity, run_streams, run_video
from deeplab_trt.runtime.video import Sink, Source, open_source

#: (w, h, frames) of the three clips: different sizes, different lengths
CLIPS = [(160, 96, 9), (128, 72, 5), (200, 120, 7)]
OPTIONS = RunOptions(progress=False)


class CollectSink(Sink):
    def __init__(self):
        self.pictures: list[np.ndarray] = []

    def write(self, frame: np.ndarray) -> None:
        self.pictures.append(frame.copy())


class TickCounter(Sink):
    """Shared by every stream: counts writes and the loop's end-of-tick calls."""

    def __init__(self):
        self.writes = 0
        self.ticks = 0

    def write(self, frame: np.ndarray) -> None:
        self.writes += 1

    def end_tick(self) -> None:
        self.ticks += 1


class FailingSource(Source):
    """A file-like source whose decoder fails at frame ``fail_at``."""

    description = "failing"
    fps = 10.0
    frame_count = None
    is_live = False

    def __init__(self, size=(96, 64), fail_at: int = 3):
        self.size, self.fail_at, self.n = size, fail_at, 0

    def read(self):
        self.n += 1
        if self.n == self.fail_at:
            raise OSError("decoder lost the file")
        return synthetic_frame(self.n, self.size)

    def close(self) -> None:
        pass


class SlowLiveSource(Source):
    """A live source on its own (slow) clock: a frame every ``period_s``."""

    description = "slow live"
    fps = 5.0
    frame_count = None
    is_live = True

    def __init__(self, frames: int, period_s: float, size=(96, 64)):
        self.size, self.frames, self.period_s, self.n = size, frames, period_s, 0

    def read(self):
        if self.n >= self.frames:
            return None
        time.sleep(self.period_s)
        self.n += 1
        return synthetic_frame(self.n, self.size)

    def close(self) -> None:
        pass


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("streams")
    return [write_video(root / f"clip{i}.avi", n, (w, h), fourcc="MJPG") for i, (w, h, n) in enumerate(CLIPS)]


@pytest.fixture(scope="module")
def dynamic_onnx(onnx_factory):
    return onnx_factory(head="lowres", height=64, width=128, num_classes=5, dynamic_batch=(1, 2, 4))


def single_stream_pictures(backend, clip, options=OPTIONS) -> list[np.ndarray]:
    sink = CollectSink()
    with open_source(clip) as source:
        run_video(backend, source, [sink], options)
    return sink.pictures


def run_clips(backend, clips, options=OPTIONS, extra_sink=None):
    sinks = [CollectSink() for _ in clips]
    sources = [open_source(c) for c in clips]
    try:
        stats = run_streams(backend, sources, [[s, *([extra_sink] if extra_sink else [])] for s in sinks], options)
    finally:
        for s in sources:
            s.close()
    return stats, sinks


def test_three_streams_of_different_sizes_equal_their_single_stream_runs(dynamic_onnx, clips):
    counter = TickCounter()
    with open_backend(dynamic_onnx) as backend:
        stats, sinks = run_clips(backend, clips, extra_sink=counter)
        for clip, sink, (w, h, n) in zip(clips, sinks, CLIPS, strict=True):
            alone = single_stream_pictures(backend, clip)
            assert len(sink.pictures) == len(alone) == n
            assert sink.pictures[0].shape == (h, w, 3)
            for batched, single in zip(sink.pictures, alone, strict=True):
                np.testing.assert_array_equal(batched, single)
    assert stats.frames == sum(n for *_, n in CLIPS) == counter.writes
    assert stats.ticks == max(n for *_, n in CLIPS) == counter.ticks  # one batched inference per tick
    assert [s.frames for s in stats.streams] == [n for *_, n in CLIPS]
    assert [s.ended for s in stats.streams] == ["end of stream"] * 3
    assert all(s.latency_ms()["p50"] > 0 for s in stats.streams)
    assert stats.mean_batch == pytest.approx(21 / 9)
    d = stats.to_dict()
    assert len(d["streams"]) == 3 and d["streams"][1]["size"] == (128, 72) and "latency" not in d["streams"][0]
    lines = stats.report_lines()
    assert lines[0].startswith(f"[0] {clips[0]} (160x96): 9 frames")
    assert any(line.startswith("aggregate: 21 frames of 3 streams") for line in lines)


def test_fixed_batch_larger_than_the_tick_pads(onnx_factory, clips):
    fixed4 = onnx_factory(head="lowres", height=64, width=128, num_classes=5, batch=4)
    with open_backend(fixed4) as backend:
        assert backend.fixed_batch == 4 and backend.batch_limits == (4, 4)
        stats, sinks = run_clips(backend, clips[:3])
        for clip, sink in zip(clips, sinks, strict=True):
            for batched, single in zip(sink.pictures, single_stream_pictures(backend, clip), strict=True):
                np.testing.assert_array_equal(batched, single)
    assert stats.frames == 21


def test_a_model_whose_batch_cannot_hold_the_streams_says_how_to_get_one(onnx_factory):
    fixed1 = onnx_factory(head="lowres", height=64, width=128, num_classes=5)
    with open_backend(fixed1) as backend:
        check_batch_capacity(backend, 1, str(fixed1))
        with pytest.raises(ToolkitError) as err:
            check_batch_capacity(backend, 3, str(fixed1))
    message = str(err.value)
    assert "\n" not in message and str(fixed1) in message and "fixed batch of 1" in message
    assert "--dynamic-batch 1:3:3" in message


def test_max_frames_counts_per_stream(dynamic_onnx, clips):
    with open_backend(dynamic_onnx) as backend:
        stats, sinks = run_clips(backend, clips, RunOptions(progress=False, max_frames=6))
    assert [len(s.pictures) for s in sinks] == [6, 5, 6]
    assert [s.ended for s in stats.streams] == ["max frames", "end of stream", "max frames"]


def test_a_failing_stream_ends_alone_and_the_summary_says_why(dynamic_onnx, clips):
    sinks = [CollectSink(), CollectSink()]
    with open_backend(dynamic_onnx) as backend, open_source(clips[0]) as good:
        stats = run_streams(backend, [good, FailingSource()], [[sinks[0]], [sinks[1]]], OPTIONS)
    assert len(sinks[0].pictures) == 9 and len(sinks[1].pictures) == 2
    assert stats.streams[0].ended == "end of stream"
    assert stats.streams[1].ended == "failed: decoder lost the file"
    assert "ended: failed: decoder lost the file" in "\n".join(stats.report_lines())


def test_a_single_failing_stream_still_fails_the_run(dynamic_onnx):
    with open_backend(dynamic_onnx) as backend, pytest.raises(OSError, match="decoder lost"):
        run_video(backend, FailingSource(), [CollectSink()], OPTIONS)


def test_a_late_live_stream_does_not_hold_back_the_files(dynamic_onnx, clips):
    """Ticks wait for every file frame but only ``live_wait_s`` for the live one: the file's ticks go on."""
    from deeplab_trt.runtime import gpu_pipeline

    live = SlowLiveSource(frames=3, period_s=0.25)
    sinks = [CollectSink(), CollectSink()]
    with open_backend(dynamic_onnx) as backend, open_source(clips[0]) as file:
        stats = gpu_pipeline.run_streams(
            backend, [file, live], [[sinks[0]], [sinks[1]]], OPTIONS, stage="host", live_wait_s=0.01
        )
    assert len(sinks[0].pictures) == 9  # every frame of the file
    assert len(sinks[1].pictures) == 3 == stats.streams[1].frames
    assert stats.frames == 12 and stats.ticks >= 9
    assert stats.wall_s < 2.0  # waiting for the live frame each tick would take 9 x 0.25 s


# ---------------------------------------------------------------------------------------------
# the CLI: run MODEL --source A --source B [--sources FILE]
# ---------------------------------------------------------------------------------------------
def run_cli(*args) -> int:
    from deeplab_trt.cli import main as cli_main

    return cli_main(["run", *map(str, args), "--no-progress"])


@pytest.fixture(scope="module")
def clips_at_rates(tmp_path_factory):
    """Two mp4 files of different sizes, lengths and frame rates."""
    root = tmp_path_factory.mktemp("rates")
    return [
        write_video(root / "street.mp4", 8, (160, 96), fps=10.0),
        write_video(root / "yard.mp4", 5, (128, 80), fps=25.0),
    ]


def test_cli_two_streams_each_written_at_its_own_size_and_rate(dynamic_onnx, clips_at_rates, tmp_path, capsys):
    import json

    from deeplab_trt.runtime.video import probe_video

    listing = tmp_path / "cams.txt"
    listing.write_text(f"# the yard camera\n\n{clips_at_rates[1]}\n")
    out, stats_json = tmp_path / "out", tmp_path / "stats.json"
    code = run_cli(dynamic_onnx, "-s", clips_at_rates[0], "--sources", listing, "-o", f"{out}/", "--json", stats_json)
    assert code == 0
    written = sorted(p.name for p in out.iterdir())
    assert written == ["0_street.mp4", "1_yard.mp4"]
    for clip, name in zip(clips_at_rates, written, strict=True):
        src, got = probe_video(clip), probe_video(out / name)
        assert got["frames"] == src["frames"] and got["size"] == src["size"]
        assert got["fps"] == pytest.approx(src["fps"])
    stats = json.loads(stats_json.read_text())
    assert stats["frames"] == 13 and stats["ticks"] == 8 and len(stats["streams"]) == 2
    assert [s["frames"] for s in stats["streams"]] == [8, 5]
    assert [s["ended"] for s in stats["streams"]] == ["end of stream"] * 2
    assert stats["streams"][1]["outputs"][0]["path"] == str(out / "1_yard.mp4")
    assert stats["streams"][0]["latency_ms"]["p99"] >= stats["streams"][0]["latency_ms"]["p50"] > 0
    printed = capsys.readouterr().out
    assert f"[1] {clips_at_rates[1]} (128x80): 5 frames" in printed and "aggregate: 13 frames of 2 streams" in printed
    assert f"wrote {out / '1_yard.mp4'}: 5 frames, 128x80, 25 fps" in printed


def test_cli_output_pattern(dynamic_onnx, clips_at_rates, tmp_path):
    assert (
        run_cli(dynamic_onnx, "-s", clips_at_rates[0], "-s", clips_at_rates[1], "-o", tmp_path / "seg_{index}.mkv") == 0
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seg_0.mkv", "seg_1.mkv"]


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        (["-o", "{tmp}/one.mp4"], "2 streams need a directory"),
        (["-o", "{tmp}/x_{{bad}}.mp4"], "{index} and {name} only"),
        (
            ["-o", "{tmp}/same.mp4", "--sources", "{tmp}/missing.txt"],
            "missing.txt: cannot read --sources (no such file)",
        ),
    ],
)
def test_cli_bad_stream_options_are_one_line_and_write_nothing(
    dynamic_onnx, clips_at_rates, tmp_path, capsys, extra, named
):
    args = [a.format(tmp=tmp_path) for a in extra]
    assert run_cli(dynamic_onnx, "-s", clips_at_rates[0], "-s", clips_at_rates[1], *args) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and named in err[0], err
    assert list(tmp_path.iterdir()) == []


def test_cli_model_too_small_for_the_streams_says_how_to_export_one(onnx_factory, clips_at_rates, tmp_path, capsys):
    fixed1 = onnx_factory(head="lowres", height=64, width=128, num_classes=5)
    code = run_cli(fixed1, "-s", clips_at_rates[0], "-s", clips_at_rates[1], "-o", f"{tmp_path}/out/")
    assert code != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "fixed batch of 1" in err[0] and "--dynamic-batch 1:2:2" in err[0]
    assert list(tmp_path.iterdir()) == []


def test_stream_names_are_file_name_safe():
    from deeplab_trt.runtime.run_command import stream_name

    assert stream_name("/data/cam 1.mp4") == "cam_1"
    assert stream_name("0") == "camera0"
    assert stream_name("rtsp://10.0.0.7:8554/live/front") == "10.0.0.7_8554_live_front"
    assert stream_name("frames/%04d.png") == "04d"


# ---------------------------------------------------------------------------------------------
# --show with several streams: the mosaic
# ---------------------------------------------------------------------------------------------
def test_mosaic_grid_fits_each_picture_in_its_cell():
    from deeplab_trt.runtime.mosaic import compose, grid_for, tile_size

    assert [grid_for(n) for n in (1, 2, 3, 4, 5, 9, 10)] == [(1, 1), (2, 1), (2, 2), (2, 2), (3, 2), (3, 3), (4, 3)]
    assert tile_size([(640, 360), (320, 240)]) == (640, 360)
    assert tile_size([(1920, 1080)] * 4) == (960, 540)  # 2x2 of 1080p fits 1920x1080
    red, blue = np.zeros((50, 100, 3), np.uint8), np.zeros((100, 100, 3), np.uint8)
    red[..., 2], blue[..., 0] = 255, 255
    mosaic = compose([red, blue, None], (100, 50))
    assert mosaic.shape == (100, 200, 3)
    assert (mosaic[30:50, 40:100] == (0, 0, 255)).all()  # cell 0: red fills it (same aspect)
    assert (mosaic[10:40, 130:170] == (255, 0, 0)).all() and (mosaic[30:50, 100:120] == 0).all()  # blue, boxed
    assert (mosaic[60:100, 40:100] == 0).all()  # cell 2: no picture yet


def test_mosaic_draws_once_per_tick(dynamic_onnx, clips):
    from deeplab_trt.runtime.mosaic import Mosaic

    window = CollectSink()
    window.description = "window"
    sources = [open_source(c) for c in clips]
    mosaic = Mosaic(window, [s.size for s in sources])
    with open_backend(dynamic_onnx) as backend:
        stats = run_streams(backend, sources, [[mosaic.tile(i)] for i in range(3)], OPTIONS)
    for s in sources:
        s.close()
    assert len(window.pictures) == stats.ticks == 9
    assert window.pictures[0].shape == (2 * 120, 2 * 200, 3)  # 2x2 grid of the largest stream's size


def test_latency_histogram_percentiles_within_one_percent_in_constant_memory():
    from deeplab_trt.runtime.latency import LatencyHistogram

    rng = np.random.default_rng(3)
    samples = np.concatenate([rng.lognormal(np.log(0.03), 0.4, 20_000), [2.5]])  # ~30 ms, one 2.5 s stall
    hist = LatencyHistogram()
    assert hist.summary_ms() == {"p50": None, "p99": None, "max": None}
    size = hist.counts.nbytes
    for s in samples:
        hist.add(float(s))
    assert hist.counts.nbytes == size and hist.count == len(samples)
    for q in (50, 90, 99):
        assert hist.percentile(q) == pytest.approx(np.percentile(samples, q), rel=0.01)
    assert hist.summary_ms()["max"] == pytest.approx(2500.0)
    hist.add(0.0)  # below the floor: the first bin, no error
    assert hist.percentile(0) <= 2e-5
