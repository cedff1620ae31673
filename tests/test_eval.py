"""Metrics, the ``eval`` command, and the demo model's accuracy on held-out scenes."""

from __future__ import annotations

import json
import math

import cv2
import numpy as np
import pytest

from deeplab_trt.benchmarks.labelled_dir import write_pair
from deeplab_trt.benchmarks.metrics import ConfusionMatrix, confusion_matrix, label_agreement, miou
from deeplab_trt.benchmarks.scenes import CLASSES, HELDOUT_SEED_BASE, SceneGenerator
from deeplab_trt.builder.models import DEMO_PATH
from deeplab_trt.cli import main

needs_demo = pytest.mark.skipif(not DEMO_PATH.exists(), reason=f"{DEMO_PATH} not trained yet")


# ----- metrics ---------------------------------------------------------------------------------
def test_confusion_and_iou_by_hand():
    truth = np.array([[0, 0, 1, 1], [2, 2, 255, 1]])
    pred = np.array([[0, 1, 1, 1], [2, 0, 3, 1]])
    cm = ConfusionMatrix(4).update(truth, pred)
    assert cm.matrix.tolist() == [[1, 1, 0, 0], [0, 3, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]]
    s = cm.summary(["a", "b", "c", "d"])
    # a: tp 1, fp 1, fn 1 → 1/3; b: 3/4; c: 1/2; d absent from both → excluded
    assert s["per_class_iou"] == pytest.approx({"a": 1 / 3, "b": 0.75, "c": 0.5, "d": None})
    assert s["miou"] == pytest.approx((1 / 3 + 0.75 + 0.5) / 3)
    assert s["pixel_accuracy"] == pytest.approx(5 / 7)  # the 255 pixel is ignored
    assert s["pixels"] == 7


def test_predicted_but_absent_class_scores_zero():
    truth = np.zeros((2, 2), np.uint8)
    pred = np.array([[0, 0], [0, 1]])
    assert miou(truth, pred, 3) == pytest.approx((0.75 + 0.0) / 2)


def test_accumulation_equals_one_big_matrix():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 5, (3, 20, 30))
    b = rng.integers(0, 5, (3, 20, 30))
    cm = ConfusionMatrix(5)
    for x, y in zip(a, b):
        cm.update(x, y)
    assert np.array_equal(cm.matrix, confusion_matrix(a, b, 5))
    assert label_agreement(a, a) == 1.0 and math.isclose(label_agreement(a, b), (a == b).mean())


def test_shape_mismatch_and_bad_predictions_raise():
    with pytest.raises(ValueError):
        confusion_matrix(np.zeros((2, 2)), np.zeros((2, 3)), 2)
    with pytest.raises(ValueError):
        confusion_matrix(np.zeros((2, 2)), np.full((2, 2), 7), 2)


# ----- eval command ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_model(onnx_factory):
    """The suite's shared small random model (5 classes): the command's plumbing, not accuracy."""
    return onnx_factory()


def _folder(tmp_path, n=3, h=48, w=80, jpg_first=False):
    root = tmp_path / "data"
    gen = SceneGenerator(h, w, seed=HELDOUT_SEED_BASE + 1)
    for i in range(n):
        img, lab = gen.scene(i)
        write_pair(root, f"img{i}", img, np.minimum(lab, 4))  # the 5 classes of the small model
    if jpg_first:
        src = root / "images" / "img0.png"
        cv2.imwrite(str(root / "images" / "img0.jpg"), cv2.imread(str(src)))
        src.unlink()
    return root


def test_eval_on_a_labelled_folder(tmp_path, small_model, capsys):
    root = _folder(tmp_path, jpg_first=True)
    out = tmp_path / "m.json"
    rc = main(["eval", str(small_model), "--data", str(root), "--json", str(out), "--no-progress"])
    assert rc == 0
    report = json.loads(out.read_text())
    assert report["images"] == 3 and len(report["per_class_iou"]) == 5
    assert 0.0 <= report["miou"] <= 1.0 and 0.0 <= report["pixel_accuracy"] <= 1.0
    assert report["pixels"] == 3 * 48 * 80
    assert "mIoU" in capsys.readouterr().out


