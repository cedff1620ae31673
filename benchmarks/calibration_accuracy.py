"""INT8 accuracy bar: FP32 vs our INT8 (entropy, percentile, max) vs ONNX Runtime and NVIDIA ModelOpt PTQ.

What it measures (issue "Entropy calibration", item 7), all executed by ONNX Runtime on CPU,
which runs the Q/DQ graphs as int8 arithmetic:

* the demo model exported with the low-res head (or ``--onnx`` any ``deeplab-trt export`` model);
* calibration: ``--calib-num`` (64) synthetic scenes from a seed of their own
  (``HELDOUT_SEED_BASE + 1``), written as PNG files so the real data path (folder → decode →
  runtime preprocessing) is what is timed;
* evaluation: ``--eval-num`` held-out scenes (``HELDOUT_SEED_BASE``, the demo training's
  held-out set): mIoU against the ground truth and pixel agreement with FP32;
* ours: ``quantize_onnx`` end to end per method (statistics, scales, Q/DQ, write);
* ONNX Runtime: ``quantize_static`` with ``CalibrationMethod.Entropy``, QDQ format,
  per-channel int8 weights, symmetric int8 activations (TensorRT needs zero point 0) and
  ``QuantizeBias: False`` (TensorRT rejects int32 bias DQ), fed the same preprocessed frames;
* NVIDIA ModelOpt (``--modelopt-python PY``: a venv of its own, since its ``onnx`` extra pins
  ``onnxruntime-gpu`` and CuPy): ``modelopt.onnx.quantization.quantize``, INT8, entropy and max
  with the FP32 rest, entropy with ``high_precision_dtype='fp16'``, calibration on the CPU
  provider, fed the same preprocessed frames as one ``.npy`` (protocol:
  :mod:`deeplab_trt.benchmarks.modelopt_child`); skipped with a one-line reason without ``PY``
  or where ``PY`` cannot import it. ModelOpt's FP16-rest graph has FP16 Q/DQ (opset 19), for
  which ONNX Runtime CPU is no proven oracle (one session measured 4.1 % mIoU, a later one
  −0.74 points): its row carries that caution, and says "mis-executes" below 90 % agreement;
* engines (``--no-engines`` skips them; skipped with a one-line reason where no TensorRT flavour
  imports): fp32 and fp16 from the FP32 model, int8 from each contender's Q/DQ graph, each built
  with the builder's ``build_engine`` on this machine (TensorRT-RTX builds ahead of time on a
  CPU); their size in MiB and the ``build_engine`` wall time sit in the same table and JSON.
  Size is no speed proxy (INT8 RTX engines ≈ 34 MB whatever the rest's precision, FP16 24.8 MB)
  and no speed is claimed: see :mod:`deeplab_trt.benchmarks.engine_sizes`;
* each quantizer runs in a child process: its wall time (the quantize call only, imports
  excluded) and its peak resident memory (imports included) are its own.

``python -m deeplab_trt.benchmarks.calibration_accuracy [--out DIR]`` prints the command, the machine and
a Markdown table; ``--out`` also writes it as JSON and Markdown.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def machine() -> str:
    import onnxruntime as ort

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{cpu}, {os.cpu_count()} logical CPUs visible, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}, onnxruntime {ort.__version__} "
        f"({', '.join(ort.get_available_providers())})"
    )


def write_calibration_frames(folder: Path, num: int, height: int, width: int) -> None:
    import cv2

    from deeplab_trt.benchmarks.scenes import HELDOUT_SEED_BASE, SceneGenerator

    folder.mkdir(parents=True, exist_ok=True)
    gen = SceneGenerator(height, width, seed=HELDOUT_SEED_BASE + 1)
    for i in range(num):
        image, _ = gen.scene(i)
        cv2.imwrite(str(folder / f"calib_{i:04d}.png"), image)


def ort_quantize_static(fp32: Path, out: Path, frames_dir: Path, spec) -> float:
    """ONNX Runtime's entropy PTQ (settings in the module docstring); returns wall seconds."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    from deeplab_trt.calibration.data import CalibrationData

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = CalibrationData([frames_dir], spec).batches(1)

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {spec.input_name: batch}

    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        cwd = os.getcwd()
        os.chdir(tmp)  # quantize_static writes its augmented model to the working directory
        try:
            quantize_static(
                str(fp32),
                str(out),
                Reader(),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.Entropy,
                extra_options={"QuantizeBias": False, "ActivationSymmetric": True, "WeightSymmetric": True},
            )
        finally:
            os.chdir(cwd)
    return time.perf_counter() - started


