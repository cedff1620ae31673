"""``deeplab-trt demo`` end to end with a few frames (ONNX Runtime here; TensorRT where a GPU is)."""

from __future__ import annotations

import json
import shutil

import cv2
import pytest

from deeplab_trt.benchmarks import demo_command
from deeplab_trt.builder.models import DEMO_PATH
from deeplab_trt.cli import main

pytestmark = pytest.mark.skipif(not DEMO_PATH.exists(), reason=f"{DEMO_PATH} not trained yet")


@pytest.fixture
def cache(tmp_path, demo_onnx, monkeypatch):
    """A cache that already holds the export under the demo's own key (the cache-hit path, no re-export)."""
    root = tmp_path / "cache"
    monkeypatch.setenv(demo_command.CACHE_ENV, str(root))
    key_path = demo_command.cached_onnx_name(root)
    key_path.parent.mkdir(parents=True)
    shutil.copyfile(demo_onnx, key_path)
    return root


def test_demo_end_to_end(tmp_path, cache, capsys):
    out = tmp_path / "demo.avi"
    report = tmp_path / "demo.json"
    rc = main(
        [
            "demo",
            "--output",
            str(out),
            "--frames",
            "6",
            "--backend",
            "onnxruntime",
            "--json",
            str(report),
            "--no-progress",
        ]
    )
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "FPS" in text and "mIoU vs ground truth" in text
    cap = cv2.VideoCapture(str(out))
    frames = 0
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames += 1
        assert frame.shape[:2] == (256, 512)
    assert frames == 6
    data = json.loads(report.read_text())
    assert data["frames"] == 6 and data["fps"] > 0
    assert data["accuracy"]["miou"] > 0.6  # a trained model on its own kind of street (6 frames: loose)
    assert not [p for p in tmp_path.rglob(".*") if p.is_file()], "temporary files left behind"


def test_demo_bad_output(tmp_path, capsys):
    rc = main(["demo", "--output", str(tmp_path / "x.gif"), "--frames", "2"])
    err = capsys.readouterr().err
    assert rc != 0 and "x.gif" in err and "Traceback" not in err
    assert not (tmp_path / "x.gif").exists()
