"""Video sources and sinks (OpenCV), with the toolkit's error and atomic-write rules.

Sources (:func:`open_source`): a video file, an image sequence (``frames/%04d.png``), a
camera index (``"0"``) or device (``/dev/video0``), an RTSP/HTTP/... URL, or a GStreamer
pipeline string (anything containing ``!``; needs an OpenCV built with GStreamer, as on
JetPack). Jetson sources are GStreamer pipelines built for you (runtime/gst_pipelines.py):
``csi://N`` (a MIPI CSI camera through nvarguscamerasrc), ``v4l2:///dev/videoN`` (v4l2src), and
``decoder="nvv4l2"`` for files and ``rtsp://`` streams (hardware decode by nvv4l2decoder).
Opening reads the first frame, so a source that opens but decodes nothing is reported before
any output file exists.

Sinks: :class:`VideoFileSink` (a video file, written under a temporary name and renamed
when closed), :class:`WindowSink` (``cv2.imshow``), :class:`NullSink` (count only).

Odd frame sizes: OpenCV's writer here silently drops the last column/row of odd-sized frames
for every codec (637×481 is stored as 636×480). :class:`VideoFileSink` does the same crop
itself, explicitly, and logs it once: the output keeps the source's size rounded *down* to
even (nothing is scaled; at most one column and one row are lost). Sources written by OpenCV
already decode to the even size, so for them output size == source size.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import queue
import re
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

# FFmpeg prints demuxer complaints ("moov atom not found") straight to stderr; the toolkit
# reports unreadable sources itself, in one line. Read by OpenCV when FFmpeg is first used.
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from deeplab_trt.runtime import gst_pipelines as gst  # noqa: E402
from deeplab_trt.runtime.atomic import atomic_path  # noqa: E402
from deeplab_trt.runtime.errors import ToolkitError  # noqa: E402

log = logging.getLogger(__name__)

DEFAULT_FPS = 25.0
LIVE_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtp", "udp", "tcp", "srt")
#: Output suffix → fourcc. FFV1 (.mkv) is lossless: the one to use with ``--mode labels``.
FOURCCS = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".avi": "MJPG", ".mkv": "FFV1"}
LOSSLESS_SUFFIXES = (".mkv",)

_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
_SEQUENCE = re.compile(r"%0?\d*d")


def classify_source(src: str | int) -> str:
    """``camera`` | ``gstreamer`` | ``csi`` | ``v4l2`` | ``url`` | ``sequence`` | ``file``."""
    if isinstance(src, int) or str(src).strip().isdigit():
        return "camera"
    src = str(src)
    if "!" in src:
        return "gstreamer"
    for scheme in ("csi", "v4l2"):
        if src.lower().startswith(f"{scheme}://"):
            return scheme
    if _URL.match(src):
        return "url"
    if _SEQUENCE.search(src):
        return "sequence"
    if src.startswith("/dev/video"):
        return "camera"
    return "file"


class Source(Protocol):
    """What the video loop reads from a source of frames (:class:`VideoSource`, and the benchmarks'
    in-memory, synthetic and lockstep sources, which subclass this to declare it).

    ``description`` names it in reports; ``size`` is (w, h); ``fps`` the nominal rate (``None``:
    unknown); ``frame_count`` the number of frames when known; ``is_live``: frames arrive on the
    source's clock (the reader drops the oldest rather than wait). ``read`` returns the next BGR
    uint8 H×W×3 frame or ``None`` at the end; ``close`` releases it.
    """

    description: str
    size: tuple[int, int]
    fps: float | None
    frame_count: int | None
    is_live: bool

    def read(self) -> np.ndarray | None: ...

    def close(self) -> None: ...


class VideoSource:
    """Frames from an opened ``cv2.VideoCapture``, BGR uint8 H×W×3.

    ``size`` is (width, height) of the decoded frames; ``fps`` the source's rate (25 when it
    reports none, as cameras often do); ``frame_count`` the container's count (``None`` for
    live sources; an estimate for some files, used only for progress); ``is_live`` whether
    frames arrive in real time (the pipeline drops the oldest rather than fall behind).
    """

    def __init__(self, capture: cv2.VideoCapture, description: str, kind: str, is_live: bool):
        self.capture: cv2.VideoCapture | None = capture
        # read() runs on the decode thread; close() must not release the capture mid-read.
        self._lock = threading.Lock()
        self.description = description
        self.kind = kind
        self.is_live = is_live
        first = self._read_raw()
        if first is None:
            capture.release()
            raise ToolkitError(f"{description}: no frames decoded")
        self._pending: np.ndarray | None = first
        self.size = (first.shape[1], first.shape[0])
        fps = capture.get(cv2.CAP_PROP_FPS)
        self.fps_reported = bool(math.isfinite(fps) and 0 < fps <= 1000)
        self.fps = float(fps) if self.fps_reported else DEFAULT_FPS
        count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        self.frame_count: int | None = count if (count > 0 and not is_live) else None

    def _read_raw(self) -> np.ndarray | None:
        if self.capture is None:  # closed
            return None
        ok, frame = self.capture.read()
        if not ok or frame is None or frame.size == 0:
            return None
        if frame.ndim == 2:
            frame = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
        elif frame.shape[2] == 4:
            frame = cv2.cvtColor(frame, cv2.COLOR_BGRA2BGR)
        return frame

    def read(self) -> np.ndarray | None:
        """The next frame, or None at the end of the stream."""
        if self._pending is not None:
            frame, self._pending = self._pending, None
            return frame
        with self._lock:
            if self.capture is None:
                return None
            return self._read_raw()

    def __iter__(self) -> Iterator[np.ndarray]:
        while (frame := self.read()) is not None:
            yield frame

    def close(self) -> None:
        # A live stream's read can block for seconds; rather than wait or release under it,
        # leave that capture to process exit.
        if not self._lock.acquire(timeout=2.0):
            log.debug("%s: decoder still busy; not released", self.description)
            return
        try:
            if self.capture is not None:
                self.capture.release()
                self.capture = None
        finally:
            self._lock.release()

    def __enter__(self) -> VideoSource:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"VideoSource({self.description!r}, {self.size[0]}x{self.size[1]}, {self.fps:g} fps)"


def _has_gstreamer() -> bool:
    return any(
        line.strip().startswith("GStreamer:") and "YES" in line for line in cv2.getBuildInformation().splitlines()
    )


def require_gstreamer(source: str) -> None:
    """Raise the one error for a GStreamer source on an OpenCV without GStreamer.

    Why this wording: the usual cause on a Jetson is pip's ``opencv-python-headless`` (never built
    with GStreamer) shadowing JetPack's own GStreamer-enabled OpenCV in a venv; the fix is to use
    the system one, so the message says how.
    """
    if _has_gstreamer():
        return
    raise ToolkitError(
        f"{source}: needs an OpenCV built with GStreamer, and the cv2 in use ({cv2.__version__}, "
        f"{Path(cv2.__file__).parent}) has none (pip's opencv-python-headless never does); on JetPack use the "
        "system OpenCV: sudo apt install python3-opencv, a venv that sees it (python3 -m venv, option system-site-packages), and "
        "pip uninstall opencv-python-headless in it (it shadows the system cv2)"
    )


@contextlib.contextmanager
def _quiet_opencv():
    """OpenCV logs "[ WARN ] can't open camera by index" and the like; the toolkit's own
    one-line error says it better. Quiet only while opening, restored after."""
    logging_mod = getattr(getattr(cv2, "utils", None), "logging", None)
    if logging_mod is None:
        yield
        return
    previous = logging_mod.getLogLevel()
    logging_mod.setLogLevel(logging_mod.LOG_LEVEL_ERROR)
    try:
        yield
    finally:
        logging_mod.setLogLevel(previous)


def open_source(
    src: str | int,
    *,
    decoder: str = "cpu",
    codec: str = "auto",
    width: int | None = None,
    height: int | None = None,
    framerate: int | None = None,
    flip: str = "none",
) -> VideoSource:
    """Open a video file, image sequence, camera, URL, Jetson source or GStreamer pipeline (module doc).

    Args:
        src: what to read (see the module doc for the forms).
        decoder: ``cpu`` (OpenCV's FFmpeg decode, default) or ``nvv4l2`` (Jetson hardware decode of a
            file or ``rtsp://`` stream through GStreamer).
        codec: for ``nvv4l2``: ``h264``, ``h265`` or ``auto`` (by file name, else as FFmpeg probes it).
        width: capture size (csi, v4l2) or the size nvvidconv scales to (nvv4l2); with ``height``.
        height: see ``width``.
        framerate: capture rate (csi, v4l2) or the rate nvv4l2 frames are dropped down to.
        flip: a :data:`~deeplab_trt.runtime.gst_pipelines.FLIP_METHODS` name (csi, v4l2, nvv4l2).
    """
    with _quiet_opencv():
        pipeline = gstreamer_pipeline_for(
            src, decoder=decoder, codec=codec, width=width, height=height, framerate=framerate, flip=flip
        )
        if pipeline is not None:
            kind = classify_source(src)
            live = kind in ("csi", "v4l2", "url")
            log.info("%s: GStreamer pipeline: %s", src, pipeline)
            return _open_gstreamer(pipeline, str(src).strip(), kind, live=live)
        return _open_source(src)


def gstreamer_pipeline_for(
    src: str | int,
    *,
    decoder: str = "cpu",
    codec: str = "auto",
    width: int | None = None,
    height: int | None = None,
    framerate: int | None = None,
    flip: str = "none",
) -> str | None:
    """The pipeline :func:`open_source` builds for a Jetson source, or None where OpenCV opens ``src`` itself.

    Checks that the options fit the source (a capture option on a plain file is an error, not
    ignored) and, for ``nvv4l2`` with ``codec="auto"``, finds the codec. Arguments as :func:`open_source`.
    """
    if decoder not in gst.DECODERS:
        raise ToolkitError(f"--decoder {decoder}: unknown decoder (use {' or '.join(gst.DECODERS)})")
    if codec not in gst.CODECS:
        raise ToolkitError(f"--codec {codec}: unknown codec (use {', '.join(gst.CODECS)})")
    kind, text = classify_source(src), str(src).strip()
    options = {"width": width, "height": height, "framerate": framerate, "flip": flip}
    if kind == "csi":
        sensor = text.split("://", 1)[1].strip("/")
        if not sensor.isdigit():
            raise ToolkitError(f"{text}: expected csi://N with N the sensor id (csi://0)")
        return gst.csi_pipeline(int(sensor), **options)
    if kind == "v4l2":
        device = text.split("://", 1)[1]
        device = f"/dev/video{device}" if device.isdigit() else device
        if not device.startswith("/dev/"):
            raise ToolkitError(f"{text}: expected v4l2:///dev/videoN")
        return gst.v4l2_pipeline(device, **options)
    nvv4l2_input = kind == "file" or (kind == "url" and text.lower().startswith(("rtsp://", "rtsps://")))
    if decoder == "nvv4l2":
        if not nvv4l2_input:
            raise ToolkitError(f"{text}: --decoder nvv4l2 decodes video files and rtsp:// streams, not a {kind} source")
        if kind == "file" and not Path(text).is_file():
            raise ToolkitError(f"{text}: no such file")
        return gst.nvv4l2_decode_pipeline(text, codec=_nvv4l2_codec(text, codec), **options)
    given = [name for name, value in options.items() if value not in (None, "none")]
    if given or codec != "auto":
        raise ToolkitError(
            f"{text}: {', '.join(given) or 'codec'} applies to csi://, v4l2:// and --decoder nvv4l2 sources only"
        )
    return None


def _nvv4l2_codec(location: str, codec: str) -> str:
    """``codec`` unless ``auto``: then the file name's, else the FOURCC FFmpeg reports (the stream's caps)."""
    if codec != "auto":
        return codec
    named = gst.codec_from_name(location)
    if named is not None:
        return named
    fourcc = ""
    cap = cv2.VideoCapture(location, cv2.CAP_FFMPEG)
    try:
        if cap.isOpened():
            fourcc = gst.fourcc_text(cap.get(cv2.CAP_PROP_FOURCC))
    finally:
        cap.release()
    found = gst.codec_from_fourcc(fourcc)
    if found is None:
        what = f"its codec is {fourcc!r}" if fourcc else "FFmpeg could not tell its codec"
        raise ToolkitError(
            f"{location}: {what}; --decoder nvv4l2 decodes h264 and h265 (pass --codec h264 or --codec h265 "
            "if it is one, else use --decoder cpu)"
        )
    return found


def _open_gstreamer(pipeline: str, description: str, kind: str, *, live: bool) -> VideoSource:
    require_gstreamer(description)
    cap = cv2.VideoCapture(pipeline, cv2.CAP_GSTREAMER)
    if not cap.isOpened():
        raise ToolkitError(
            f"{description}: GStreamer could not start the pipeline '{pipeline}' "
            "(try it with gst-launch-1.0; a raw pipeline must end in 'appsink' and deliver BGR)"
        )
    return VideoSource(cap, description, kind, is_live=live)


def _open_source(src: str | int) -> VideoSource:
    kind = classify_source(src)
    text = str(src).strip()
    if kind == "camera":
        index_or_dev: int | str = int(text) if text.isdigit() else text
        name = f"camera {text}" if text.isdigit() else text
        cap = cv2.VideoCapture(index_or_dev)
        if not cap.isOpened():
            raise ToolkitError(f"{name}: cannot open camera")
        return VideoSource(cap, name, kind, is_live=True)
    if kind == "gstreamer":
        live = not re.search(r"\b(multi)?filesrc\b", text)
        return _open_gstreamer(text, text, kind, live=live)
    if kind == "url":
        cap = cv2.VideoCapture(text, cv2.CAP_FFMPEG)
        if not cap.isOpened():
            raise ToolkitError(f"{text}: cannot open stream")
        scheme = text.split("://", 1)[0].lower()
        live = scheme in LIVE_SCHEMES or int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0) <= 0
        return VideoSource(cap, text, kind, is_live=live)
    path = Path(text)
    if kind == "sequence":
        if not path.parent.is_dir():
            raise ToolkitError(f"{text}: no such directory {path.parent}")
    elif not path.exists():
        raise ToolkitError(f"{text}: no such file")
    elif path.is_dir():
        raise ToolkitError(
            f"{text}: is a directory (for an image sequence give a pattern like {path / 'frame_%04d.png'})"
        )
    cap = cv2.VideoCapture(text)
    if not cap.isOpened():
        raise ToolkitError(f"{text}: cannot open as video (not a video file OpenCV can decode)")
    return VideoSource(cap, text, kind, is_live=False)


class BackgroundReader:
    """Decode on a thread into a bounded queue, so decoding overlaps inference.

    Files are read losslessly (the thread waits when the queue is full); for live sources
    the oldest queued frame is dropped instead (``dropped`` counts them), so the pipeline
    shows the present rather than falling ever further behind. Yields ``(frame, decode_s)``;
    an exception raised while decoding is re-raised in the consumer.
    """

    _END = object()
    #: what :meth:`next` returns when no frame came before its deadline
    LATE = object()

    def __init__(self, source: Source, max_frames: int | None = None, queue_size: int = 4):
        self.source = source
        self.max_frames = max_frames
        self.reached_max = False  # the source was stopped at max_frames (not at its end)
        self.queue: queue.Queue = queue.Queue(maxsize=max(1, queue_size))
        self.stop_event = threading.Event()
        self.dropped = 0
        self.thread = threading.Thread(target=self._run, name="video-decode", daemon=True)
        self.thread.start()

    def _put(self, item) -> bool:
        while not self.stop_event.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                if self.source.is_live and item is not self._END:
                    try:
                        self.queue.get_nowait()
                        self.dropped += 1
                    except queue.Empty:
                        pass
        return False

    def _run(self) -> None:
        n = 0
        try:
            while not self.stop_event.is_set() and (self.max_frames is None or n < self.max_frames):
                t0 = time.perf_counter()
                frame = self.source.read()
                dt = time.perf_counter() - t0
                if frame is None:
                    break
                n += 1
                if not self._put((frame, dt)):
                    return
            self.reached_max = self.max_frames is not None and n >= self.max_frames
        except BaseException as exc:  # handed to the consumer  # noqa: BLE001
            self._put(exc)
            return
        self._put(self._END)

    def next(self, stop: threading.Event | None = None, *, deadline: float | None = None):
        """The next ``(frame, decode_s)``; None at the end of the source or once ``stop`` is set; with
        ``deadline`` (``perf_counter`` time), :attr:`LATE` when no frame is there by then (a tick of several
        streams waits for a live one only so long: ``runtime/ticks.py``)."""
        while stop is None or not stop.is_set():
            timeout = 0.1 if deadline is None else min(0.1, max(0.0, deadline - time.perf_counter()))
            try:
                item = self.queue.get(timeout=timeout)
            except queue.Empty:
                if deadline is not None and time.perf_counter() >= deadline:
                    return self.LATE
                continue
            if item is self._END:
                return None
            if isinstance(item, BaseException):
                raise item
            return item
        return None

    def __iter__(self) -> Iterator[tuple[np.ndarray, float]]:
        while (item := self.next()) is not None:
            yield item

    def close(self) -> None:
        self.stop_event.set()
        self.thread.join(timeout=2.0)


# ----------------------------------------------------------------------------------------------
# Sinks
# ----------------------------------------------------------------------------------------------
class Sink:
    """Where rendered frames go. Context manager: a clean exit or Ctrl-C closes (finalises),
    any other exception aborts (discards). ``wants_stop`` lets a sink end the run (a window
    closed by the user)."""

    wants_stop = False
    frames = 0

    def write(self, frame: np.ndarray) -> None:
        raise NotImplementedError

    def end_tick(self) -> None:
        """Called once per tick of the loop, after every stream's picture of it was written (a mosaic shows then)."""

    def close(self) -> None:
        pass

    def abort(self) -> None:
        self.close()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None or issubclass(exc_type, KeyboardInterrupt):
            self.close()
        else:
            self.abort()


