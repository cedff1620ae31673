"""Live sources reconnect (issue 13 item 3): the policy on a scripted source, and end to end against a
real HTTP MPEG-TS stream on 127.0.0.1 that is stopped and restarted mid-run.

The stream: PyAV (FFmpeg) muxes MPEG-TS into the HTTP response of Python's ``http.server``. FFmpeg's own
HTTP ``listen`` option cannot be reached through PyAV: its output container opens the URL with
``avio_open`` and no options (av/container/output.py), so the server side is Python's, the bytes are
FFmpeg's, and the client is the toolkit's OpenCV/FFmpeg reader, as for any camera.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from deeplab_trt.runtime.errors import ToolkitError
from deeplab_trt.runtime.reconnect import Backoff, ReconnectingSource


class ScriptedSource:
    """A live source that yields ``frames`` frames of one size, then drops."""

    description = "scripted"
    fps = 25.0
    frame_count = None
    is_live = True

    def __init__(self, frames: int, size=(8, 4)):
        self.size = size
        self.left = frames
        self.closed = False

    def read(self):
        if self.left == 0:
            return None
        self.left -= 1
        return np.zeros((self.size[1], self.size[0], 3), np.uint8)

    def close(self):
        self.closed = True


def opener(script):
    """open_source stand-in: each call takes the next entry (a frame count, a source, or an exception to raise)."""
    calls = iter(script)

    def open_source():
        item = next(calls, ToolkitError("connection refused"))  # after the script: the stream is gone
        if isinstance(item, Exception):
            raise item
        return item if isinstance(item, ScriptedSource) else ScriptedSource(item)

    return open_source


def drain(source) -> int:
    n = 0
    while source.read() is not None:
        n += 1
    return n


def test_a_drop_is_reopened_with_backoff_and_counted():
    waits = []
    src = ReconnectingSource(
        opener([3, ToolkitError("refused"), ToolkitError("refused"), 2]),
        backoff=Backoff(attempts=5, delay=0.5, factor=2, max_delay=1.5),
        sleep=waits.append,
    )
    assert drain(src) == 5
    assert src.reconnects == 1
    assert waits[:3] == [0.5, 1.0, 1.5]  # one drop, three attempts; then the reopened stream ends too
    assert "gave up after 5 reconnect attempts" in src.end_reason


def test_files_never_reconnect():
    class FileLike(ScriptedSource):
        is_live = False

    src = ReconnectingSource(opener([FileLike(4)]), backoff=Backoff(attempts=5), sleep=lambda s: None)
    assert drain(src) == 4 and src.reconnects == 0 and src.end_reason == "end of stream"


def test_reconnect_off_ends_at_the_first_drop():
    src = ReconnectingSource(opener([2, 2]), backoff=Backoff(attempts=0), sleep=lambda s: None)
    assert drain(src) == 2 and src.reconnects == 0 and "reconnect off" in src.end_reason


def test_a_stream_that_comes_back_at_another_size_ends_that_source():
    src = ReconnectingSource(opener([2, ScriptedSource(2, size=(16, 8))]), backoff=Backoff(), sleep=lambda s: None)
    assert drain(src) == 2 and "reopened at 16x8, not 8x4" in src.end_reason


def test_bad_policy_is_one_line():
    with pytest.raises(ToolkitError, match="reconnect policy"):
        Backoff(attempts=-1)


# ---------------------------------------------------------------------------------------------
# end to end: a real HTTP MPEG-TS stream, stopped and restarted while `deeplab-trt run` reads it
# ---------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Stream:
    """Serves ``frames`` frames of MPEG-TS at ~``fps`` to each GET on ``port``, then closes the connection."""

    def __init__(self, port: int, frames: int, fps: float = 25.0, size=(160, 96)):
        av = pytest.importorskip("av", reason="PyAV serves the test stream (pip install av)")
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                with outer.lock:
                    outer.connections += 1
                    first = outer.connections == 1
                if not first:  # one connection per server: a client back too early finds it gone
                    self.send_error(503)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "video/mp2t")
                self.end_headers()
                out = av.open(self.wfile, mode="w", format="mpegts")
                stream = out.add_stream("mpeg2video", rate=int(fps))
                stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
                try:
                    for i in range(frames):
                        img = np.full((size[1], size[0], 3), (i * 7) % 256, np.uint8)
                        for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="bgr24")):
                            out.mux(packet)
                        outer.served += 1
                        time.sleep(1.0 / fps)
                    for packet in stream.encode():
                        out.mux(packet)
                    out.close()
                except (BrokenPipeError, ConnectionResetError, OSError):
                    pass

            def log_message(self, *args):
                pass

        self.served = 0
        self.connections = 0
        self.lock = threading.Lock()
        ThreadingHTTPServer.allow_reuse_address = True
        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


def _serve_twice(port: int, frames: int) -> threading.Thread:
    """Serve ``frames`` frames, stop, come back ~1 s later with ``frames`` more, then stop for good."""
    first = _Stream(port, frames=frames)

    def restart():
        while first.served < frames:
            time.sleep(0.05)
        first.stop()
        time.sleep(1.0)
        second = _Stream(port, frames=frames)
        while second.served < frames:
            time.sleep(0.05)
        second.stop()

    server = threading.Thread(target=restart, daemon=True)
    server.start()
    return server


def test_run_survives_an_http_stream_restart(tmp_path, onnx_factory):
    """The server stops after its frames and is back ~1 s later: the run reconnects, goes on, counts
    the gap, and ends when the stream is gone for good (bounded attempts)."""
    from deeplab_trt.cli import main

    port = _free_port()
    url = f"http://127.0.0.1:{port}/live.ts"
    server = _serve_twice(port, frames=30)
    stats_path = tmp_path / "stats.json"
    t0 = time.monotonic()
    rc = main(
        [
            "run",
            str(onnx_factory()),
            "--source",
            url,
            "--reconnect",
            "3",
            "--reconnect-delay",
            "0.3",
            "--json",
            str(stats_path),
            "--no-progress",
        ]
    )
    server.join(timeout=30)
    assert rc == 0
    stats = json.loads(stats_path.read_text())
    status = stats["source_status"]
    assert status["reconnects"] == 1, status
    assert status["gap_s"] > 0.5, status
    assert "gave up after 3 reconnect attempts" in status["end_reason"], status
    # frames of both connections arrived (live: the reader may drop a few when inference lags)
    assert stats["frames"] + stats["dropped"] > 35, stats
    assert time.monotonic() - t0 < 60


def test_a_live_stream_that_drops_does_not_stop_a_file_beside_it(tmp_path, onnx_factory):
    """Two streams, one batched inference per tick: the HTTP stream drops, is reopened, then gone for good;
    the file beside it is segmented whole; the summary says how each ended."""
    from video_helpers import write_video

    from deeplab_trt.cli import main

    port = _free_port()
    url = f"http://127.0.0.1:{port}/live.ts"
    server = _serve_twice(port, frames=20)
    clip = write_video(tmp_path / "file.avi", 12, (128, 72), fourcc="MJPG")
    model = onnx_factory(head="lowres", height=64, width=128, num_classes=5, dynamic_batch=(1, 2, 4))
    stats_path = tmp_path / "stats.json"
    rc = main(
        ["run", str(model), "-s", str(clip), "-s", url, "--reconnect", "4", "--reconnect-delay", "0.3"]
        + ["-o", str(tmp_path / "out") + "/", "--json", str(stats_path), "--no-progress"]
    )
    server.join(timeout=30)
    assert rc == 0
    stats = json.loads(stats_path.read_text())
    file, live = stats["streams"]
    assert file["frames"] == 12 and file["ended"] == "end of stream" and file["source_status"] is None
    assert live["source_status"]["reconnects"] == 1 and live["source_status"]["gap_s"] > 0.5
    assert live["ended"].startswith("gave up after 4 reconnect attempts"), live
    assert live["frames"] + live["dropped"] > 25 and live["outputs"][0]["frames"] == live["frames"]
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == ["0_file.mp4", f"1_127.0.0.1_{port}_live.ts.mp4"]
