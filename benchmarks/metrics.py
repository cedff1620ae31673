"""Segmentation metrics: one implementation for training, eval, calibration accuracy and bench.

Everything goes through a confusion matrix ``cm[true, pred]`` accumulated with
``np.bincount`` (fast, exact integers, no per-class Python loop), so results over many
images are the exact dataset-level numbers rather than averages of per-image scores.

mIoU convention: a class absent from both ground truth and prediction over the whole
evaluation has no IoU (``nan``) and is left out of the mean; a class predicted but absent
from the ground truth scores 0. Label values at or above ``num_classes`` (e.g. 255 "ignore")
are skipped in the ground truth; predictions outside the range are an error.
"""

from __future__ import annotations

import numpy as np


class ConfusionMatrix:
    """Running ``num_classes × num_classes`` confusion matrix (rows: truth, cols: prediction)."""

    def __init__(self, num_classes: int):
        self.num_classes = int(num_classes)
        self.matrix = np.zeros((self.num_classes, self.num_classes), np.int64)

    def update(self, truth: np.ndarray, pred: np.ndarray) -> ConfusionMatrix:
        self.matrix += confusion_matrix(truth, pred, self.num_classes)
        return self

    def merge(self, other: ConfusionMatrix) -> ConfusionMatrix:
        self.matrix += other.matrix
        return self

    def iou(self) -> np.ndarray:
        return iou_from_confusion(self.matrix)

    def miou(self) -> float:
        return miou_from_confusion(self.matrix)

    def pixel_accuracy(self) -> float:
        return pixel_accuracy_from_confusion(self.matrix)

    def summary(self, class_names=None) -> dict:
        """JSON-ready dict: miou, pixel_accuracy, per_class_iou (name → IoU or None), pixels."""
        return summary_from_confusion(self.matrix, class_names)


def confusion_matrix(truth: np.ndarray, pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Confusion matrix of one label map pair (same shape, integer labels)."""
    truth = np.asarray(truth)
    pred = np.asarray(pred)
    if truth.shape != pred.shape:
        raise ValueError(f"label maps differ in shape: truth {truth.shape} vs prediction {pred.shape}")
    t = truth.ravel().astype(np.int64)
    p = pred.ravel().astype(np.int64)
    keep = (t >= 0) & (t < num_classes)
    t, p = t[keep], p[keep]
    if p.size and (p.min() < 0 or p.max() >= num_classes):
        raise ValueError(f"prediction labels outside 0..{num_classes - 1}")
    cm = np.bincount(t * num_classes + p, minlength=num_classes * num_classes)
    return cm.reshape(num_classes, num_classes).astype(np.int64)


def iou_from_confusion(cm: np.ndarray) -> np.ndarray:
    """Per-class IoU = TP / (TP + FP + FN); ``nan`` where the class is in neither truth nor prediction."""
    cm = np.asarray(cm, np.float64)
    tp = np.diag(cm)
    union = cm.sum(0) + cm.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / np.maximum(union, 1), np.nan)


def miou_from_confusion(cm: np.ndarray) -> float:
    iou = iou_from_confusion(cm)
    return float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")


def pixel_accuracy_from_confusion(cm: np.ndarray) -> float:
    total = cm.sum()
    return float(np.trace(cm) / total) if total else float("nan")


def summary_from_confusion(cm: np.ndarray, class_names=None) -> dict:
    n = cm.shape[0]
    names = list(class_names) if class_names is not None else [str(i) for i in range(n)]
    if len(names) < n:
        names += [str(i) for i in range(len(names), n)]
    iou = iou_from_confusion(cm)
    return {
        "miou": miou_from_confusion(cm),
        "pixel_accuracy": pixel_accuracy_from_confusion(cm),
        "per_class_iou": {names[i]: (None if np.isnan(iou[i]) else float(iou[i])) for i in range(n)},
        "pixels": int(cm.sum()),
    }


def miou(truth: np.ndarray, pred: np.ndarray, num_classes: int) -> float:
    """mIoU of one pair of label maps."""
    return miou_from_confusion(confusion_matrix(truth, pred, num_classes))


def pixel_accuracy(truth: np.ndarray, pred: np.ndarray) -> float:
    truth = np.asarray(truth)
    pred = np.asarray(pred)
    if truth.shape != pred.shape:
        raise ValueError(f"label maps differ in shape: {truth.shape} vs {pred.shape}")
    return float((truth == pred).mean()) if truth.size else float("nan")


def label_agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Fraction of pixels where two label maps (e.g. FP32 vs INT8 predictions) agree."""
    return pixel_accuracy(a, b)
