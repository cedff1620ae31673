"""Synthetic street scenes: determinism, label/image consistency, video motion, the ``scenes`` command."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from deeplab_trt.benchmarks.scenes import CLASSES, PALETTE, PERSON, SKY, VEHICLE, SceneGenerator, render_video
from deeplab_trt.cli import main

H, W = 128, 256


@pytest.fixture(scope="module")
def gen():
    return SceneGenerator(H, W, seed=3)


def test_same_seed_same_arrays(gen):
    other = SceneGenerator(H, W, seed=3)
    for i in (0, 5):
        a_img, a_lab = gen.scene(i)
        b_img, b_lab = other.scene(i)
        assert np.array_equal(a_img, b_img) and np.array_equal(a_lab, b_lab)
    # independent of call order
    later = other.scene(5)
    assert np.array_equal(gen.scene(5)[0], later[0])


def test_different_seed_or_index_differs(gen):
    img0, lab0 = gen.scene(0)
    img1, lab1 = gen.scene(1)
    img2, lab2 = SceneGenerator(H, W, seed=4).scene(0)
    assert not np.array_equal(img0, img1) and not np.array_equal(lab0, lab1)
    assert not np.array_equal(img0, img2) and not np.array_equal(lab0, lab2)


def test_types_shapes_and_label_range(gen):
    for img, lab in gen.scenes(4):
        assert img.shape == (H, W, 3) and img.dtype == np.uint8
        assert lab.shape == (H, W) and lab.dtype == np.uint8
        assert lab.max() < len(CLASSES)
    assert len(PALETTE) == len(CLASSES) >= 5
    assert all(len(c) == 3 and all(0 <= v <= 255 for v in c) for c in PALETTE)


def test_every_class_appears_over_a_few_scenes(gen):
    seen = np.zeros(len(CLASSES), bool)
    for _, lab in gen.scenes(12):
        seen |= np.bincount(lab.ravel(), minlength=len(CLASSES)) > 0
    assert seen.all(), [c for c, s in zip(CLASSES, seen) if not s]


def test_labels_follow_the_picture(gen):
    """Sky sits above the road; pixels of one class are not one flat colour (texture, lighting)."""
    for img, lab in gen.scenes(6):
        sky_rows = np.nonzero((lab == SKY).any(axis=1))[0]
        road_rows = np.nonzero((lab == 1).any(axis=1))[0]
        if sky_rows.size and road_rows.size:
            assert np.median(sky_rows) < np.median(road_rows)
        grey = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY).astype(np.float32)
        for cls in np.unique(lab):
            if (lab == cls).sum() > 200:
                assert grey[lab == cls].std() > 1.0


def test_class_colours_overlap():
    """No class is identifiable by its mean colour alone: per-scene class means vary a lot."""
    means = {c: [] for c in range(len(CLASSES))}
    g = SceneGenerator(64, 128, seed=11)
    for img, lab in g.scenes(16):
        for c in np.unique(lab):
            means[int(c)].append(img[lab == c].mean(axis=0))
    spread = [np.std(np.asarray(m), axis=0).mean() for m in means.values() if len(m) > 3]
    assert min(spread) > 5.0


def test_video_objects_move():
    frames = render_video(seed=5, n_frames=6, size=(H, W))
    assert len(frames) == 6
    (f0, l0), (f5, l5) = frames[0], frames[5]
    moving = np.isin(l0, (VEHICLE, PERSON)) | np.isin(l5, (VEHICLE, PERSON))
    assert moving.any()
    assert not np.array_equal(l0, l5), "vehicles/people should move between frames"
    static = ~moving
    # the static street stays put (labels), only moving things change
    assert (l0[static] == l5[static]).mean() > 0.99
    assert not np.array_equal(f0, f5)
    again = render_video(seed=5, n_frames=6, size=(H, W))
    assert all(np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) for a, b in zip(frames, again))


def test_video_first_frame_is_the_scene():
    g = SceneGenerator(H, W, seed=8)
    frame0, lab0 = next(g.video_frames(1, index=2))
    assert np.array_equal(lab0, g.scene(2)[1])


def test_scenes_command_writes_the_layout(tmp_path, capsys):
    out = tmp_path / "data"
    rc = main(
        [
            "scenes",
            str(out),
            "--num",
            "3",
            "--seed",
            "7",
            "--height",
            "64",
            "--width",
            "96",
            "--video",
            str(tmp_path / "v.avi"),
            "--frames",
            "4",
        ]
    )
    assert rc == 0
    images = sorted((out / "images").glob("*.png"))
    labels = sorted((out / "labels").glob("*.png"))
    assert [p.name for p in images] == [p.name for p in labels] and len(images) == 3
    g = SceneGenerator(64, 96, seed=7)
    img, lab = g.scene(0)
    assert np.array_equal(cv2.imread(str(images[0])), img)
    assert np.array_equal(cv2.imread(str(labels[0]), cv2.IMREAD_UNCHANGED), lab)
    meta = json.loads((out / "classes.json").read_text())
    assert meta["classes"] == list(CLASSES)
    cap = cv2.VideoCapture(str(tmp_path / "v.avi"))
    n = 0
    while cap.read()[0]:
        n += 1
    assert n == 4
    assert len(list((out / "video_labels").glob("*.png"))) == 4
    assert not [p for p in tmp_path.rglob(".*") if p.is_file()], "temporary files left behind"


def test_scenes_command_bad_output(tmp_path, capsys):
    target = tmp_path / "file.txt"
    target.write_text("x")
    rc = main(["scenes", str(target), "--num", "1"])
    err = capsys.readouterr().err
    assert rc != 0 and "file.txt" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
