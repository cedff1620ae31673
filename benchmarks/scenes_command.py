"""``deeplab-trt scenes``: write synthetic street scenes with ground-truth labels to disk.

Why: calibration, ``eval`` and outside tools want files, not a Python generator. The output
is the layout of :mod:`deeplab_trt.benchmarks.labelled_dir` (``images/NAME.png``, ``labels/NAME.png``,
``classes.json``), which ``deeplab-trt eval --data DIR`` and ``calibrate`` read back.
``--video`` also writes one moving street as a video file, with its per-frame labels in
``DIR/video_labels/NNNNN.png``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from deeplab_trt.runtime.cli_types import positive_int


def _size(text: str) -> int:
    value = positive_int(text)
    if value < 16:
        raise argparse.ArgumentTypeError(f"{text!r}: scenes need at least 16 pixels")
    return value


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "scenes",
        help="write synthetic street scenes + label PNGs (and optionally a video)",
        description=__doc__.splitlines()[0] + " Layout: OUT_DIR/images/NAME.png, "
        "OUT_DIR/labels/NAME.png (class index per pixel), OUT_DIR/classes.json.",
    )
    p.add_argument("out_dir", type=Path, metavar="OUT_DIR")
    p.add_argument("--num", type=int, default=16, metavar="N", help="number of scenes (default 16; 0 = none)")
    p.add_argument(
        "--seed",
        type=int,
        default=10_000_000,
        metavar="S",
        help="generator seed (default 10000000, the held-out range the demo model never saw)",
    )
    p.add_argument("--start", type=int, default=0, metavar="I", help="first scene index (default 0)")
    p.add_argument("--height", type=_size, default=256, metavar="H", help="image height (default 256)")
    p.add_argument("--width", type=_size, default=512, metavar="W", help="image width (default 512)")
    p.add_argument("--video", type=Path, metavar="OUT.mp4", help="also write a video of one moving street")
    p.add_argument("--frames", type=positive_int, default=90, metavar="N", help="video length (default 90)")
    p.add_argument("--fps", type=float, default=30.0, help="video frame rate (default 30)")
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    from tqdm import tqdm

    from deeplab_trt.benchmarks.labelled_dir import write_classes, write_pair, write_png
    from deeplab_trt.benchmarks.scenes import CLASSES, PALETTE, SceneGenerator
    from deeplab_trt.runtime.errors import ToolkitError
    from deeplab_trt.runtime.video import VideoFileSink

    out: Path = args.out_dir
    if out.exists() and not out.is_dir():
        raise ToolkitError(f"{out}: exists and is not a directory")
    if args.num < 0:
        raise ToolkitError(f"--num {args.num}: expected 0 or more scenes")
    if args.video is not None and args.video.is_dir():
        raise ToolkitError(f"{args.video}: is a directory, expected a video file name")
    gen = SceneGenerator(args.height, args.width, seed=args.seed)
    out.mkdir(parents=True, exist_ok=True)
    write_classes(out, CLASSES, PALETTE)
    for i in tqdm(range(args.start, args.start + args.num), desc="scenes", file=sys.stderr, disable=args.num < 50):
        image, labels = gen.scene(i)
        write_pair(out, f"s{args.seed}_{i:06d}", image, labels)
    if args.num:
        print(f"{args.num} scenes {args.width}x{args.height} (seed {args.seed}) → {out}/images, {out}/labels")
    if args.video is not None:
        sink = VideoFileSink(args.video, args.fps, (args.width, args.height))
        try:
            for f, (frame, labels) in enumerate(
                tqdm(
                    gen.video_frames(args.frames, index=args.start),
                    total=args.frames,
                    desc="video",
                    file=sys.stderr,
                    disable=args.frames < 100,
                )
            ):
                sink.write(frame)
                ow, oh = sink.output_size  # labels match what the file holds (even size)
                write_png(out / "video_labels" / f"{f:05d}.png", labels[:oh, :ow])
        except BaseException:
            sink.abort()
            raise
        sink.close()
        print(
            f"video: {args.frames} frames {sink.output_size[0]}x{sink.output_size[1]} → {args.video} "
            f"(labels in {out}/video_labels)"
        )
    return 0
