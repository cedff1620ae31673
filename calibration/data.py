"""Calibration data: image folders, video files, globs → batches through the runtime's preprocessing.

Why the runtime's preprocessing: INT8 scales are only right for the inputs they were measured
on, so calibration feeds the model exactly what deployment feeds it —
:func:`deeplab_trt.runtime.preprocess.preprocess` (resize, BGR→RGB, mean/std, NCHW), no second copy.

Sources (mixed freely in one list):

* an image file (jpg, jpeg, png, bmp, webp);
* a video file (mp4, avi, mkv, mov, webm, m4v, mpg, mpeg, wmv): every ``every``-th frame;
* a directory: the images and videos in it and below it (sorted by path);
* a glob pattern (``frames/*.png``, ``clips/**/*.mp4``).

``num`` draws that many frames from the whole pool with a seeded generator (same seed, same
frames), then reads them in file order so videos are decoded front to back once. Frames are
read lazily, one batch at a time, so memory does not grow with the number of frames.

Bad data is a :class:`~deeplab_trt.runtime.errors.ToolkitError` naming the file: a path that does not
exist, a glob or directory with no usable files, an unreadable image or video, a frame
smaller than :data:`MIN_SIDE` pixels on a side.
"""

from __future__ import annotations

import glob
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from deeplab_trt.runtime.errors import ToolkitError
from deeplab_trt.runtime.preprocess import preprocess
from deeplab_trt.runtime.spec import ModelSpec

log = logging.getLogger(__name__)

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
VIDEO_EXTS = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv")
#: Frames smaller than this on either side are rejected: upscaling a thumbnail to the model
#: size gives activations deployment never sees (and is almost always a wrong file).
MIN_SIDE = 16
_GLOB_CHARS = set("*?[")


@dataclass(frozen=True, order=True)
class FrameRef:
    """One calibration frame: an image file (``index`` None) or frame ``index`` of a video."""

    path: Path
    index: int | None = None

    def __str__(self) -> str:
        return str(self.path) if self.index is None else f"{self.path}#{self.index}"


def _kind(path: Path) -> str | None:
    ext = path.suffix.lower()
    if ext in IMAGE_EXTS:
        return "image"
    if ext in VIDEO_EXTS:
        return "video"
    return None


def _video_frame_count(path: Path) -> int:
    """Frames in a video: the container's count, or counted by grabbing when it has none."""
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            raise ToolkitError(f"{path}: cannot open video (unsupported codec or not a video)")
        n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        if n <= 0:  # some containers (raw streams, some webm) do not say
            n = 0
            while cap.grab():
                n += 1
    finally:
        cap.release()
    if n == 0:
        raise ToolkitError(f"{path}: video has no frames")
    return n


def _expand(source: str | Path) -> list[Path]:
    """A data argument → the media files it names (sorted); errors name the argument."""
    text = str(source)
    path = Path(text)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and _kind(p))
        if not files:
            raise ToolkitError(
                f"{path}: directory has no images or videos ({', '.join(e[1:] for e in IMAGE_EXTS + VIDEO_EXTS)})"
            )
        return files
    if path.is_file():
        if _kind(path) is None:
            raise ToolkitError(
                f"{path}: not an image or video file (expected one of "
                f"{', '.join(e[1:] for e in IMAGE_EXTS + VIDEO_EXTS)})"
            )
        return [path]
    if _GLOB_CHARS & set(text):
        matches = sorted(Path(p) for p in glob.glob(text, recursive=True))
        files = [p for p in matches if p.is_file() and _kind(p)]
        if not files:
            raise ToolkitError(f"{text}: pattern matches no images or videos")
        return files
    raise ToolkitError(f"{path}: no such file or directory")


def discover(sources: Sequence[str | Path], every: int = 1) -> list[FrameRef]:
    """All candidate frames named by ``sources`` (files, directories, globs), in file order."""
    if isinstance(sources, (str, Path)):
        sources = [sources]
    if not sources:
        raise ToolkitError("no calibration data given (--data PATH: image folder, video, glob)")
    if every < 1:
        raise ToolkitError(f"--every {every}: must be at least 1")
    seen: set[Path] = set()
    refs: list[FrameRef] = []
    for source in sources:
        for path in _expand(source):
            key = path.resolve()
            if key in seen:
                continue
            seen.add(key)
            if _kind(path) == "image":
                refs.append(FrameRef(path))
            else:
                refs.extend(FrameRef(path, i) for i in range(0, _video_frame_count(path), every))
    return refs


