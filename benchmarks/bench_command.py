"""``deeplab-trt bench``: latency and fidelity per precision, one command.

Why the command is thin: parsing and output files live here, every measurement lives in
:mod:`deeplab_trt.benchmarks.bench`, every format in :mod:`deeplab_trt.benchmarks.report`, so the scripts and tests
measure exactly what the command does.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from deeplab_trt.runtime.errors import ToolkitError

EPILOG = """\
int8 needs --data: its frames are split alternately, even items calibrate and odd items are
the fidelity frames (never the same frame). Without --data (fp32/fp16 only) fidelity is
measured on synthetic street scenes (mIoU vs ground truth when the model predicts the scene
classes, as the demo model does). Prepared models (fp16 graph, Q/DQ int8 graph, engines)
are cached in --cache-dir keyed by the ONNX file's sha256 and the options.
JSON schema: see benchmarks/report.py ("deeplab-trt-bench/1").
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "bench",
        help="latency, throughput, memory and fidelity per precision",
        description=__doc__.splitlines()[0],
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", metavar="MODEL.onnx", help="ONNX model exported by 'deeplab-trt export'")
    p.add_argument("--precisions", default="fp32,fp16,int8", help="comma list of fp32, fp16, int8 (default: all)")
    p.add_argument(
        "--backend",
        default="auto",
        choices=["auto", "tensorrt", "tensorrt-rtx", "onnxruntime"],
        help="auto = TensorRT when a GPU and TensorRT are present, else ONNX Runtime",
    )
    p.add_argument(
        "--data",
        nargs="+",
        default=[],
        metavar="PATH",
        help="images, folders, videos or globs: calibration (even items) + fidelity (odd items)",
    )
    p.add_argument("--iterations", type=int, default=50, help="timed inference runs per precision (default 50)")
    p.add_argument("--warmup", type=int, default=5, help="untimed runs first (default 5)")
    p.add_argument("--batch", type=int, default=1, help="inference batch size (default 1)")
    p.add_argument(
        "--streams",
        type=int,
        metavar="N",
        help="also measure N streams batched in one process vs N sequential runs (aggregate FPS, ratio, "
        "per-stream latency; N synthetic streets of --e2e-frames frames each; the model's batch must hold N)",
    )
    p.add_argument(
        "--stream-repeats", type=int, default=3, metavar="R", help="interleaved repeats of --streams (default 3)"
    )
    p.add_argument("--video", type=Path, help="video for the end-to-end run (default: a synthetic street video)")
    p.add_argument(
        "--e2e-frames",
        type=int,
        default=None,
        help="frames through the pipeline per precision (default: --iterations; 0 skips)",
    )
    p.add_argument("--calibration-frames", type=int, default=64, help="int8 calibration frames (default 64)")
    p.add_argument("--fidelity-frames", type=int, default=16, help="frames for the fidelity check (default 16)")
    p.add_argument("--json", type=Path, metavar="OUT.json", help="write the report as JSON")
    p.add_argument("--plot", type=Path, metavar="OUT.png", help="write latency + fidelity plot")
    p.add_argument("--markdown", type=Path, metavar="OUT.md", help="write a Markdown report")
    p.add_argument(
        "--cache-dir", type=Path, help="where prepared models are kept (default $XDG_CACHE_HOME/deeplab-trt/bench)"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)
    return p


def _check_output(path: Path | None, flag: str, suffix: str) -> None:
    if path is None:
        return
    if path.is_dir():
        raise ToolkitError(f"{path}: is a directory, expected a {suffix} file path for {flag}")
    if path.suffix.lower() != suffix:
        raise ToolkitError(f"{path}: {flag} expects a {suffix} file")


def run(args: argparse.Namespace) -> int:
    from deeplab_trt.benchmarks import report as rep
    from deeplab_trt.benchmarks.bench import BenchConfig, command_line, run_bench, validate

    _check_output(args.json, "--json", ".json")
    _check_output(args.plot, "--plot", ".png")
    _check_output(args.markdown, "--markdown", ".md")
    if args.plot:
        rep.pyplot(purpose=rep.PLOT_PURPOSE)  # fail before the benchmark, not after it
    cfg = BenchConfig(
        model=Path(args.model),
        precisions=args.precisions,
        backend=args.backend,
        data=list(args.data),
        iterations=args.iterations,
        warmup=args.warmup,
        batch=args.batch,
        streams=args.streams,
        stream_repeats=args.stream_repeats,
        video=args.video,
        e2e_frames=args.e2e_frames,
        calibration_frames=args.calibration_frames,
        fidelity_frames=args.fidelity_frames,
        cache_dir=args.cache_dir,
        progress=not args.quiet,
        command=command_line(),
    )
    validate(cfg)  # every option error before anything is built or written

    def show(precision: str, r: dict) -> None:
        lat = r["latency_ms"]
        print(
            f"bench: {precision}: infer p50 {lat['p50']:.2f} ms, p99 {lat['p99']:.2f} ms"
            + (f", {r['throughput_fps']:.1f} FPS" if r.get("throughput_fps") else "")
            + (f", agreement {r['agreement'] * 100:.2f}%" if r.get("agreement") is not None else "")
            + (
                f", {r['streams']['streams']} streams batched/sequential {r['streams']['ratio_spread']['median']:.3f}x"
                if r.get("streams")
                else ""
            ),
            file=sys.stderr,
            flush=True,
        )

    report = run_bench(cfg, on_result=show)
    print(rep.format_table(report))
    for path, write in ((args.json, rep.write_json), (args.markdown, rep.write_markdown), (args.plot, rep.write_plot)):
        if path is not None:
            write(report, path)
            print(f"wrote {path}")
    return 0
