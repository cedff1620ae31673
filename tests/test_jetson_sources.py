"""Jetson sources for ``run``: the GStreamer pipeline strings (exactly), and the no-GStreamer error.

Why exact strings: no machine that runs these tests has nvarguscamerasrc, NVDEC or an OpenCV built
with GStreamer (pip's opencv-python-headless is built without it), so the string is the contract
the tests can hold; each was written from jetson-utils' gstCamera/gstDecoder chains.
"""

from __future__ import annotations

import cv2
import pytest
from video_helpers import write_video

from deeplab_trt.cli import build_parser
from deeplab_trt.cli import main as cli_main
from deeplab_trt.runtime import video
from deeplab_trt.runtime.errors import ToolkitError
from deeplab_trt.runtime.gst_pipelines import (
    codec_from_fourcc,
    codec_from_name,
    csi_pipeline,
    fourcc_text,
    nvv4l2_decode_pipeline,
    quote,
    v4l2_pipeline,
)

BGR = "nvvidconv ! video/x-raw, format=(string)BGRx ! videoconvert ! video/x-raw, format=(string)BGR"
DEC = "queue ! nvv4l2decoder enable-max-performance=1 ! video/x-raw(memory:NVMM) ! "


# ---------------------------------------------------------------------------------------------
# pure pipeline strings
# ---------------------------------------------------------------------------------------------
def test_csi_defaults_and_options():
    assert csi_pipeline(0) == (
        "nvarguscamerasrc sensor-id=0 ! video/x-raw(memory:NVMM), width=(int)1280, height=(int)720, "
        "framerate=(fraction)30/1, format=(string)NV12 ! nvvidconv flip-method=0 ! "
        "video/x-raw, format=(string)BGRx ! videoconvert ! video/x-raw, format=(string)BGR ! "
        "appsink sync=false drop=true max-buffers=1"
    )
    assert csi_pipeline(1, width=1920, height=1080, framerate=60, flip="rotate-180") == (
        "nvarguscamerasrc sensor-id=1 ! video/x-raw(memory:NVMM), width=(int)1920, height=(int)1080, "
        "framerate=(fraction)60/1, format=(string)NV12 ! nvvidconv flip-method=2 ! "
        "video/x-raw, format=(string)BGRx ! videoconvert ! video/x-raw, format=(string)BGR ! "
        "appsink sync=false drop=true max-buffers=1"
    )


def test_v4l2_plain_and_with_caps_and_flip():
    assert v4l2_pipeline("/dev/video0") == (
        'v4l2src device="/dev/video0" do-timestamp=true ! videoconvert ! video/x-raw, format=(string)BGR ! '
        "appsink sync=false drop=true max-buffers=1"
    )
    assert v4l2_pipeline("/dev/video2", width=640, height=480, framerate=15, flip="horizontal-flip") == (
        'v4l2src device="/dev/video2" do-timestamp=true ! '
        "video/x-raw, width=(int)640, height=(int)480, framerate=(fraction)15/1 ! "
        "videoflip method=horizontal-flip ! videoconvert ! video/x-raw, format=(string)BGR ! "
        "appsink sync=false drop=true max-buffers=1"
    )


@pytest.mark.parametrize(
    "location, codec, head",
    [
        ("/v/clip.h264", "h264", 'filesrc location="/v/clip.h264" ! h264parse ! '),
        ("/v/clip.h265", "h265", 'filesrc location="/v/clip.h265" ! h265parse ! '),
        ("/v/street.mp4", "h264", 'filesrc location="/v/street.mp4" ! qtdemux ! h264parse ! '),
        ("/v/street.MKV", "h265", 'filesrc location="/v/street.MKV" ! matroskademux ! h265parse ! '),
        (
            "rtsp://cam.local:8554/live?a=1&b=2",
            "h264",
            'rtspsrc location="rtsp://cam.local:8554/live?a=1&b=2" latency=200 ! rtph264depay ! h264parse ! ',
        ),
        ("rtsp://cam/h265", "h265", 'rtspsrc location="rtsp://cam/h265" latency=200 ! rtph265depay ! h265parse ! '),
    ],
)
def test_nvv4l2_decode_files_and_rtsp(location, codec, head):
    sink = "appsink sync=false drop=true max-buffers=1" if location.startswith("rtsp") else "appsink sync=false"
    assert nvv4l2_decode_pipeline(location, codec=codec) == f"{head}{DEC}{BGR} ! {sink}"


