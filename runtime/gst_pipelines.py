"""GStreamer pipeline strings for Jetson sources, for ``cv2.VideoCapture(pipeline, cv2.CAP_GSTREAMER)``.

Why pure functions: the strings are the whole contract with GStreamer, and no machine that runs
the tests has a CSI camera, an NVDEC or a GStreamer-enabled OpenCV; building them apart from
opening them lets the tests pin every element, and users can print one (``-v`` logs it) and try
it with ``gst-launch-1.0`` on the device.

The element chains follow NVIDIA's jetson-utils ``videoSource`` (github.com/dusty-nv/jetson-utils,
``cpp/camera/gstCamera.cpp`` and ``cpp/codec/gstDecoder.cpp``, ``buildLaunchStr``), with three
changes for OpenCV: frames leave NVMM through ``nvvidconv`` as ``BGRx`` and ``videoconvert`` makes
the ``BGR`` OpenCV's appsink reader wants; the demuxer links straight to the parser (a ``queue``
right after the demuxer, as jetson-utils has it, can take an audio pad first); and locations are
quoted (paths with spaces). Flip methods are jetson-utils' names (``videoOptions::FlipMethod``);
``nvvidconv flip-method`` takes their index, ``videoflip method`` the name.
"""

from __future__ import annotations

from pathlib import PurePath

from deeplab_trt.runtime.errors import ToolkitError

#: ``--decoder`` choices. cpu: OpenCV's own (FFmpeg) decode; nvv4l2: Jetson's NVDEC via nvv4l2decoder.
DECODERS = ("cpu", "nvv4l2")
#: Codecs the nvv4l2 chain is built for (parser, RTP depayloader).
CODEC_ELEMENTS = {"h264": ("h264parse", "rtph264depay"), "h265": ("h265parse", "rtph265depay")}
CODECS = ("auto", *CODEC_ELEMENTS)
#: In nvvidconv's ``flip-method`` order (jetson-utils ``videoOptions::FlipMethod``).
FLIP_METHODS = (
    "none",
    "counterclockwise",
    "rotate-180",
    "clockwise",
    "horizontal-flip",
    "upper-right-diagonal",
    "vertical-flip",
    "upper-left-diagonal",
)
#: File suffix → demuxer (jetson-utils gstDecoder's table); raw elementary streams need none.
DEMUXERS = {
    ".mp4": "qtdemux",
    ".m4v": "qtdemux",
    ".mov": "qtdemux",
    ".qt": "qtdemux",
    ".mkv": "matroskademux",
    ".webm": "matroskademux",
    ".avi": "avidemux",
    ".flv": "flvdemux",
}
#: Elementary-stream suffixes → codec (the codec is in the name; no demuxer).
ELEMENTARY = {".h264": "h264", ".264": "h264", ".h265": "h265", ".265": "h265", ".hevc": "h265"}
#: OpenCV/FFmpeg FOURCCs (CAP_PROP_FOURCC) → codec, for containers whose name says nothing.
FOURCC_CODECS = {"avc1": "h264", "avc3": "h264", "h264": "h264", "x264": "h264"} | {
    "hev1": "h265",
    "hvc1": "h265",
    "hevc": "h265",
    "h265": "h265",
}
#: CSI sensors need explicit caps; jetson-utils' defaults.
CSI_DEFAULTS = (1280, 720, 30)
#: rtspsrc jitter buffer (GStreamer's default is 2000 ms; jetson-utils uses 10, tight off a LAN).
RTSP_LATENCY_MS = 200

_TO_BGR = "video/x-raw, format=(string)BGRx ! videoconvert ! video/x-raw, format=(string)BGR"


def quote(value: str) -> str:
    """A gst-launch property value: double-quoted, ``\\`` and ``"`` escaped (spaces, ``&`` in URLs)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def flip_index(flip: str) -> int:
    """``flip`` (a :data:`FLIP_METHODS` name) → nvvidconv's ``flip-method`` number."""
    if flip not in FLIP_METHODS:
        raise ToolkitError(f"--flip {flip}: unknown flip method (use one of {', '.join(FLIP_METHODS)})")
    return FLIP_METHODS.index(flip)


def _appsink(live: bool) -> str:
    # sync=false: deliver as decoded, not at the clip's rate (the loop paces itself); live sources keep
    # only the newest frame so a slow consumer sees the present (as BackgroundReader does one level up).
    return "appsink sync=false drop=true max-buffers=1" if live else "appsink sync=false"


def _size_caps(width: int | None, height: int | None, framerate: int | None = None) -> list[str]:
    if (width is None) != (height is None):
        raise ToolkitError("--source-size: give both height and width (HxW)")
    fields = [f"width=(int){width}", f"height=(int){height}"] if width is not None else []
    if framerate is not None:
        fields.append(f"framerate=(fraction){framerate}/1")
    return fields


def csi_pipeline(
    sensor_id: int,
    *,
    width: int | None = None,
    height: int | None = None,
    framerate: int | None = None,
    flip: str = "none",
) -> str:
    """A MIPI CSI camera (``csi://N``) through libargus: nvarguscamerasrc → nvvidconv → BGR appsink.

    Chain from jetson-utils ``gstCamera::buildLaunchStr`` (the ``csi`` branch). Unlike jetson-utils we
    do not turn "none" into a 180° rotation; many JetPack CSI modules are mounted upside down: pass
    ``flip="rotate-180"`` for those.

    Args:
        sensor_id: the camera's ``sensor-id`` (0 or 1 on the devkits).
        width: capture width (default 1280; the sensor must offer the mode).
        height: capture height (default 720).
        framerate: frames per second (default 30).
        flip: one of :data:`FLIP_METHODS`, done by nvvidconv.
    """
    _size_caps(width, height)  # both or neither
    w, h, fps = CSI_DEFAULTS
    caps = ", ".join(["video/x-raw(memory:NVMM)", *_size_caps(width or w, height or h, framerate or fps)])
    return (
        f"nvarguscamerasrc sensor-id={int(sensor_id)} ! {caps}, format=(string)NV12 ! "
        f"nvvidconv flip-method={flip_index(flip)} ! {_TO_BGR} ! {_appsink(live=True)}"
    )