MODELOPT_CHILD = Path(__file__).resolve().with_name("modelopt_child.py")
#: ModelOpt runs: row name → (calibration_method, high_precision_dtype). The FP16-rest graph
#: (opset 19, FP16 scales) is reported with a caution: an earlier session measured ONNX Runtime CPU
#: at 4.1 % mIoU on it (mis-executed), a later one (ORT 1.32, ModelOpt 0.47) at −0.74 points.
MODELOPT_RUNS = {
    "modelopt entropy": ("entropy", "fp32"),
    "modelopt max": ("max", "fp32"),
    "modelopt entropy (fp16 rest)": ("entropy", "fp16"),
}
#: Below this pixel agreement with FP32, an FP16 Q/DQ graph's ORT CPU score is taken as mis-execution.
MISEXECUTION_AGREEMENT = 0.90


def fp16_qdq_note(agreement: float | None) -> str:
    """The caution beside an FP16 Q/DQ graph's ORT CPU score (ORT CPU is no proven oracle for those)."""
    if agreement is not None and agreement < MISEXECUTION_AGREEMENT:
        return f"ORT CPU mis-executes this FP16 Q/DQ graph (agreement {100 * agreement:.1f} %): accuracy not a verdict"
    return "FP16 Q/DQ graph: ORT CPU is no proven oracle for it (an earlier run scored 4.1 % mIoU)"


def write_calibration_npy(frames_dir: Path, spec, path: Path) -> int:
    """The calibration frames, through the runtime's preprocessing, as one float32 N×3×H×W ``.npy``.

    The same reader (``CalibrationData``, batch 1, file order) feeds ONNX Runtime's contender, so
    every quantizer sees the same frames. Returns N.
    """
    from deeplab_trt.calibration.data import CalibrationData

    batch = np.concatenate(list(CalibrationData([frames_dir], spec).batches(1))).astype(np.float32)
    np.save(path, batch)
    return int(batch.shape[0])


def modelopt_unavailable(python: str | None) -> str | None:
    """None where ``python`` can import ModelOpt's ONNX quantizer, else the one-line reason (skip)."""
    import subprocess

    if not python:
        return "skipped: no --modelopt-python (a venv with nvidia-modelopt and the CPU onnxruntime)"
    try:
        proc = subprocess.run(
            [python, str(MODELOPT_CHILD), "--check"], capture_output=True, text=True, timeout=300, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"skipped: --modelopt-python {python}: {exc}"
    if proc.returncode != 0:
        last = (proc.stdout.strip() or proc.stderr.strip() or f"exit {proc.returncode}").splitlines()[-1]
        return f"skipped: --modelopt-python {python} cannot import modelopt.onnx.quantization ({last[:120]})"
    return None


def run_modelopt(python: str, fp32: Path, calib_npy: Path, method: str, high_precision: str, out: Path) -> dict:
    """One ModelOpt PTQ in a child process of ``python`` (protocol: :mod:`.modelopt_child`).

    Returns ``{"seconds", "peak_rss_mb", "modelopt_version", "child_ru_maxrss_mb"}``; the model at
    ``out`` gets any of the FP32 model's metadata it lacks (our
    backends read the model spec from them). ``child_ru_maxrss_mb`` is ``wait4``'s figure for the
    child, an upper bound (it includes the parent's size at fork; see ``peak_rss_mb``).
    """
    import subprocess

    import onnx

    result = out.with_suffix(".result.json")
    cmd = [python, str(MODELOPT_CHILD), "--onnx", str(fp32), "--calib", str(calib_npy), "--method", method]
    cmd += ["--high-precision", high_precision, "--out", str(out), "--result", str(result)]
    with tempfile.TemporaryFile(mode="w+") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, cwd=str(out.parent))
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        tail = err.read()[-3000:]
    if proc.returncode != 0 or not result.is_file():
        last = tail.strip().splitlines()[-1] if tail.strip() else f"exit {proc.returncode}"
        raise RuntimeError(f"ModelOpt {method}/{high_precision} failed: {last}")
    record = json.loads(result.read_text())
    record["child_ru_maxrss_mb"] = usage.ru_maxrss / 1024
    model = onnx.load(str(out))
    source = onnx.load(str(fp32), load_external_data=False)
    present = {p.key for p in model.metadata_props}
    for prop in source.metadata_props:
        if prop.key not in present:
            model.metadata_props.add(key=prop.key, value=prop.value)
    onnx.save(model, str(out))
    return record