def test_nvv4l2_decode_scale_flip_rate_latency_and_quoting():
    got = nvv4l2_decode_pipeline(
        'my "clips"/a b.mp4', codec="h264", width=960, height=540, framerate=10, flip="clockwise"
    )
    assert got == (
        'filesrc location="my \\"clips\\"/a b.mp4" ! qtdemux ! h264parse ! ' + DEC + "nvvidconv flip-method=3 ! "
        "video/x-raw, width=(int)960, height=(int)540, format=(string)BGRx ! "
        "videorate drop-only=true max-rate=10 ! videoconvert ! video/x-raw, format=(string)BGR ! appsink sync=false"
    )
    assert "latency=2000 !" in nvv4l2_decode_pipeline("rtsp://x/y", codec="h264", latency_ms=2000)
    assert quote("a\\b") == '"a\\\\b"'


def test_bad_options_are_one_line_errors():
    with pytest.raises(ToolkitError, match=r"--flip sideways: unknown flip method"):
        csi_pipeline(0, flip="sideways")
    with pytest.raises(ToolkitError, match="give both height and width"):
        csi_pipeline(0, width=640)
    with pytest.raises(ToolkitError, match=r"clip\.vob: --decoder nvv4l2 cannot demux \.vob"):
        nvv4l2_decode_pipeline("clip.vob", codec="h264")
    with pytest.raises(ToolkitError, match="handles h264 and h265, not vp9"):
        nvv4l2_decode_pipeline("clip.mp4", codec="vp9")


def test_codec_by_name_and_fourcc():
    assert codec_from_name("a/b.264") == "h264" and codec_from_name("x.HEVC") == "h265"
    assert codec_from_name("x.mp4") is None and codec_from_name("rtsp://h/a.h264") is None
    assert codec_from_fourcc("avc1") == "h264" and codec_from_fourcc("hvc1") == "h265"
    assert codec_from_fourcc("mp4v") is None
    assert fourcc_text(cv2.VideoWriter.fourcc(*"hev1")) == "hev1"


# ---------------------------------------------------------------------------------------------
# open_source: which sources become pipelines, the no-GStreamer error, the hand-off to OpenCV
# ---------------------------------------------------------------------------------------------
def test_pipeline_for_sources(tmp_path):
    clip = write_video(tmp_path / "c.mp4", 2, (64, 48))
    elementary = tmp_path / "raw.h265"
    elementary.write_bytes(b"\0\0\0\1")
    assert video.gstreamer_pipeline_for("csi://1", flip="rotate-180") == csi_pipeline(1, flip="rotate-180")
    assert video.gstreamer_pipeline_for("v4l2:///dev/video3") == v4l2_pipeline("/dev/video3")
    assert video.gstreamer_pipeline_for("v4l2://1", width=320, height=240) == v4l2_pipeline(
        "/dev/video1", width=320, height=240
    )
    assert video.gstreamer_pipeline_for(str(elementary), decoder="nvv4l2") == nvv4l2_decode_pipeline(
        str(elementary), codec="h265"
    )
    assert video.gstreamer_pipeline_for("rtsp://cam/s", decoder="nvv4l2", codec="h265") == nvv4l2_decode_pipeline(
        "rtsp://cam/s", codec="h265"
    )
    # Sources OpenCV opens itself stay as they were.
    for plain in (str(clip), "0", "/dev/video0", "rtsp://cam/s", "http://h/v.mp4", "videotestsrc ! appsink"):
        assert video.gstreamer_pipeline_for(plain) is None
    assert video.classify_source("csi://0") == "csi" and video.classify_source("v4l2:///dev/video0") == "v4l2"