@needs_demo
def test_eval_synthetic_letterbox(tmp_path, demo_onnx):
    out = tmp_path / "s.json"
    rc = main(
        [
            "eval",
            str(demo_onnx),
            "--synthetic",
            "2",
            "--height",
            "40",
            "--width",
            "100",
            "--policy",
            "letterbox",
            "--json",
            str(out),
            "--no-progress",
        ]
    )
    assert rc == 0
    report = json.loads(out.read_text())
    assert report["synthetic"] == 2 and report["pixels"] == 2 * 40 * 100 and report["policy"] == "letterbox"
    assert set(report["per_class_iou"]) == set(CLASSES)


def _fails(capsys, argv, needle):
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc != 0
    assert needle in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def test_eval_bad_inputs(tmp_path, small_model, capsys):
    out = tmp_path / "bad.json"
    # label size differs from its image
    root = _folder(tmp_path)
    cv2.imwrite(str(root / "labels" / "img1.png"), np.zeros((10, 10), np.uint8))
    _fails(capsys, ["eval", str(small_model), "--data", str(root), "--json", str(out), "--no-progress"], "img1.png")
    # image without a label
    root2 = tmp_path / "nolabel"
    write_pair(root2, "a", np.zeros((20, 20, 3), np.uint8), np.zeros((20, 20), np.uint8))
    cv2.imwrite(str(root2 / "images" / "b.png"), np.zeros((20, 20, 3), np.uint8))
    _fails(capsys, ["eval", str(small_model), "--data", str(root2), "--no-progress"], "b.png")
    # empty folder, missing folder, label values the model does not have
    empty = tmp_path / "empty"
    (empty / "images").mkdir(parents=True)
    (empty / "labels").mkdir()
    _fails(capsys, ["eval", str(small_model), "--data", str(empty), "--no-progress"], "images")
    _fails(capsys, ["eval", str(small_model), "--data", str(tmp_path / "nope"), "--no-progress"], "nope")
    root3 = tmp_path / "badvalues"
    write_pair(root3, "a", np.zeros((20, 20, 3), np.uint8), np.full((20, 20), 9, np.uint8))
    _fails(capsys, ["eval", str(small_model), "--data", str(root3), "--no-progress"], "a.png")
    # synthetic scenes have 7 classes, this model 5
    _fails(capsys, ["eval", str(small_model), "--synthetic", "1", "--no-progress"], "5-class model")
    # model file problems
    _fails(capsys, ["eval", str(tmp_path / "missing.onnx"), "--synthetic", "1"], "missing.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    _fails(capsys, ["eval", str(junk), "--synthetic", "1"], "junk.onnx")
    assert not out.exists()
    assert not [p for p in tmp_path.rglob(".*") if p.is_file()], "temporary files left behind"


# ----- the demo model --------------------------------------------------------------------------
@needs_demo
def test_demo_model_heldout_miou(demo_onnx):
    """The issue's bar, mIoU >= 0.85, on the 32 held-out scenes (seed 10000000, never trained on).

    Run through the exported ONNX and the runtime's preprocessing, this reproduces the
    checkpoint's ``train.heldout_miou`` (0.867); smaller samples spread 0.842-0.868 (person,
    the smallest class, moves most), so the test uses the whole held-out set (~1.5 s).
    """
    from deeplab_trt.benchmarks.accuracy import evaluate, synthetic_samples
    from deeplab_trt.runtime.backends import open_backend

    with open_backend(demo_onnx) as backend:
        h, w = backend.spec.input_size
        assert backend.spec.classes == list(CLASSES)
        result = evaluate(backend, synthetic_samples(32, HELDOUT_SEED_BASE, h, w), progress=False)
    assert result.confusion.miou() >= 0.85, result.summary(CLASSES)