def select(refs: list[FrameRef], num: int | None, seed: int = 0) -> list[FrameRef]:
    """``num`` frames drawn without replacement by a seeded generator, kept in file order."""
    if num is None or num >= len(refs):
        if num is not None and num > len(refs):
            log.warning("calibrate: --num %d but only %d frames available; using all", num, len(refs))
        return list(refs)
    if num < 1:
        raise ToolkitError(f"--num {num}: must be at least 1")
    picked = np.random.default_rng(seed).choice(len(refs), size=num, replace=False)
    return [refs[i] for i in sorted(int(i) for i in picked)]


def _check_size(frame: np.ndarray, where: str) -> np.ndarray:
    h, w = frame.shape[:2]
    if min(h, w) < MIN_SIDE:
        raise ToolkitError(f"{where}: frame is {w}x{h}, smaller than the {MIN_SIDE}x{MIN_SIDE} minimum for calibration")
    return frame


def _read_image(path: Path) -> np.ndarray:
    # np.fromfile + imdecode: works for any path OpenCV's imread cannot open (unicode on Windows)
    # and tells "unreadable" apart from "missing".
    try:
        raw = np.fromfile(str(path), dtype=np.uint8)
    except OSError as exc:
        raise ToolkitError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    frame = cv2.imdecode(raw, cv2.IMREAD_COLOR) if raw.size else None
    if frame is None:
        raise ToolkitError(f"{path}: cannot decode image (empty, truncated or not an image)")
    return _check_size(frame, str(path))


def read_frames(refs: Sequence[FrameRef]) -> Iterator[tuple[FrameRef, np.ndarray]]:
    """BGR uint8 frames for ``refs`` in order; each video is opened once and read forwards."""
    i = 0
    while i < len(refs):
        ref = refs[i]
        if ref.index is None:
            yield ref, _read_image(ref.path)
            i += 1
            continue
        j = i
        while j < len(refs) and refs[j].path == ref.path and refs[j].index is not None:
            j += 1
        wanted = refs[i:j]
        cap = cv2.VideoCapture(str(ref.path))
        try:
            if not cap.isOpened():
                raise ToolkitError(f"{ref.path}: cannot open video")
            pos = 0
            for n_read, want in enumerate(wanted):
                while pos < want.index:  # grab() skips without colour conversion
                    if not cap.grab():
                        break
                    pos += 1
                ok, frame = cap.read() if pos == want.index else (False, None)
                if not ok or frame is None:
                    if n_read == 0:
                        raise ToolkitError(f"{ref.path}: cannot decode frame {want.index} (corrupt video?)")
                    # Container frame counts are estimates for some formats: a video that ends
                    # early is not an error, its remaining frames just do not exist.
                    log.warning(
                        "calibrate: %s ended at frame %d, %d selected frame(s) skipped",
                        ref.path,
                        pos,
                        len(wanted) - n_read,
                    )
                    break
                pos += 1
                yield want, _check_size(frame, str(want))
        finally:
            cap.release()
        i = j


class CalibrationData:
    """The frames to calibrate on and how to batch them for a model.

    ``sources``: files, directories and globs; ``every``: keep every k-th video frame;
    ``num``/``seed``: seeded subset; ``policy``: the runtime resize policy (stretch/letterbox).
    Discovery (and its errors) happens here, at construction; decoding happens in
    :meth:`batches`.
    """

    def __init__(
        self,
        sources: Sequence[str | Path],
        spec: ModelSpec,
        *,
        num: int | None = None,
        every: int = 1,
        seed: int = 0,
        policy: str = "stretch",
        dtype=np.float32,
    ) -> None:
        self.spec = spec
        self.policy = policy
        self.dtype = dtype
        self.refs = select(discover(sources, every=every), num, seed)

    def __len__(self) -> int:
        return len(self.refs)

    def frames(self) -> Iterator[tuple[FrameRef, np.ndarray]]:
        return read_frames(self.refs)

    def batches(self, batch_size: int = 1, drop_last: bool = False) -> Iterator[np.ndarray]:
        """(B, 3, H, W) arrays, preprocessed by :func:`deeplab_trt.runtime.preprocess.preprocess`.

        The last batch may be short unless ``drop_last`` (for models with a fixed batch size).
        """
        if batch_size < 1:
            raise ToolkitError(f"--calib-batch {batch_size}: must be at least 1")
        h, w = self.spec.input_size
        batch = np.zeros((batch_size, 3, h, w), dtype=self.dtype)
        filled = 0
        for _, frame in self.frames():
            preprocess(frame, self.spec, self.policy, self.dtype, out=batch[filled])
            filled += 1
            if filled == batch_size:
                yield batch.copy()
                filled = 0
        if filled and not drop_last:
            yield batch[:filled].copy()
        elif filled:
            log.warning("calibrate: dropped the last %d frame(s): the model takes batches of %d", filled, batch_size)