class NullSink(Sink):
    """Discards frames (benchmarking the pipeline without encode cost)."""

    description = "none"

    def write(self, frame: np.ndarray) -> None:
        self.frames += 1


class _Discard(Exception):
    """Thrown into :func:`atomic_path` to make it delete the temporary file."""


def check_video_output(path: Path) -> None:
    """Fail early (before any slow work) on an output video name OpenCV cannot write."""
    suffix = Path(path).suffix.lower()
    if suffix not in FOURCCS:
        raise ToolkitError(f"{path}: unsupported video file type {suffix or '(none)'} (use {', '.join(FOURCCS)})")
    if Path(path).is_dir():
        raise ToolkitError(f"{path}: is a directory, expected a video file name")


def even_size(size: tuple[int, int]) -> tuple[int, int]:
    """(w, h) rounded down to even: what OpenCV's writers store for any codec here."""
    return size[0] - size[0] % 2, size[1] - size[1] % 2


class VideoFileSink(Sink):
    """A video file written under a temporary name (same suffix) and renamed on :meth:`close`.

    ``size`` is the (w, h) of the frames that will be written; odd sizes are cropped to even
    (see module doc), ``output_size`` says what the file holds. Codec by suffix (:data:`FOURCCS`)
    unless ``fourcc`` is given. :meth:`close` with no frame written leaves no file.
    """

    def __init__(self, path: str | os.PathLike, fps: float, size: tuple[int, int], fourcc: str | None = None):
        self.path = Path(path)
        self.description = str(self.path)
        suffix = self.path.suffix.lower()
        if fourcc is None:
            if suffix not in FOURCCS:
                raise ToolkitError(
                    f"{self.path}: unsupported video file type {suffix or '(none)'} (use {', '.join(FOURCCS)})"
                )
            fourcc = FOURCCS[suffix]
        self.fourcc = fourcc
        self.fps = float(fps)
        self.size = (int(size[0]), int(size[1]))
        self.output_size = even_size(self.size)
        if min(self.output_size) < 2:
            raise ToolkitError(f"{self.path}: cannot write {self.size[0]}x{self.size[1]} frames (too small)")
        self.cropped = self.output_size != self.size
        if self.cropped:
            log.warning(
                "%s: %dx%d frames are written as %dx%d (video codecs here need even sizes; the last %s dropped)",
                self.path,
                *self.size,
                *self.output_size,
                "column and row are"
                if self.size[0] % 2 and self.size[1] % 2
                else ("column is" if self.size[0] % 2 else "row is"),
            )
        if self.path.is_dir():
            raise ToolkitError(f"{self.path}: is a directory, expected a video file name")
        self._atomic = atomic_path(self.path)
        self.tmp = self._atomic.__enter__()
        self.writer = cv2.VideoWriter(str(self.tmp), cv2.VideoWriter.fourcc(*fourcc), self.fps, self.output_size)
        if not self.writer.isOpened():
            self._finish(keep=False)
            raise ToolkitError(f"{self.path}: OpenCV cannot write {fourcc} video to this file")
        self.frames = 0
        self._done = False

    def write(self, frame: np.ndarray) -> None:
        h, w = frame.shape[:2]
        if (w, h) != self.size:
            raise ToolkitError(f"{self.path}: frame size changed mid-stream ({self.size[0]}x{self.size[1]} → {w}x{h})")
        if self.cropped:
            frame = np.ascontiguousarray(frame[: self.output_size[1], : self.output_size[0]])
        self.writer.write(frame)
        self.frames += 1

    def _finish(self, keep: bool) -> None:
        self._done = True
        writer = getattr(self, "writer", None)
        if writer is not None:
            writer.release()  # writes the container index: the file is playable from here
        if keep:
            self._atomic.__exit__(None, None, None)  # rename into place
        else:
            self._atomic.__exit__(_Discard, _Discard(), None)  # delete the temporary

    def close(self) -> None:
        """Finalise: flush the container and rename into place (no frames: no file)."""
        if not self._done:
            if self.frames == 0:
                log.warning("%s: no frames written; not saved", self.path)
            self._finish(keep=self.frames > 0)

    def abort(self) -> None:
        """Discard: remove the temporary file, leave ``path`` untouched."""
        if not self._done:
            self._finish(keep=False)


