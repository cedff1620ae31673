"""``deeplab-trt run`` end to end on video files generated here, plus its bad inputs.

Sizes: OpenCV's writers store odd frame sizes rounded down to even (DESIGN.md), so a 637x481
source written here *decodes* as 636x480; the output must decode to the same size, frame
count and fps. An image-sequence source really is 637x481: the output is 636x480 (the sink
drops the last column/row, explicitly, as documented in runtime/video.py and the README).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from video_helpers import synthetic_frame, write_video

from deeplab_trt.cli import main as cli_main
from deeplab_trt.runtime.backends import open_backend
from deeplab_trt.runtime.pipeline import RunOptions, run_video
from deeplab_trt.runtime.postprocess import palette_bgr
from deeplab_trt.runtime.video import BackgroundReader, Sink, VideoFileSink, even_size, open_source, probe_video

PYTHON = sys.executable


@pytest.fixture(scope="module")
def lowres_onnx(onnx_factory):
    return onnx_factory(head="lowres")


@pytest.fixture(scope="module")
def odd_clip(tmp_path_factory):
    return write_video(tmp_path_factory.mktemp("clips") / "odd.mp4", 12, (637, 481), fps=10.0)


def leftovers(directory: Path, keep: set[str]) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name not in keep)


def run_cli(*args) -> int:
    return cli_main(["run", *map(str, args), "--no-progress"])


# ---------------------------------------------------------------------------------------------
# end to end
# ---------------------------------------------------------------------------------------------
def test_run_odd_sized_file_keeps_frames_size_fps(lowres_onnx, odd_clip, tmp_path, capsys):
    out, stats_json = tmp_path / "out.mp4", tmp_path / "stats.json"
    assert run_cli(lowres_onnx, "--source", odd_clip, "--output", out, "--json", stats_json) == 0
    src, got = probe_video(odd_clip), probe_video(out)
    assert src["frames"] == 12 and src["size"] == (636, 480)  # what OpenCV stored for 637x481
    assert got["frames"] == src["frames"]
    assert got["size"] == src["size"]
    assert got["fps"] == pytest.approx(src["fps"])
    stats = json.loads(stats_json.read_text())
    assert stats["frames"] == 12 and stats["interrupted"] is False
    assert set(stats["ms_per_frame"]) == {"decode", "preprocess", "infer", "postprocess", "encode"}
    assert stats["outputs"][0]["size"] == [636, 480] and stats["fps"] > 0
    printed = capsys.readouterr().out
    assert "12 frames" in printed and "FPS" in printed and "ms/frame" in printed and "infer" in printed
    assert leftovers(tmp_path, {"out.mp4", "stats.json"}) == []


def test_run_even_size_mask_mode_lossless_colours(lowres_onnx, tmp_path):
    src = write_video(tmp_path / "even.avi", 12, (320, 240), fps=15.0, fourcc="MJPG")
    out = tmp_path / "mask.mkv"
    assert run_cli(lowres_onnx, "--source", src, "--output", out, "--mode", "mask") == 0
    got = probe_video(out)
    assert got == {"frames": 12, "size": (320, 240), "fps": pytest.approx(15.0)}
    # FFV1 is lossless: every pixel is one of the model's palette colours.
    from deeplab_trt.runtime.spec import spec_from_onnx

    lut = palette_bgr(spec_from_onnx(lowres_onnx))[:5]
    cap = cv2.VideoCapture(str(out))
    ok, frame = cap.read()
    cap.release()
    assert ok
    colours = {tuple(c) for c in frame.reshape(-1, 3)}
    assert colours <= {tuple(c) for c in lut}


def test_run_max_frames(lowres_onnx, odd_clip, tmp_path):
    out = tmp_path / "five.avi"
    assert run_cli(lowres_onnx, "--source", odd_clip, "-o", out, "--max-frames", "5", "--alpha", "0.8") == 0
    assert probe_video(out)["frames"] == 5


def test_run_odd_image_sequence_is_cropped_to_even(lowres_onnx, tmp_path):
    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(4):
        cv2.imwrite(str(frames / f"f_{i:03d}.png"), synthetic_frame(i, (637, 481)))
    out = tmp_path / "seq.mp4"
    assert run_cli(lowres_onnx, "--source", frames / "f_%03d.png", "-o", out, "--policy", "letterbox") == 0
    with open_source(str(frames / "f_%03d.png")) as source:
        assert source.size == (637, 481)
    got = probe_video(out)
    assert got["frames"] == 4 and got["size"] == even_size((637, 481)) == (636, 480)


@pytest.mark.parametrize("head", ["logits", "labels"])
def test_run_other_heads_without_output(onnx_factory, odd_clip, tmp_path, head, capsys):
    """No --output and no --show: runs (NullSink), reports, writes nothing but the stats."""
    stats_json = tmp_path / "s.json"
    assert run_cli(onnx_factory(head=head), "--source", odd_clip, "--mode", "labels", "--json", stats_json) == 0
    assert json.loads(stats_json.read_text())["frames"] == 12
    assert "FPS" in capsys.readouterr().out
    assert leftovers(tmp_path, {"s.json"}) == []


class _FailingBackend:
    """Wraps a real backend; raises ``exc`` on the ``at``-th call to ``infer``."""

    def __init__(self, inner, at: int, exc: BaseException):
        self.inner, self.at, self.exc, self.calls = inner, at, exc, 0
        self.spec, self.name, self.input_dtype = inner.spec, inner.name, inner.input_dtype
        self.fixed_batch, self.pipeline = inner.fixed_batch, inner.pipeline
        self.fresh_outputs, self.runner = inner.fresh_outputs, inner.runner

    def infer(self, batch):
        self.calls += 1
        if self.calls == self.at:
            raise self.exc
        return self.inner.infer(batch)

    def close(self):
        self.inner.close()


def test_ctrl_c_finalises_frames_so_far(lowres_onnx, odd_clip, tmp_path):
    out = tmp_path / "partial.mp4"
    with open_backend(lowres_onnx) as inner, open_source(odd_clip) as source:
        backend = _FailingBackend(inner, at=5, exc=KeyboardInterrupt())
        with VideoFileSink(out, source.fps, source.size) as sink:
            stats = run_video(backend, source, [sink], RunOptions(progress=False))
    assert stats.interrupted and stats.frames == 4
    assert probe_video(out)["frames"] == 4
    assert leftovers(tmp_path, {"partial.mp4"}) == []


def test_error_mid_run_leaves_no_file(lowres_onnx, odd_clip, tmp_path):
    out = tmp_path / "broken.mp4"
    with open_backend(lowres_onnx) as inner, open_source(odd_clip) as source:
        backend = _FailingBackend(inner, at=3, exc=RuntimeError("device lost"))
        with pytest.raises(RuntimeError, match="device lost"):
            with VideoFileSink(out, source.fps, source.size) as sink:
                run_video(backend, source, [sink], RunOptions(progress=False))
    assert leftovers(tmp_path, set()) == []


def test_sigint_subprocess_gives_playable_file(lowres_onnx, tmp_path):
    """A real Ctrl-C (SIGINT) mid-run: exit 130, summary printed, a playable file, no temporary."""
    src = write_video(tmp_path / "long.mp4", 1000, (96, 64), fps=30.0)
    out = tmp_path / "out.mp4"
    proc = subprocess.Popen(
        [PYTHON, "-m", "deeplab_trt", "run", str(lowres_onnx), "--source", str(src), "-o", str(out), "--no-progress"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        tmp = [p for p in tmp_path.glob(".out.*.mp4") if p.stat().st_size > 8000]
        if tmp:
            break
        time.sleep(0.05)
    if proc.poll() is not None:
        pytest.skip("the run finished before it could be interrupted")
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert "interrupted" in stdout
    got = probe_video(out)
    assert 0 < got["frames"] < 1000 and got["size"] == (96, 64)
    assert leftovers(tmp_path, {"long.mp4", "out.mp4"}) == []


# ---------------------------------------------------------------------------------------------
# pieces: decode thread, backends
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("live", [False, True])
def test_background_reader_lossless_for_files_drops_oldest_when_live(odd_clip, live):
    with open_source(odd_clip) as source:
        source.is_live = live  # same decoder, live-source queueing policy
        reader = BackgroundReader(source, queue_size=2)
        got = []
        for frame, _decode_s in reader:
            got.append(frame)
            if len(got) == 1:  # a slow consumer: wait (not a fixed sleep) until the queue is full
                deadline = time.monotonic() + 60  # and, when live, the decoder has dropped its way to the end
                while time.monotonic() < deadline and not (
                    reader.queue.full() and (not live or 1 + reader.dropped + reader.queue.qsize() >= 12)
                ):
                    time.sleep(0.01)
        reader.close()
    if live:
        assert reader.dropped > 0 and len(got) + reader.dropped == 12
    else:
        assert reader.dropped == 0 and len(got) == 12


def test_ort_backend_and_open_backend_choices(lowres_onnx, tmp_path):
    from deeplab_trt.runtime.errors import ToolkitError

    with open_backend(lowres_onnx, "onnxruntime", threads=1) as backend:
        assert backend.input_dtype == np.float32 and backend.fixed_batch == 1 and backend.pipeline == "cpu"
        assert "onnxruntime" in backend.name
        out = backend.infer(np.zeros((1, 3, 64, 128), np.float32))
        assert out.shape == (1, 5, 4, 8)  # lowres head, output stride 16
        with pytest.raises(ToolkitError, match="N×3×64×128"):
            backend.infer(np.zeros((1, 3, 32, 32), np.float32))
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"not an engine")
    with pytest.raises(ToolkitError, match="model.engine: a TensorRT engine cannot run on ONNX Runtime"):
        open_backend(engine, "onnxruntime")
    with pytest.raises(ToolkitError, match="--backend tensorrt needs a TensorRT engine"):
        open_backend(lowres_onnx, "tensorrt")
    with pytest.raises(ToolkitError, match="model.engine"):  # no GPU here: TensorRT cannot load it
        open_backend(engine)
    with pytest.raises(ToolkitError, match="unknown backend"):
        open_backend(lowres_onnx, "tflite")


def test_ort_load_failure_is_one_line(tmp_path):
    """A file onnx can parse but ONNX Runtime cannot load (unknown operator)."""
    import onnx
    from onnx import TensorProto, helper

    from deeplab_trt.runtime.errors import ToolkitError
    from deeplab_trt.runtime.spec import ModelSpec

    graph = helper.make_graph(
        [helper.make_node("NoSuchOp", ["input"], ["output"], domain="no.such.domain")],
        "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 2, 8, 8])],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("no.such.domain", 1)]
    )
    spec = ModelSpec(name="x", classes=["a", "b"], palette=[], input_height=8, input_width=8, head="logits")
    helper.set_model_props(model, spec.to_metadata())
    path = tmp_path / "odd_op.onnx"
    onnx.save(model, str(path))
    with pytest.raises(ToolkitError) as info:
        open_backend(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ONNX Runtime cannot load it") and "\n" not in message


# ---------------------------------------------------------------------------------------------
# bad inputs (subprocess: exit code, one line, no traceback, nothing written)
# ---------------------------------------------------------------------------------------------
def _bad_model_or_source(kind: str, tmp: Path, good_model: Path, good_clip: Path) -> tuple[Path, Path, str]:
    """(model, source, the file the message must name) for one kind of bad input."""
    if kind == "missing model":
        return tmp / "nope.onnx", good_clip, "nope.onnx"
    if kind == "not onnx":
        (tmp / "text.onnx").write_text("this is not a model\n")
        return tmp / "text.onnx", good_clip, "text.onnx"
    if kind == "truncated onnx":
        data = good_model.read_bytes()
        (tmp / "half.onnx").write_bytes(data[: len(data) // 2])
        return tmp / "half.onnx", good_clip, "half.onnx"
    if kind == "unopenable video":
        (tmp / "noise.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 8192, dtype=np.uint8).tobytes())
        return good_model, tmp / "noise.mp4", "noise.mp4"
    if kind == "zero-frame video":
        writer = cv2.VideoWriter(str(tmp / "empty.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
        writer.release()
        return good_model, tmp / "empty.avi", "empty.avi"
    if kind == "missing source":
        return good_model, tmp / "absent.mp4", "absent.mp4"
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind", ["missing model", "not onnx", "truncated onnx", "unopenable video", "zero-frame video", "missing source"]
)
def test_bad_inputs_one_line_no_output(kind, lowres_onnx, odd_clip, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    model, source, named = _bad_model_or_source(kind, inputs, lowres_onnx, odd_clip)
    outdir = tmp_path / "out"
    outdir.mkdir()
    proc = subprocess.run(
        [
            PYTHON,
            "-m",
            "deeplab_trt",
            "run",
            str(model),
            "--source",
            str(source),
            "-o",
            str(outdir / "seg.mp4"),
            "--json",
            str(outdir / "s.json"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr and named in lines[0] and "error" in lines[0]
    assert list(outdir.iterdir()) == []


class _RecordingSink(Sink):
    """A real in-memory sink: keeps every frame; can fail or ask to stop after N frames."""

    def __init__(self, fail_at: int | None = None, stop_after: int | None = None):
        self.frames: list[np.ndarray] = []
        self.fail_at, self.stop_after = fail_at, stop_after
        self.wants_stop = False

    def write(self, frame):
        if self.fail_at is not None and len(self.frames) + 1 == self.fail_at:
            raise OSError("disk full")
        self.frames.append(frame.copy())
        if self.stop_after is not None and len(self.frames) >= self.stop_after:
            self.wants_stop = True

    def close(self):
        pass

    def abort(self):
        pass


def test_finisher_thread_keeps_order_and_matches_serial_reference(lowres_onnx, odd_clip):
    """Rendering runs on a worker thread; the frames it writes equal the step-by-step reference."""
    from deeplab_trt.runtime.postprocess import labels_from_output, render
    from deeplab_trt.runtime.preprocess import preprocess

    sink = _RecordingSink()
    with open_backend(lowres_onnx) as backend, open_source(odd_clip) as source:
        run_video(backend, source, [sink], RunOptions(progress=False, max_frames=6))
        lut = palette_bgr(backend.spec)
        with open_source(odd_clip) as again:
            for got, frame in zip(sink.frames, again):
                x, geo = preprocess(frame, backend.spec)
                labels = labels_from_output(backend.infer(x)[0], backend.spec, geo)
                assert np.array_equal(got, render(frame, labels, lut))
    assert len(sink.frames) == 6


def test_sink_error_reaches_the_caller_and_wants_stop_ends_the_run(lowres_onnx, odd_clip):
    with open_backend(lowres_onnx) as backend:
        with open_source(odd_clip) as source, pytest.raises(OSError, match="disk full"):
            run_video(backend, source, [_RecordingSink(fail_at=3)], RunOptions(progress=False))
        stopper = _RecordingSink(stop_after=2)
        with open_source(odd_clip) as source:
            stats = run_video(backend, source, [stopper], RunOptions(progress=False))
    assert len(stopper.frames) == 2 and stats.frames == 2