def evaluate_all(models: dict[str, Path], num: int, threads: int) -> dict[str, dict]:
    """mIoU vs ground truth and pixel agreement with the first model, one pass over the scenes."""
    from deeplab_trt.benchmarks.accuracy import segment
    from deeplab_trt.benchmarks.metrics import ConfusionMatrix
    from deeplab_trt.benchmarks.scenes import HELDOUT_SEED_BASE, SceneGenerator
    from deeplab_trt.runtime.backends.onnxruntime import OrtBackend

    backends = {
        name: OrtBackend(path, threads=threads, providers=["CPUExecutionProvider"]) for name, path in models.items()
    }
    spec = next(iter(backends.values())).spec
    gen = SceneGenerator(spec.input_height, spec.input_width, seed=HELDOUT_SEED_BASE)
    cms = {name: ConfusionMatrix(spec.num_classes) for name in backends}
    agree = {name: 0.0 for name in backends}
    seconds = {name: 0.0 for name in backends}
    reference = next(iter(backends))
    for i in range(num):
        image, labels = gen.scene(i)
        preds = {}
        for name, backend in backends.items():
            t0 = time.perf_counter()
            preds[name] = segment(backend, image)
            seconds[name] += time.perf_counter() - t0
            cms[name].update(labels, preds[name])
        for name in backends:
            agree[name] += float(np.mean(preds[name] == preds[reference]))
    return {
        name: {
            "miou": cms[name].miou(),
            "pixel_accuracy": cms[name].pixel_accuracy(),
            "agreement_vs_fp32": agree[name] / num,
            "ms_per_image": 1000 * seconds[name] / num,
        }
        for name in backends
    }


def _quantize_worker(argv: list[str]) -> int:
    """Child process: one quantizer run; prints {"seconds", "peak_rss_mb"} as JSON.

    A process per run so that each quantizer's peak memory is its own (ru_maxrss only grows).
    """
    from deeplab_trt.benchmarks.modelopt_child import peak_rss_mb

    kind, method, fp32, frames, out = argv
    from deeplab_trt.runtime.spec import spec_from_onnx

    if kind == "ours":
        from deeplab_trt.calibration.quantize import quantize_onnx

        method, _, rest = method.partition("+")  # "entropy+fp16": the mixed INT8 + FP16 graph
        t0 = time.perf_counter()
        quantize_onnx(fp32, data=[frames], output=out, method=method, rest=rest or "fp32", progress=False)
        seconds = time.perf_counter() - t0
    else:
        seconds = ort_quantize_static(Path(fp32), Path(out), Path(frames), spec_from_onnx(fp32))
    print(json.dumps({"seconds": seconds, "peak_rss_mb": peak_rss_mb()}))
    return 0


