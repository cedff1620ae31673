"""Synthetic test videos shared by the CPU and GPU pipeline tests (written with OpenCV, as users' files are)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np


def synthetic_frame(i: int, size: tuple[int, int]) -> np.ndarray:
    """Frame ``i`` of a clip of ``size`` (w, h): a static box and a disc that moves each frame."""
    w, h = size
    frame = np.full((h, w, 3), (40, 90, 30), np.uint8)
    cv2.rectangle(frame, (w // 8, h // 4), (w // 2, 3 * h // 4), (200, 200, 200), -1)
    cv2.circle(frame, ((i * 37) % w, h // 2), max(4, h // 6), (0, 160, 255), -1)
    return frame


def write_video(path: Path, frames: int, size: tuple[int, int], fps: float = 10.0, fourcc: str = "mp4v") -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, size)
    assert writer.isOpened(), f"OpenCV cannot write {path} with {fourcc}"
    for i in range(frames):
        writer.write(synthetic_frame(i, size))
    writer.release()
    return path