class WindowSink(Sink):
    """An OpenCV window; ``q`` or Esc (or closing the window) ends the run."""

    def __init__(self, title: str = "deeplab-trt"):
        self.title = title
        self.description = f"window {title!r}"
        if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
            raise ToolkitError("--show: no display ($DISPLAY is not set); write a file with --output instead")
        try:
            cv2.namedWindow(title, cv2.WINDOW_NORMAL)
        except cv2.error as exc:
            raise ToolkitError(
                "--show: this OpenCV has no GUI support (opencv-python-headless?); write a file with --output instead"
            ) from exc
        self.frames = 0

    def write(self, frame: np.ndarray) -> None:
        cv2.imshow(self.title, frame)
        key = cv2.waitKey(1) & 0xFF
        self.frames += 1
        if key in (27, ord("q")):
            self.wants_stop = True
        elif cv2.getWindowProperty(self.title, cv2.WND_PROP_VISIBLE) < 1:
            self.wants_stop = True

    def close(self) -> None:
        try:
            cv2.destroyWindow(self.title)
        except cv2.error:
            pass


def probe_video(path: str | os.PathLike) -> dict:
    """Decode a whole file: frame count, decoded (w, h), fps. For tests and reports."""
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise ToolkitError(f"{path}: cannot open as video")
    n, size = 0, None
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        n += 1
        size = (frame.shape[1], frame.shape[0])
    fps = cap.get(cv2.CAP_PROP_FPS)
    cap.release()
    return {"frames": n, "size": size, "fps": fps}
