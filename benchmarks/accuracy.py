"""Segment labelled images with any backend and score them against ground truth.

Why one module: ``eval``, ``demo`` and ``bench`` must produce the *same* number for the same
model and data, so they share this loop: the runtime's reference preprocessing, the backend's
``infer``, the runtime's ``labels_from_output`` (labels at the ground truth's resolution), and
:mod:`deeplab_trt.benchmarks.metrics` for the confusion matrix.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deeplab_trt.benchmarks.metrics import ConfusionMatrix
from deeplab_trt.runtime.errors import ToolkitError
from deeplab_trt.runtime.postprocess import labels_from_output
from deeplab_trt.runtime.preprocess import preprocess

#: one labelled sample: (name for messages, BGR uint8 image, uint8 labels of the same H×W)
Sample = tuple[str, np.ndarray, np.ndarray]


@dataclass
class EvalResult:
    confusion: ConfusionMatrix
    images: int
    infer_s: float
    total_s: float

    def summary(self, class_names) -> dict:
        out = self.confusion.summary(class_names)
        out["images"] = self.images
        out["ms_per_image"] = 1000.0 * self.total_s / max(self.images, 1)
        out["infer_ms_per_image"] = 1000.0 * self.infer_s / max(self.images, 1)
        return out


def segment(backend, frame: np.ndarray, policy: str = "stretch", batch: np.ndarray | None = None) -> np.ndarray:
    """Labels (frame's H×W) for one BGR frame; ``batch`` is a reusable input buffer."""
    spec = backend.spec
    if batch is None:
        batch = np.zeros((backend.fixed_batch or 1, 3, spec.input_height, spec.input_width), backend.input_dtype)
    _, geo = preprocess(frame, spec, policy, backend.input_dtype, out=batch[0])
    output = backend.infer(batch)
    return labels_from_output(output[0], spec, geo)


def check_labels(name: str, labels: np.ndarray, num_classes: int, ignore: int = 255) -> None:
    """Label values must be class indices of the model (or ``ignore``): else the data and model disagree."""
    top = int(labels.max()) if labels.size else 0
    if top >= num_classes:
        bad = np.unique(labels[(labels >= num_classes) & (labels != ignore)])
        if bad.size:
            raise ToolkitError(
                f"{name}: label values {bad[:5].tolist()} are not classes of this "
                f"{num_classes}-class model (use 255 for 'ignore')"
            )


def evaluate(
    backend, samples: Iterable[Sample], policy: str = "stretch", total: int | None = None, progress: bool = True
) -> EvalResult:
    from tqdm import tqdm

    spec = backend.spec
    cm = ConfusionMatrix(spec.num_classes)
    batch = np.zeros((backend.fixed_batch or 1, 3, spec.input_height, spec.input_width), backend.input_dtype)
    n = 0
    infer_s = 0.0
    start = time.perf_counter()
    for name, image, labels in tqdm(
        samples, total=total, desc="eval", unit="img", file=sys.stderr, disable=not progress, mininterval=1.0
    ):
        check_labels(name, labels, spec.num_classes)
        t0 = time.perf_counter()
        pred = segment(backend, image, policy, batch)
        infer_s += time.perf_counter() - t0
        cm.update(labels, pred)
        n += 1
    if n == 0:
        raise ToolkitError("no images to evaluate")
    return EvalResult(cm, n, infer_s, time.perf_counter() - start)


def synthetic_samples(num: int, seed: int, height: int, width: int) -> Iterator[Sample]:
    from deeplab_trt.benchmarks.scenes import SceneGenerator

    gen = SceneGenerator(height, width, seed=seed)
    for i in range(num):
        image, labels = gen.scene(i)
        yield f"synthetic scene {seed}:{i}", image, labels


def folder_samples(root: str | Path) -> tuple[int, Iterator[Sample]]:
    """(count, samples) from a :mod:`deeplab_trt.benchmarks.labelled_dir` folder; layout errors raise at once."""
    from deeplab_trt.benchmarks.labelled_dir import find_pairs, read_pair

    pairs = find_pairs(root)

    def gen() -> Iterator[Sample]:
        for img, lab in pairs:
            image, labels = read_pair(img, lab)
            yield str(lab), image, labels

    return len(pairs), gen()
