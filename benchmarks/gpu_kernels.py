"""GPU kernel throughput: preprocessing vs the device's copy bandwidth, fused argmax vs torch.

Why these two numbers: preprocessing is pure data movement (read uint8 pixels, write the
normalised tensor), so its honest yardstick is what ``cudaMemcpy`` achieves device-to-device on
the same GPU (target: >= 0.7 of it). The fused upsample+argmax replaces torch's
``F.interpolate(..., mode="bilinear", align_corners=False).argmax(1)``, which writes and reads
a full-resolution C×H×W tensor; the ratio says what fusing (and the 4-neighbour shortcut) buys.

Bandwidth counts bytes a kernel must move at least once: preprocess = frame bytes read +
tensor bytes written (exact at 1080p→1080p stretch, where every source pixel is read once; for
a smaller model input it is an upper bound, the whole frame being counted); memcpy D2D =
2 × size (read + write). Times are CUDA-event times of many back-to-back launches after a
warm-up, median over repeats.

    python -m deeplab_trt.benchmarks.gpu_kernels [--frame 1080x1920] [--classes 21] [--stride 8]
        [--repeats 7] [--iters 50] [--json OUT.json]

Needs a CUDA GPU and cuda-python; torch (with CUDA) only for the comparison.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys

import numpy as np


def _parse_hw(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
        return h, w
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected HxW (e.g. 1080x1920), got {text!r}") from exc


def time_ms(api, stream, fn, iters: int, repeats: int) -> float:
    """Median over ``repeats`` of (event time of ``iters`` back-to-back calls) / iters, in ms."""
    start, end = api.Event(), api.Event()
    fn()
    stream.synchronize()
    samples = []
    for _ in range(repeats):
        start.record(stream)
        for _ in range(iters):
            fn()
        end.record(stream)
        end.synchronize()
        samples.append(start.elapsed_ms(end) / iters)
    return statistics.median(samples)


def copy_bandwidth(api, stream, nbytes: int, iters: int, repeats: int) -> float:
    """Device-to-device memcpy bandwidth in GB/s (read + write)."""
    a, b = api.DeviceBuffer(nbytes), api.DeviceBuffer(nbytes)
    ms = time_ms(api, stream, lambda: api.copy_async(b, a, nbytes, stream), iters, repeats)
    return 2 * nbytes / (ms * 1e-3) / 1e9


def blob_logits(classes: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    from deeplab_trt.benchmarks.postprocess_speed import smooth_logits

    return smooth_logits(classes, h, w, seed=seed, cell=4)


def preprocess_bandwidth(
    api, kernels, stream, frame, spec, geo, dtype, *, copy_gbs: float, iters: int, repeats: int
) -> dict:
    """One preprocess timing: the frame (fh×fw×3 on the device) into a 1×3×H×W ``dtype`` input.

    Bytes moved count the whole frame as read (exact when the input is the frame's size) plus the
    input written; the ratio to a device-to-device copy (``copy_gbs``) is the kernel's efficiency.
    """
    fh, fw = frame.shape[:2]
    ih, iw = spec.input_size
    out = api.empty((1, 3, ih, iw), dtype)
    ms = time_ms(
        api,
        stream,
        lambda: kernels.preprocess(frame, fh, fw, out, spec, geo, out_dtype=dtype, stream=stream.handle),
        iters,
        repeats,
    )
    gbs = (fh * fw * 3 + out.nbytes) / (ms * 1e-3) / 1e9
    return {
        "frame": [fh, fw],
        "input": [ih, iw],
        "dtype": np.dtype(dtype).name,
        "ms": ms,
        "gbs": gbs,
        "ratio_to_memcpy": gbs / copy_gbs,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frame", type=_parse_hw, default=(1080, 1920), help="frame HxW (default 1080x1920)")
    parser.add_argument("--input", type=_parse_hw, default=(512, 1024), help="model input HxW for the typical case")
    parser.add_argument("--classes", type=int, default=21)
    parser.add_argument("--stride", type=int, default=8, help="output stride of the low-res logits")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--copy-mib", type=int, default=256, help="memcpy size for the bandwidth yardstick")
    parser.add_argument("--json", help="also write the numbers here")
    args = parser.parse_args(argv)

    try:
        from deeplab_trt.runtime.cuda import api

        count = api.device_count()
    except Exception as exc:  # noqa: BLE001 - cuda-python missing or broken: say so and stop
        print(f"gpu_kernels: no CUDA available ({exc}); run this on a machine with an NVIDIA GPU", file=sys.stderr)
        return 2
    if count == 0:
        print(
            "gpu_kernels: no CUDA GPU on this machine (cudaGetDeviceCount = 0 or no driver); "
            "run this on a machine with an NVIDIA GPU",
            file=sys.stderr,
        )
        return 2

    from deeplab_trt.runtime.cuda.kernels import get_kernels
    from deeplab_trt.runtime.preprocess import Geometry
    from deeplab_trt.runtime.spec import ModelSpec, voc_palette

    info = api.use_device(0)
    kernels = get_kernels(0)
    stream = api.Stream()
    fh, fw = args.frame
    rng = np.random.default_rng(0)
    results: dict = {
        "device": info.describe(),
        "arch": info.arch,
        "command": "python -m deeplab_trt.benchmarks.gpu_kernels "
        + shlex.join(argv if argv is not None else sys.argv[1:]),
        "kernels": {"kind": kernels.launcher.compiled.kind, "nvrtc": list(kernels.launcher.compiled.nvrtc_version)},
    }
    print(f"device: {info.describe()}")
    print(f"command: {results['command']}")

    copy_gbs = copy_bandwidth(api, stream, args.copy_mib << 20, max(5, args.iters // 5), args.repeats)
    results["memcpy_d2d_gbs"] = copy_gbs
    print(f"memcpy D2D: {copy_gbs:.1f} GB/s (read+write)")

    frame = api.to_device(rng.integers(0, 256, (fh, fw, 3), dtype=np.uint8))
    results["preprocess"] = []
    for (ih, iw), policy in (((fh, fw), "stretch"), (args.input, "letterbox")):
        spec = ModelSpec("bench", [str(i) for i in range(args.classes)], voc_palette(args.classes), ih, iw)
        geo = Geometry.compute((fh, fw), (ih, iw), policy)
        for dtype in (np.float32, np.float16):
            row = preprocess_bandwidth(
                api, kernels, stream, frame, spec, geo, dtype, copy_gbs=copy_gbs, iters=args.iters, repeats=args.repeats
            )
            row["policy"] = policy
            ms, gbs = row["ms"], row["gbs"]
            results["preprocess"].append(row)
            print(
                f"preprocess {fw}x{fh} -> {iw}x{ih} {policy} {np.dtype(dtype).name}: {ms * 1e3:.0f} us, "
                f"{gbs:.1f} GB/s = {gbs / copy_gbs:.2f} x memcpy"
            )

    c, lh, lw = args.classes, -(-fh // args.stride), -(-fw // args.stride)
    spec = ModelSpec(
        "bench", [str(i) for i in range(c)], voc_palette(c), lh * args.stride, lw * args.stride, head="lowres"
    )
    geo = Geometry.compute((fh, fw), spec.input_size, "stretch")
    try:
        import torch
        import torch.nn.functional as F

        have_torch = torch.cuda.is_available()
    except ImportError:
        have_torch = False
    results["upsample_argmax"] = []
    for kind, host in (
        ("smooth blobs", blob_logits(c, lh, lw)),
        ("random (worst case)", rng.standard_normal((c, lh, lw)).astype(np.float32)),
    ):
        for dtype in (np.float32, np.float16):
            logits = api.to_device(host.astype(dtype))
            labels = api.empty((fh, fw), np.uint8)
            ms = time_ms(
                api,
                stream,
                lambda: kernels.upsample_argmax(logits, c, lh, lw, geo, labels, dtype=dtype, stream=stream.handle),  # noqa: B023
                args.iters,
                args.repeats,
            )
            row = {"logits": kind, "dtype": np.dtype(dtype).name, "shape": [c, lh, lw], "frame": [fh, fw], "ms": ms}
            if have_torch:
                t = torch.as_tensor(host.astype(dtype), device="cuda")[None]
                ext = torch.cuda.ExternalStream(stream.handle)

                def torch_step():
                    with torch.cuda.stream(ext):  # noqa: B023
                        F.interpolate(t, size=(fh, fw), mode="bilinear", align_corners=False).argmax(1).to(torch.uint8)  # noqa: B023

                row["torch_ms"] = time_ms(api, stream, torch_step, args.iters, args.repeats)
                row["speedup_vs_torch"] = row["torch_ms"] / ms
                agree = (
                    torch.as_tensor(labels, device="cuda").cpu().numpy()
                    == F.interpolate(t.float(), size=(fh, fw), mode="bilinear", align_corners=False)
                    .argmax(1)[0]
                    .to(torch.uint8)
                    .cpu()
                    .numpy()
                ).mean()
                row["label_agreement_with_torch"] = float(agree)
            results["upsample_argmax"].append(row)
            extra = (
                (
                    f"; torch interpolate+argmax {row['torch_ms'] * 1e3:.0f} us -> {row['speedup_vs_torch']:.1f}x, "
                    f"labels agree {row['label_agreement_with_torch']:.5f}"
                )
                if have_torch
                else "; torch (CUDA) absent"
            )
            print(f"upsample+argmax {kind} {np.dtype(dtype).name} {c}x{lh}x{lw} -> {fw}x{fh}: {ms * 1e3:.0f} us{extra}")

    picture = api.to_device(rng.integers(0, 256, (fh, fw, 3), dtype=np.uint8))
    labels = api.to_device(rng.integers(0, c, (fh, fw)).astype(np.uint8))
    ms = time_ms(
        api,
        stream,
        lambda: kernels.render(picture, fh, fw, labels, spec, mode="overlay", alpha=0.5, stream=stream.handle),
        args.iters,
        args.repeats,
    )
    results["overlay_ms"] = ms
    print(f"overlay {fw}x{fh}: {ms * 1e3:.0f} us")
    if args.json:
        from deeplab_trt.runtime.atomic import write_text_atomic

        write_text_atomic(args.json, json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
