"""The on-disk layout of labelled images, shared by ``deeplab-trt scenes`` (writer) and ``eval`` (reader).

Layout::

    DIR/images/NAME.png   (or .jpg / .jpeg / .bmp): the picture, any size, BGR/RGB as usual
    DIR/labels/NAME.png   8-bit single-channel PNG, same width and height, pixel = class index
                          (255 = ignore: left out of every metric)
    DIR/classes.json      optional: {"classes": [...], "palette": [[r, g, b], ...]}

Why PNG labels: lossless and readable by every tool; JPEG would change class indices at edges.
Images and labels pair by NAME (the file stem); an image without a label file is an error,
not a silent skip, because a silently smaller evaluation is a wrong number.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import cv2
import numpy as np

from deeplab_trt.runtime.atomic import atomic_path
from deeplab_trt.runtime.errors import ToolkitError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
IGNORE_LABEL = 255
CLASSES_FILE = "classes.json"
#: Folders that hold label PNGs, not pictures: ``labels/`` here, ``video_labels/`` from ``scenes --video``.
LABEL_DIRS = ("labels", "video_labels")


def write_png(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        if not cv2.imwrite(str(tmp), array):
            raise ToolkitError(f"{path}: OpenCV could not write the PNG")


def write_pair(root: Path, name: str, image: np.ndarray, labels: np.ndarray) -> None:
    write_png(root / "images" / f"{name}.png", image)
    write_png(root / "labels" / f"{name}.png", labels.astype(np.uint8))


def write_classes(root: Path, classes, palette) -> None:
    text = json.dumps({"classes": list(classes), "palette": [list(p) for p in palette]}, indent=1)
    with atomic_path(root / CLASSES_FILE) as tmp:
        tmp.write_text(text + "\n")


def is_label_file(path: Path) -> bool:
    """True for a label PNG inside a labelled folder: data readers must not take it for a picture."""
    return path.parent.name.lower() in LABEL_DIRS


def label_path_for(image: Path) -> Path | None:
    """``DIR/labels/NAME.png`` for an image at ``DIR/images/NAME.*`` when that file exists, else None
    (an image outside the layout, or one without ground truth)."""
    if image.parent.name.lower() != "images":
        return None
    label = image.parent.parent / "labels" / f"{image.stem}.png"
    return label if label.is_file() else None


def read_classes(root: str | Path) -> list[str] | None:
    """The class names in ``root/classes.json``; None when there is none, it lists no classes, or it
    is unreadable (a warning: class names only label the numbers, so they are never fatal)."""
    meta = Path(root) / CLASSES_FILE
    if not meta.is_file():
        return None
    try:
        return list(json.loads(meta.read_text()).get("classes") or []) or None
    except (ValueError, AttributeError, OSError):
        log.warning("%s: unreadable, ignored", meta)
        return None


def find_pairs(root: str | Path) -> list[tuple[Path, Path]]:
    """(image, label) paths under ``root`` in the layout above, sorted by name."""
    root = Path(root)
    if not root.exists():
        raise ToolkitError(f"{root}: no such directory")
    if not root.is_dir():
        raise ToolkitError(f"{root}: not a directory (expected DIR/images/*.png and DIR/labels/*.png)")
    images_dir, labels_dir = root / "images", root / "labels"
    if not images_dir.is_dir() or not labels_dir.is_dir():
        raise ToolkitError(f"{root}: expected subdirectories images/ and labels/ (label PNGs named like the images)")
    images = sorted(p for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not images:
        raise ToolkitError(f"{images_dir}: no images ({', '.join(IMAGE_SUFFIXES)})")
    pairs = []
    for img in images:
        lab = labels_dir / f"{img.stem}.png"
        if not lab.is_file():
            raise ToolkitError(f"{img}: no label file {lab}")
        pairs.append((img, lab))
    return pairs


def read_pair(image_path: Path, label_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """BGR uint8 image and H×W uint8 labels, with one-line errors for unreadable or mismatched files."""
    image = cv2.imread(str(image_path), cv2.IMREAD_COLOR)
    if image is None:
        raise ToolkitError(f"{image_path}: not a readable image")
    labels = cv2.imread(str(label_path), cv2.IMREAD_UNCHANGED)
    if labels is None:
        raise ToolkitError(f"{label_path}: not a readable label PNG")
    if labels.ndim == 3:
        if labels.shape[2] >= 3 and not (
            np.array_equal(labels[..., 0], labels[..., 1]) and np.array_equal(labels[..., 1], labels[..., 2])
        ):
            raise ToolkitError(f"{label_path}: colour label image; expected single-channel class indices")
        labels = labels[..., 0]
    if labels.dtype != np.uint8:
        raise ToolkitError(f"{label_path}: {labels.dtype} labels; expected an 8-bit PNG of class indices")
    if labels.shape != image.shape[:2]:
        raise ToolkitError(
            f"{label_path}: label size {labels.shape[1]}x{labels.shape[0]} does not match its "
            f"image {image_path.name} ({image.shape[1]}x{image.shape[0]})"
        )
    return image, labels