def v4l2_pipeline(
    device: str,
    *,
    width: int | None = None,
    height: int | None = None,
    framerate: int | None = None,
    flip: str = "none",
) -> str:
    """A V4L2 camera (``v4l2:///dev/videoN``, USB webcams) delivering raw video: v4l2src → BGR appsink.

    Chain from jetson-utils ``gstCamera::buildLaunchStr`` (the raw ``v4l2src`` branch); flipping is
    ``videoflip`` (system memory, any GStreamer) rather than nvvidconv. Cameras that only stream MJPEG
    at the wanted size need a decoder: give the whole pipeline as the source instead.

    Args:
        device: the device node, ``/dev/videoN``.
        width: capture width (both or neither of width/height; default: the camera's choice).
        height: capture height.
        framerate: frames per second (default: the camera's choice).
        flip: one of :data:`FLIP_METHODS`.
    """
    flip_index(flip)
    parts = [f"v4l2src device={quote(device)} do-timestamp=true"]
    caps = _size_caps(width, height, framerate)
    if caps:
        parts.append(", ".join(["video/x-raw", *caps]))
    if flip != "none":
        parts.append(f"videoflip method={flip}")
    parts += ["videoconvert", "video/x-raw, format=(string)BGR", _appsink(live=True)]
    return " ! ".join(parts)


def nvv4l2_decode_pipeline(
    location: str,
    *,
    codec: str,
    width: int | None = None,
    height: int | None = None,
    framerate: int | None = None,
    flip: str = "none",
    latency_ms: int = RTSP_LATENCY_MS,
) -> str:
    """Hardware (NVDEC) decode of a file or ``rtsp://`` stream: source → depay/parse → nvv4l2decoder → nvvidconv → BGR.

    Chain from jetson-utils ``gstDecoder::buildLaunchStr`` (``file`` and ``rtsp`` branches, the V4L2
    codec type: ``nvv4l2decoder enable-max-performance=1`` whose NVMM output nvvidconv brings to
    system memory; scaling by nvvidconv caps, rate limiting by ``videorate drop-only=true``).

    Args:
        location: a file path (container by suffix, :data:`DEMUXERS`, or an elementary ``.h264``/``.h265``)
            or an ``rtsp://`` URL.
        codec: ``h264`` or ``h265`` (see :func:`codec_from_name` / :func:`codec_from_fourcc`).
        width: output width, scaled by nvvidconv (both or neither of width/height).
        height: output height.
        framerate: drop frames down to at most this rate (default: every frame).
        flip: one of :data:`FLIP_METHODS`, done by nvvidconv.
        latency_ms: rtspsrc jitter-buffer latency (RTSP only).
    """
    if codec not in CODEC_ELEMENTS:
        raise ToolkitError(f"{location}: --decoder nvv4l2 handles {' and '.join(CODEC_ELEMENTS)}, not {codec}")
    parser, depay = CODEC_ELEMENTS[codec]
    live = location.lower().startswith("rtsp://") or location.lower().startswith("rtsps://")
    if live:
        parts = [f"rtspsrc location={quote(location)} latency={int(latency_ms)}", depay]
    else:
        suffix = PurePath(location).suffix.lower()
        parts = [f"filesrc location={quote(location)}"]
        if suffix in DEMUXERS:
            parts.append(DEMUXERS[suffix])
        elif suffix not in ELEMENTARY:
            known = ", ".join([*DEMUXERS, *ELEMENTARY])
            raise ToolkitError(
                f"{location}: --decoder nvv4l2 cannot demux {suffix or 'files without a suffix'} ({known})"
            )
    index = flip_index(flip)
    convert = "nvvidconv" if index == 0 else f"nvvidconv flip-method={index}"
    parts += [parser, "queue", "nvv4l2decoder enable-max-performance=1", "video/x-raw(memory:NVMM)", convert]
    parts.append(", ".join(["video/x-raw", *_size_caps(width, height), "format=(string)BGRx"]))
    if framerate is not None:
        parts.append(f"videorate drop-only=true max-rate={int(framerate)}")
    parts += ["videoconvert", "video/x-raw, format=(string)BGR", _appsink(live)]
    return " ! ".join(parts)


def codec_from_name(location: str) -> str | None:
    """The codec an elementary-stream file name says (``clip.h265`` → ``h265``); None for containers and URLs."""
    if "://" in location:
        return None
    return ELEMENTARY.get(PurePath(location).suffix.lower())


def codec_from_fourcc(fourcc: str) -> str | None:
    """``avc1`` → ``h264``, ``hvc1`` → ``h265`` ... (the FOURCC OpenCV's FFmpeg reports); None otherwise."""
    return FOURCC_CODECS.get(fourcc.strip().lower())


def fourcc_text(value: float) -> str:
    """OpenCV's ``CAP_PROP_FOURCC`` (a little-endian int as float) as 4 characters."""
    code = int(value)
    return "".join(chr((code >> (8 * i)) & 0xFF) for i in range(4)).strip("\x00")