def run_quantizer(kind: str, method: str, fp32: Path, frames: Path, out: Path) -> dict:
    import subprocess

    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--worker", kind, method, str(fp32), str(frames), str(out)],
        capture_output=True,
        text=True,
        cwd=str(ROOT),
    )
    if proc.returncode != 0:
        raise SystemExit(f"{kind} {method} quantization failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _cell(value, fmt: str, scale: float = 1.0) -> str:
    return "—" if value is None else format(scale * value, fmt)


def accuracy_table(rows: dict[str, dict], context: str) -> str:
    """The one Markdown table: accuracy, calibration cost and engine size/build time per row.

    Args:
        rows: row name → record; accuracy keys (``miou``, ``agreement_vs_fp32``, ``ms_per_image``),
            ``calib_s`` / ``calib_peak_rss_mb``, ``onnx_mb``, ``layers``, ``engine`` (a
            :func:`~deeplab_trt.benchmarks.engine_sizes.build_engines` record) and ``note`` are each
            optional: a missing one prints ``—``. The row named ``fp32`` is the Δ reference.
        context: the first line (model, frames, scenes).
    """
    from deeplab_trt.benchmarks.engine_sizes import SIZE_NOTE, engine_cells

    fp32_miou = rows.get("fp32", {}).get("miou")
    lines = [
        context,
        "",
        "| model | mIoU | Δ vs FP32 (points) | agreement with FP32 | calibration wall (s) | calibration peak RSS (MB) "
        "| ONNX MB | ORT CPU ms/img | engine MiB | engine build wall (s) | layers (ONNX types) | note |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for name, r in rows.items():
        miou = r.get("miou")
        delta = None if miou is None or fp32_miou is None else miou - fp32_miou
        size, build = engine_cells(r.get("engine"))
        lines.append(
            f"| {name} | {_cell(miou, '.2f', 100)} | {_cell(delta, '+.2f', 100)} | "
            f"{_cell(r.get('agreement_vs_fp32'), '.2f', 100)} | {_cell(r.get('calib_s'), '.1f')} | "
            f"{_cell(r.get('calib_peak_rss_mb'), '.0f')} | {_cell(r.get('onnx_mb'), '.1f')} | "
            f"{_cell(r.get('ms_per_image'), '.0f')} | {size} | {build} | {r.get('layers', '—')} | "
            f"{r.get('note', '')} |"
        )
    return "\n".join(lines + ["", SIZE_NOTE])


def _engine_targets(models: dict[str, Path], fp32: Path, methods: dict[str, str], frames: Path, num: int):
    """fp32 and fp16 from the FP32 model (``build_engine``'s own FP16 pass), int8 from each Q/DQ graph.

    A mixed INT8 + FP16 graph of ours is built the way a user builds it, ``build --precision int8
    --data`` from the FP32 model (the strongly typed flavours calibrate with the FP16 rest): the
    builder refuses a ready-made Q/DQ graph whose input is FP16 (``plan_precision`` takes an FP16
    input to mean "build with --precision fp16"), so its build time includes its calibration.
    """
    targets = {"fp32": (fp32, "fp32", {}), "fp16": (fp32, "fp16", {})}
    for name, path in models.items():
        method = methods.get(name, "")
        if method.endswith("+fp16"):
            extra = {"data": [str(frames)], "num": num, "method": method.partition("+")[0]}
            targets[name] = (fp32, "int8", extra)
        elif name != "fp32":
            targets[name] = (path, "int8", {})
    return targets


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--onnx", type=Path, default=None, help="FP32 model (default: export the demo model)")
    parser.add_argument("--weights", default="none", help="demo checkpoint (default builder/assets/demo_model.pt)")
    parser.add_argument("--calib-num", type=int, default=64)
    parser.add_argument("--eval-num", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads for evaluation")
    parser.add_argument(
        "--methods",
        default="entropy,percentile,max,entropy+fp16",
        help="ours: METHOD (FP32 rest) or METHOD+fp16 (mixed INT8 + FP16 graph, strongly typed TensorRT)",
    )
    parser.add_argument("--no-ort", action="store_true", help="skip ONNX Runtime's quantize_static")
    parser.add_argument(
        "--modelopt-python",
        default=None,
        help="python of a venv with nvidia-modelopt + CPU onnxruntime: adds ModelOpt contenders (default: skipped)",
    )
    parser.add_argument("--no-engines", action="store_true", help="skip the engine size / build time columns")
    parser.add_argument("--flavour", default="auto", help="TensorRT flavour for the engines (as deeplab-trt build)")
    parser.add_argument("--out", type=Path, default=None, help="write calibration_accuracy.{json,md} here")
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        return _quantize_worker(argv[1:])
    args = parser.parse_args(argv)

    from deeplab_trt.benchmarks.engine_sizes import build_engines, engines_unavailable
    from deeplab_trt.calibration.layer_census import onnx_census
    from deeplab_trt.runtime.spec import spec_from_onnx

    command = "python -m deeplab_trt.benchmarks.calibration_accuracy " + " ".join(
        shlex.quote(a) for a in (argv or sys.argv[1:])
    )
    print(f"command: {command}\nmachine: {machine()}\nload average: {os.getloadavg()}", flush=True)
    engines_skipped = "engines skipped: --no-engines" if args.no_engines else engines_unavailable(args.flavour)
    with tempfile.TemporaryDirectory(prefix="calib_acc_") as tmp:
        tmp = Path(tmp)
        fp32 = args.onnx
        if fp32 is None:
            from deeplab_trt.builder.export import export_onnx

            fp32 = tmp / "demo_lowres.onnx"
            export_onnx(fp32, model="demo", weights=args.weights, head="lowres", progress=False)
        spec = spec_from_onnx(fp32)
        frames = tmp / "calib"
        write_calibration_frames(frames, args.calib_num, spec.input_height, spec.input_width)

        models = {"fp32": fp32}
        methods: dict[str, str] = {}  # row name -> our method ("entropy+fp16": the mixed graph)
        rows: dict[str, dict] = {"fp32": {}}
        runs = [("ours", m) for m in args.methods.split(",") if m] + ([] if args.no_ort else [("ort", "entropy")])
        for kind, method in runs:
            name = f"ours {method.replace('+fp16', ' (fp16 rest)')}" if kind == "ours" else "onnxruntime entropy"
            out = tmp / f"{kind}_{method}.onnx"
            stats = run_quantizer(kind, method, fp32, frames, out)
            rows[name] = {"calib_s": stats["seconds"], "calib_peak_rss_mb": stats["peak_rss_mb"]}
            models[name] = out
            methods[name] = method if kind == "ours" else ""
            print(f"{name}: {stats['seconds']:.1f} s, peak RSS {stats['peak_rss_mb']:.0f} MB", flush=True)
        modelopt_skipped = modelopt_unavailable(args.modelopt_python)
        if modelopt_skipped:
            print(f"contender NVIDIA ModelOpt: {modelopt_skipped}", flush=True)
        else:
            calib_npy = tmp / "calib.npy"
            write_calibration_npy(frames, spec, calib_npy)
            for name, (method, high) in MODELOPT_RUNS.items():
                out = tmp / f"modelopt_{method}_{high}.onnx"
                try:
                    stats = run_modelopt(args.modelopt_python, fp32, calib_npy, method, high, out)
                except RuntimeError as exc:
                    rows[name] = {"note": str(exc)[:200]}
                    print(f"{name}: {exc}", flush=True)
                    continue
                rows[name] = {
                    "calib_s": stats["seconds"],
                    "calib_peak_rss_mb": stats["peak_rss_mb"],
                    "child_ru_maxrss_mb": stats["child_ru_maxrss_mb"],
                    "modelopt_version": stats["modelopt_version"],
                    "note": f"ModelOpt {stats['modelopt_version']}",
                    "fp16_qdq": high == "fp16",
                }
                models[name] = out
                print(f"{name}: {stats['seconds']:.1f} s, peak RSS {stats['peak_rss_mb']:.0f} MB", flush=True)
        for name, path in models.items():
            rows[name].update(onnx_mb=path.stat().st_size / 2**20, layers=onnx_census(path).summary())
        metrics = evaluate_all(models, args.eval_num, args.threads)
        for name in models:
            rows[name].update(metrics[name])
            if rows[name].get("fp16_qdq"):
                rows[name]["note"] += "; " + fp16_qdq_note(rows[name]["agreement_vs_fp32"])
        rows["fp16"] = {"note": "FP16 pass (build_engine); accuracy not evaluated here"}
        if engines_skipped:
            print(engines_skipped, flush=True)
        else:
            engines = build_engines(
                _engine_targets(models, fp32, methods, frames, args.calib_num), tmp / "engines", flavour=args.flavour
            )
            for name, record in engines.items():
                rows[name]["engine"] = record
                if methods.get(name, "").endswith("+fp16"):
                    rows[name]["note"] = "engine: build --precision int8 --data (its build time includes calibration)"
        load = os.getloadavg()

    context = (
        f"{spec.name}, input {spec.input_height}x{spec.input_width}; calibration {args.calib_num} frames; "
        f"evaluation {args.eval_num} held-out scenes; load average after the run {load[0]:.2f} {load[1]:.2f} "
        f"{load[2]:.2f}"
        + (f"; {engines_skipped}" if engines_skipped else "")
        + (f"; ModelOpt {modelopt_skipped}" if modelopt_skipped else "")
    )
    table = accuracy_table(rows, context)
    print(table)
    if args.out:
        from deeplab_trt.runtime.atomic import write_text_atomic

        doc = {
            "command": command,
            "machine": machine(),
            "load_average": list(load),
            "model": spec.name,
            "calib_num": args.calib_num,
            "eval_num": args.eval_num,
            "engines_skipped": engines_skipped,
            "modelopt_skipped": modelopt_skipped,
            "rows": rows,
        }
        write_text_atomic(args.out / "calibration_accuracy.json", json.dumps(doc, indent=1) + "\n")
        write_text_atomic(
            args.out / "calibration_accuracy.md", f"command: `{command}`\n\nmachine: {machine()}\n\n{table}\n"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
