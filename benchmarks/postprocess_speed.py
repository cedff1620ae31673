"""Fused low-resolution upsample+argmax vs full-resolution upsample then argmax (numpy, CPU).

Why: the runtime's CPU path (and the definition the CUDA kernel follows) never builds the
C×H×W full-resolution logits; this script measures what that saves, in one run, on
realistic logits. Target: fused >= 3x faster.

Logits (``--logits``):
  * ``scene`` (default): logits shaped like a trained model's on a synthetic street scene:
    the scene's ground-truth labels, one-hot, area-averaged down to the low-resolution grid
    (soft at object edges, as real logits are), scaled to a +-4 margin, plus noise; channels
    beyond the scene's 7 classes (up to ``--classes``) sit at the negative margin;
  * ``smooth``: C channels of smooth random fields (coarse noise upsampled with bicubic + a
    little fine noise): blobs rather than salt-and-pepper, but all C classes compete, so
    ~40% of the low-res cells are on a boundary: a harsh case, far busier than a street;
  * ``PATH.onnx``: a ``lowres``-head model (e.g. the demo model exported with
    ``--head lowres``) run with ONNX Runtime on a synthetic street scene.

    python -m deeplab_trt.benchmarks.postprocess_speed [--logits scene|smooth|MODEL.onnx] [--frame 512x1024]
        [--classes 21] [--stride 16] [--repeats 20]
"""

from __future__ import annotations

import argparse
import datetime as dt
import shlex
import sys
import time
from pathlib import Path

import cv2
import numpy as np


def smooth_logits(classes: int, h: int, w: int, seed: int = 0, cell: int = 8) -> np.ndarray:
    rng = np.random.default_rng(seed)
    ch, cw = max(2, h // cell), max(2, w // cell)
    coarse = rng.normal(0.0, 4.0, size=(classes, ch, cw)).astype(np.float32)
    fields = np.stack([cv2.resize(c, (w, h), interpolation=cv2.INTER_CUBIC) for c in coarse])
    return fields + rng.normal(0.0, 0.3, size=fields.shape).astype(np.float32)


def scene_logits(
    classes: int, frame_hw: tuple[int, int], stride: int, seed: int = 10_000_000 + 99, noise: float = 0.5
) -> np.ndarray:
    from deeplab_trt.benchmarks.scenes import SceneGenerator

    _, labels = SceneGenerator(frame_hw[0], frame_hw[1], seed=seed).scene(0)
    h, w = frame_hw[0] // stride, frame_hw[1] // stride
    n = max(classes, int(labels.max()) + 1)
    onehot = [(labels == c).astype(np.float32) for c in range(n)]
    soft = np.stack([cv2.resize(m, (w, h), interpolation=cv2.INTER_AREA) for m in onehot])
    rng = np.random.default_rng(seed)
    return (8.0 * soft - 4.0 + rng.normal(0.0, noise, size=soft.shape)).astype(np.float32)


def model_logits(path: Path, frame_hw: tuple[int, int]):
    """Low-res logits of a lowres-head ONNX on a synthetic scene, and the geometry to the frame."""
    import onnxruntime as ort

    from deeplab_trt.benchmarks.scenes import SceneGenerator
    from deeplab_trt.runtime.preprocess import preprocess
    from deeplab_trt.runtime.spec import spec_from_onnx

    spec = spec_from_onnx(path)
    if spec.head != "lowres":
        raise SystemExit(f"{path}: head is {spec.head!r}; export with --head lowres")
    frame, _ = SceneGenerator(frame_hw[0], frame_hw[1], seed=10_000_000 + 99).scene(0)
    x, geo = preprocess(frame, spec)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    y = sess.run(None, {sess.get_inputs()[0].name: x})[0][0]
    return y.astype(np.float32), geo


def _interleaved_median_ms(fns, repeats: int) -> list[float]:
    """Median ms of each function, run alternately so a busy machine slows them alike."""
    for fn in fns:
        fn()  # warm caches / allocator
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, ts in zip(fns, times):
            t0 = time.perf_counter()
            fn()
            ts.append((time.perf_counter() - t0) * 1e3)
    return [float(np.median(ts)) for ts in times]


def main(argv: list[str] | None = None) -> int:
    from deeplab_trt.benchmarks.environment import machine_line
    from deeplab_trt.runtime.postprocess import upsample_argmax, upsample_then_argmax
    from deeplab_trt.runtime.preprocess import Geometry

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--logits", default="scene", help="'scene', 'smooth' or a lowres-head ONNX model")
    ap.add_argument("--frame", default="512x1024", help="frame (and model input) size HxW")
    ap.add_argument("--classes", type=int, default=21, help="channels for smooth logits (VOC: 21)")
    ap.add_argument(
        "--stride",
        type=int,
        default=16,
        help="output stride of the scene/smooth logits (16: deeplabv3_mobilenet_v3_large; 8: resnet)",
    )
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args(argv)
    fh, fw = (int(v) for v in args.frame.lower().split("x"))

    if args.logits == "scene":
        lowres = scene_logits(args.classes, (fh, fw), args.stride)
        geo = Geometry.compute((fh, fw), (fh, fw), "stretch")
        what = f"scene-shaped logits {lowres.shape[0]}x{lowres.shape[1]}x{lowres.shape[2]}"
    elif args.logits == "smooth":
        lowres = smooth_logits(args.classes, fh // args.stride, fw // args.stride)
        geo = Geometry.compute((fh, fw), (fh, fw), "stretch")
        what = f"smooth random logits {lowres.shape[0]}x{lowres.shape[1]}x{lowres.shape[2]}"
    else:
        lowres, geo = model_logits(Path(args.logits), (fh, fw))
        what = f"{Path(args.logits).name} on a synthetic scene, logits {'x'.join(map(str, lowres.shape))}"

    low = lowres.argmax(0)
    pad = np.pad(low, ((0, 1), (0, 1)), mode="edge")
    mixed = ((pad[:-1, :-1] != pad[:-1, 1:]) | (pad[:-1, :-1] != pad[1:, :-1]) | (pad[:-1, :-1] != pad[1:, 1:])).mean()
    fused = upsample_argmax(lowres, geo)
    naive = upsample_then_argmax(lowres, geo)
    agree = float((fused == naive).mean())
    t_fused, t_naive = _interleaved_median_ms(
        [lambda: upsample_argmax(lowres, geo), lambda: upsample_then_argmax(lowres, geo)], args.repeats
    )

    args_text = " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    print(f"command: python -m deeplab_trt.benchmarks.postprocess_speed {args_text}".rstrip())
    print(f"machine: {machine_line()}")
    print(f"date:    {dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat()}")
    print(
        f"input:   {what} -> labels {fh}x{fw}; {mixed * 100:.1f}% of low-res cells on a class boundary; "
        f"median of {args.repeats} runs"
    )
    print(f"naive upsample_then_argmax: {t_naive:8.2f} ms")
    print(f"fused upsample_argmax:      {t_fused:8.2f} ms   (labels identical on {agree * 100:.4f}% of pixels)")
    ratio = t_naive / t_fused
    print(f"ratio naive/fused: {ratio:.2f}x  (target >= 3x: {'met' if ratio >= 3 else 'NOT met'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