def test_pipeline_for_rejects_what_does_not_fit(tmp_path):
    clip = write_video(tmp_path / "mpeg4.mp4", 2, (64, 48))  # mp4v: MPEG-4 part 2, FFmpeg tags it FMP4
    with pytest.raises(ToolkitError, match=r"mpeg4\.mp4: its codec is 'FMP4'; --decoder nvv4l2 decodes h264"):
        video.gstreamer_pipeline_for(str(clip), decoder="nvv4l2")
    assert "qtdemux ! h264parse" in video.gstreamer_pipeline_for(str(clip), decoder="nvv4l2", codec="h264")
    with pytest.raises(ToolkitError, match="decodes video files and rtsp:// streams, not a camera source"):
        video.gstreamer_pipeline_for("0", decoder="nvv4l2")
    with pytest.raises(ToolkitError, match=r"absent\.mp4: no such file"):
        video.gstreamer_pipeline_for(str(tmp_path / "absent.mp4"), decoder="nvv4l2")
    with pytest.raises(ToolkitError, match="flip applies to csi://, v4l2:// and --decoder nvv4l2 sources only"):
        video.gstreamer_pipeline_for(str(clip), flip="rotate-180")
    with pytest.raises(ToolkitError, match="expected csi://N"):
        video.gstreamer_pipeline_for("csi://front")
    with pytest.raises(ToolkitError, match="--decoder nvdec: unknown decoder"):
        video.gstreamer_pipeline_for(str(clip), decoder="nvdec")


@pytest.mark.parametrize("src", ["csi://0", "v4l2:///dev/video0", "videotestsrc ! videoconvert ! appsink"])
def test_no_gstreamer_is_one_clear_error(monkeypatch, src):
    monkeypatch.setattr(video, "_has_gstreamer", lambda: False)
    with pytest.raises(ToolkitError) as info:
        video.open_source(src)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{src}: needs an OpenCV built with GStreamer")
    assert "opencv-python-headless" in message and "python3-opencv" in message and "system-site-packages" in message


def test_no_gstreamer_error_from_the_cli(onnx_factory, tmp_path, capsys):
    """The CLI path on the real OpenCV here (pip's headless: no GStreamer): one line, nothing written."""
    if video._has_gstreamer():
        pytest.skip("this OpenCV has GStreamer")
    clip = write_video(tmp_path / "c.mp4", 2, (64, 48))
    out = tmp_path / "out"
    out.mkdir()
    argv = ["run", str(onnx_factory(head="lowres")), "-s", str(clip), "--decoder", "nvv4l2", "--codec", "h264"]
    assert cli_main([*argv, "-o", str(out / "x.mp4"), "--no-progress"]) != 0
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and f"{clip}: needs an OpenCV built with GStreamer" in lines[0]
    assert list(out.iterdir()) == []


def test_open_source_hands_the_pipeline_to_opencv_gstreamer(monkeypatch):
    """With GStreamer present, the built string goes to cv2.VideoCapture(..., CAP_GSTREAMER) as is."""
    calls = []

    class Closed:
        def __init__(self, *args):
            calls.append(args)

        def isOpened(self):
            return False

    monkeypatch.setattr(video, "_has_gstreamer", lambda: True)
    monkeypatch.setattr(video.cv2, "VideoCapture", Closed)
    with pytest.raises(ToolkitError, match=r"^csi://0: GStreamer could not start the pipeline 'nvarguscamerasrc"):
        video.open_source("csi://0", width=640, height=480)
    assert calls == [(csi_pipeline(0, width=640, height=480), cv2.CAP_GSTREAMER)]


def test_run_help_documents_decoder_choices(capsys):
    parser = build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--decoder {cpu,nvv4l2}" in text and "nvv4l2decoder" in text and "csi://N" in text
    assert "--codec {auto,h264,h265}" in text and "--flip" in text and "--source-size HxW" in text
    args = parser.parse_args(["run", "m.onnx", "-s", "csi://0", "--source-size", "1080x1920", "--source-fps", "60"])
    from deeplab_trt.runtime.run_command import source_options

    assert source_options(args) == {
        "decoder": "cpu",
        "codec": "auto",
        "width": 1920,
        "height": 1080,
        "framerate": 60,
        "flip": "none",
    }
