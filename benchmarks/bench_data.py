"""The frames ``bench`` measures with: read from ``--data`` (with ground truth where the
folder has it), split into calibration and fidelity sets, or synthesised; and the calibration
set written to disk for the quantiser.

Data rule (one rule, tested): ``--data`` frames are split alternately (item 0, 2, 4 …
calibrate; 1, 3, 5 … are the fidelity frames), so the two sets never share a frame. Without
``--data`` the fidelity frames are synthetic street scenes from held-out seeds
(:mod:`deeplab_trt.benchmarks.scenes`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from deeplab_trt.benchmarks.labelled_dir import is_label_file, label_path_for, read_classes, read_pair
from deeplab_trt.runtime.atomic import atomic_path
from deeplab_trt.runtime.errors import ToolkitError
from deeplab_trt.runtime.spec import ModelSpec

#: Synthetic fidelity scenes: a seed inside the scenes' held-out range, apart from eval's.
FIDELITY_SEED = 10_000_000 + 4242


@dataclass
class Frame:
    """A frame for fidelity / calibration: BGR uint8, optional ground-truth labels, where it came from."""

    image: np.ndarray
    labels: np.ndarray | None
    source: str
    classes: list[str] | None = None  # the label values' class names, when the data says


def _label_for(image: Path) -> tuple[np.ndarray | None, list[str] | None]:
    """Ground truth for ``image`` in the labelled-folder layout (:mod:`deeplab_trt.benchmarks.labelled_dir`),
    with the folder's class names; (None, None) when the image has no label file."""
    label = label_path_for(image)
    if label is None:
        return None, None
    return read_pair(image, label)[1], read_classes(image.parent.parent)


def read_data_frames(paths: Iterable[str], limit: int, seed: int = 0) -> list[Frame]:
    """Up to ``limit`` frames (seeded subset, file order) from images, videos, folders and globs,
    found and decoded by the calibration package (so bench and calibrate read data alike)."""
    from deeplab_trt.calibration.data import discover, read_frames, select

    refs = [r for r in discover(list(paths)) if r.index is not None or not is_label_file(r.path)]
    if not refs:
        raise ToolkitError(f"{next(iter(paths), '--data')}: no frames besides label images")
    frames: list[Frame] = []
    for ref, img in read_frames(select(refs, limit, seed)):
        lab, classes = _label_for(ref.path) if ref.index is None else (None, None)
        frames.append(Frame(img, lab, str(ref), classes))
    return frames


def split_data(frames: list[Frame], calibration: int, fidelity: int) -> tuple[list[Frame], list[Frame]]:
    """Alternate items: even → calibration, odd → fidelity; disjoint by construction."""
    cal = frames[0::2][:calibration]
    fid = frames[1::2][:fidelity]
    return cal, fid


def synthetic_frames(spec: ModelSpec, n: int) -> list[Frame]:
    from deeplab_trt.benchmarks.scenes import SceneGenerator

    gen = SceneGenerator(spec.input_height, spec.input_width, seed=FIDELITY_SEED)
    return [Frame(img, lab, f"scene:{FIDELITY_SEED}/{i}") for i, (img, lab) in enumerate(gen.scenes(n))]


def write_calibration_frames(frames: list[Frame], cache_dir: Path) -> tuple[Path, str]:
    """Calibration frames → PNG folder named by their content hash (lossless: same pixels)."""
    h = hashlib.sha256()
    for f in frames:
        h.update(str(f.image.shape).encode())
        h.update(np.ascontiguousarray(f.image).tobytes())
    digest = h.hexdigest()[:16]
    folder = cache_dir / f"calibration-{digest}"
    if not (folder / ".complete").exists():
        folder.mkdir(parents=True, exist_ok=True)
        for i, f in enumerate(frames):
            with atomic_path(folder / f"{i:05d}.png") as tmp:
                if not cv2.imwrite(str(tmp), f.image):
                    raise ToolkitError(f"{folder}: cannot write calibration frame {i}")
        with atomic_path(folder / ".complete", suffix=".tmp") as tmp:
            tmp.write_text(json.dumps([f.source for f in frames]))
    return folder, digest
