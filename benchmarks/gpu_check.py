"""Everything that needs a GPU, in one command, with one report: ``gpu_check.json`` + ``gpu_check.md``.

Why one prepared command: a GPU is lent to this project rarely and briefly (minutes), so what
must run on one is decided and tested here, on CPU, beforehand. Each check is a function that
returns its numbers (``ok`` among them, default true) or raises; the runner gives each its own
process and time budget, so a check that fails, hangs or crashes the CUDA context is recorded
(traceback text included) and the next one still runs. A check whose needs are missing (no
CUDA device, no torch, no TensorRT) is recorded as skipped with the reason, not run.

    python -m deeplab_trt.benchmarks.gpu_check OUTDIR [--only NAME ...] [--total-budget 480]

Checks: the ``gpu``-marked tests (pytest, JUnit XML read back); kernel numerics against the
numpy references at 1080p and 4K; preprocessing bandwidth against a device-to-device copy (goal
>= 0.7); the fused upsample+argmax against torch ``interpolate`` + ``argmax``; the GPU video
pipeline end to end on a video (the demo model run by torch as the inference step) against the
CPU pipeline (ONNX Runtime); torch/CuPy interop (same pointers, stream order, other threads);
and, where TensorRT imports, engines per precision. Exit code: 0 when nothing failed (skips
allowed), 1 otherwise.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import platform
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]  # the source tree (editable install / run from the tree)
TOTAL_BUDGET_S = 480.0  # the lent machine's 8 minutes
FRAME_SIZES = ((1080, 1920), (2160, 3840))  # 1080p, 4K
MODEL_INPUT = (512, 1024)
CLASSES, STRIDE = 21, 8
BANDWIDTH_GOAL = 0.7


@dataclasses.dataclass(frozen=True)
class Context:
    """What every check gets: where to write, the source tree, its budget, the sizes to use."""

    outdir: Path
    root: Path = ROOT
    budget_s: float = 60.0
    frame_sizes: tuple[tuple[int, int], ...] = FRAME_SIZES
    model_input: tuple[int, int] = MODEL_INPUT
    iters: int = 30
    repeats: int = 5
    frames: int = 48


@dataclasses.dataclass(frozen=True)
class Check:
    """A named check: ``fn(ctx) -> numbers``; ``needs`` are keys of :func:`probe_needs`."""

    name: str
    fn: Callable[[Context], dict]
    needs: tuple[str, ...] = ("cuda",)
    budget_s: float = 60.0
    optional: bool = False


def record(name: str, status: str, *, numbers=None, error=None, reason=None, seconds=0.0, budget_s=0.0) -> dict:
    """One report entry. ``ok``: True passed, False failed/timed out, None skipped."""
    ok = {"passed": True, "skipped": None}.get(status, False)
    return {
        "name": name,
        "ok": ok,
        "status": status,
        "numbers": numbers or {},
        "error": error,
        "reason": reason,
        "seconds": round(seconds, 3),
        "budget_s": budget_s,
    }


# ----------------------------------------------------------------------------------------------
# the runner
# ----------------------------------------------------------------------------------------------
def _child(conn, fn, ctx: Context) -> None:
    try:
        numbers = fn(ctx)
        conn.send(("done", _jsonable(numbers)))
    except BaseException:  # noqa: BLE001 - everything is reported to the parent
        conn.send(("error", traceback.format_exc()))
    finally:
        conn.close()


def run_check(check: Check, ctx: Context, *, isolate: bool = True) -> dict:
    """Run one check within ``ctx.budget_s`` and return its :func:`record`.

    ``isolate``: in a spawned process (killed at the budget; a crash there is a failed check).
    Without it (tests, fakes installed in this process) the budget is only checked afterwards.
    """
    started = time.monotonic()
    if not isolate:
        try:
            numbers = _jsonable(check.fn(ctx))
        except Exception:  # noqa: BLE001 - a failing check is recorded; the next one runs
            return record(
                check.name,
                "failed",
                error=traceback.format_exc(),
                seconds=time.monotonic() - started,
                budget_s=ctx.budget_s,
            )
        seconds = time.monotonic() - started
        if seconds > ctx.budget_s:
            return record(
                check.name,
                "timed out",
                numbers=numbers,
                error=f"took {seconds:.1f} s, over its budget of {ctx.budget_s:g} s",
                seconds=seconds,
                budget_s=ctx.budget_s,
            )
        return _finished(check.name, numbers, seconds, ctx.budget_s)
    mp = multiprocessing.get_context("spawn")
    parent, child = mp.Pipe(duplex=False)
    proc = mp.Process(target=_child, args=(child, check.fn, ctx), name=f"gpu_check:{check.name}")
    proc.start()
    child.close()
    message = None
    if parent.poll(ctx.budget_s):
        try:
            message = parent.recv()
        except EOFError:  # died without a word (segfault, os._exit)
            message = None
    proc.join(timeout=5)
    seconds = time.monotonic() - started
    if proc.is_alive():
        proc.kill()
        proc.join()
    if message is None:
        if seconds >= ctx.budget_s:
            error = f"no result within its budget of {ctx.budget_s:g} s (killed)"
            return record(check.name, "timed out", error=error, seconds=seconds, budget_s=ctx.budget_s)
        error = f"the check's process died without a result (exit code {proc.exitcode})"
        return record(check.name, "failed", error=error, seconds=seconds, budget_s=ctx.budget_s)
    kind, payload = message
    if kind == "error":
        return record(check.name, "failed", error=payload, seconds=seconds, budget_s=ctx.budget_s)
    return _finished(check.name, payload, seconds, ctx.budget_s)


def _finished(name: str, numbers: dict, seconds: float, budget_s: float) -> dict:
    numbers = dict(numbers)
    ok = bool(numbers.pop("ok", True))
    error = None if ok else numbers.pop("why", "a measured number missed its goal (see numbers)")
    return record(name, "passed" if ok else "failed", numbers=numbers, error=error, seconds=seconds, budget_s=budget_s)


def run_checks(
    checks: Sequence[Check],
    ctx: Context,
    *,
    needs: dict[str, str | None],
    total_budget_s: float = TOTAL_BUDGET_S,
    isolate: bool = True,
    log: Callable[[str], None] = print,
) -> list[dict]:
    """Run ``checks`` in order; skip those whose ``needs`` are unmet (``needs[key]`` = why) or that
    find the total budget spent; each runs within min(its budget, what is left of the total)."""
    deadline = time.monotonic() + total_budget_s
    records = []
    for check in checks:
        missing = [needs.get(key) or "" for key in check.needs if needs.get(key, f"unknown need {key!r}") is not None]
        left = deadline - time.monotonic()
        if missing:
            rec = record(check.name, "skipped", reason="; ".join(dict.fromkeys(missing)))
        elif left < 1:
            rec = record(check.name, "skipped", reason=f"the total budget of {total_budget_s:g} s is spent")
        else:
            rec = run_check(check, dataclasses.replace(ctx, budget_s=min(check.budget_s, left)), isolate=isolate)
        rec["optional"] = check.optional  # the TensorRT section: absent TensorRT is no defect
        records.append(rec)
        log(f"{rec['name']}: {rec['status']} ({rec['seconds']:.1f} s){_one_line(rec)}")
    return records


def _one_line(rec: dict) -> str:
    text = rec["reason"] or rec["error"] or ""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return f" - {lines[-1].strip()}" if lines else ""


def _jsonable(value: Any) -> Any:
    """numpy scalars/arrays, tuples and Paths → plain JSON types."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return value


# ----------------------------------------------------------------------------------------------
# what is available
# ----------------------------------------------------------------------------------------------
def probe_needs(root: Path = ROOT) -> dict[str, str | None]:
    """need → None where met, else why not: cuda, torch (with CUDA), cupy, tensorrt, tests."""
    from deeplab_trt.runtime.tensorrt_flavour import current_gpu

    capability, why = current_gpu()
    found: dict[str, str | None] = {"cuda": None if capability else why}
    found["tests"] = None if (root / "tests" / "conftest.py").is_file() else f"no tests/ beside {root}"
    try:
        import torch

        found["torch"] = None if torch.cuda.is_available() else f"torch {torch.__version__} has no CUDA device"
    except ImportError:
        found["torch"] = "torch is not installed"
    try:
        import cupy

        found["cupy"] = None if cupy.cuda.runtime.getDeviceCount() > 0 else "CuPy sees no CUDA device"
    except ImportError:
        found["cupy"] = "CuPy is not installed"
    except Exception as exc:  # noqa: BLE001 - CuPy raises its own CUDA errors without a device
        found["cupy"] = f"CuPy cannot use CUDA ({type(exc).__name__}: {exc})"
    try:
        from deeplab_trt.runtime.errors import ToolkitError
        from deeplab_trt.runtime.tensorrt_flavour import detect

        found["tensorrt"] = None if detect("auto") else "no TensorRT"
    except ToolkitError as exc:
        found["tensorrt"] = str(exc)
    return found


def environment() -> dict:
    """Versions and the device, for the report's header."""
    from deeplab_trt.runtime import __version__
    from deeplab_trt.runtime.tensorrt_flavour import current_gpu

    capability, name = current_gpu()
    env = {
        "deeplab_trt": __version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "gpu": name if capability else None,
        "compute_capability": ".".join(map(str, capability)) if capability else None,
        "command": "python -m deeplab_trt.benchmarks.gpu_check " + " ".join(sys.argv[1:]),
    }
    for module in ("numpy", "cv2", "onnxruntime", "torch", "cupy"):
        try:
            env[module] = __import__(module).__version__
        except Exception:  # noqa: BLE001 - absent or broken: the version is just unknown
            env[module] = None
    return env


# ----------------------------------------------------------------------------------------------
# the report
# ----------------------------------------------------------------------------------------------
def _summary(numbers: dict, limit: int = 4) -> str:
    scalars = [(k, v) for k, v in numbers.items() if isinstance(v, (int, float, str, bool)) and v is not None]
    parts = [f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in scalars[:limit]]
    return ", ".join(parts).replace("|", "/")


def render_markdown(records: Sequence[dict], env: dict) -> str:
    """The Markdown report: environment, one table row per check, then each check's details."""
    counts = {s: sum(r["status"] == s for r in records) for s in ("passed", "failed", "timed out", "skipped")}
    lines = ["# deeplab-trt GPU check", ""]
    lines += [f"- {k}: {v}" for k, v in env.items()]
    lines += ["", "Result: " + ", ".join(f"{n} {s}" for s, n in counts.items()), ""]
    lines += ["| check | status | s | numbers | error / reason |", "|---|---|---|---|---|"]
    for r in records:
        why = _one_line(r)[3:].replace("|", "/")
        lines.append(f"| {r['name']} | {r['status']} | {r['seconds']:.1f} | {_summary(r['numbers'])} | {why} |")
    for r in records:
        lines += ["", f"## {r['name']}: {r['status']}", ""]
        if r["reason"]:
            lines.append(f"Skipped: {r['reason']}")
        if r["numbers"]:
            lines += ["```json", json.dumps(r["numbers"], indent=2), "```"]
        if r["error"]:
            lines += ["```text", r["error"].rstrip(), "```"]
    return "\n".join(lines) + "\n"


def write_report(outdir: str | Path, records: Sequence[dict], env: dict) -> tuple[Path, Path]:
    """Write ``gpu_check.json`` and ``gpu_check.md`` (atomically) into ``outdir``; returns both paths."""
    from deeplab_trt.runtime.atomic import write_text_atomic

    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = outdir / "gpu_check.json", outdir / "gpu_check.md"
    payload = {"environment": env, "checks": list(records)}
    write_text_atomic(json_path, json.dumps(_jsonable(payload), indent=2) + "\n")
    write_text_atomic(md_path, render_markdown(records, env))
    return json_path, md_path


# ----------------------------------------------------------------------------------------------
# the checks
# ----------------------------------------------------------------------------------------------
def parse_junit(path: str | Path) -> dict:
    """Counts and the failed tests (name, first message line) from a pytest JUnit XML file."""
    import xml.etree.ElementTree as ET

    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    counts = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    failed, skipped = [], []
    for case in root.iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        for tag in ("failure", "error"):
            for node in case.findall(tag):
                failed.append({"test": name, "kind": tag, "message": (node.get("message") or "").splitlines()[:1]})
        for node in case.findall("skipped"):
            skipped.append({"test": name, "reason": (node.get("message") or "")[:200]})
    return {**counts, "failed": failed, "skipped_tests": skipped}


def check_gpu_tests(ctx: Context) -> dict:
    """``pytest -m gpu`` on the source tree's tests, in a subprocess, its JUnit XML read back."""
    import subprocess

    xml = ctx.outdir / "gpu_tests.xml"
    command = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", f"--junitxml={xml}"]
    proc = subprocess.run(
        [*command, str(ctx.root / "tests")],
        cwd=ctx.root,
        capture_output=True,
        text=True,
        timeout=max(10.0, ctx.budget_s - 10),
    )
    (ctx.outdir / "gpu_tests.log").write_text(proc.stdout + proc.stderr)
    if not xml.is_file():
        raise RuntimeError(f"pytest wrote no JUnit XML (exit {proc.returncode}): {(proc.stdout + proc.stderr)[-2000:]}")
    found = parse_junit(xml)
    ran = found["tests"] - found["skipped"]
    found["ok"] = proc.returncode == 0 and found["failures"] == found["errors"] == 0 and ran > 0
    found["exit_code"] = proc.returncode
    if not found["ok"]:
        found["why"] = f"{found['failures']} failed, {found['errors']} errors, {ran} ran (see gpu_tests.log)"
    return found


def _cuda():
    from deeplab_trt.runtime.cuda import api
    from deeplab_trt.runtime.cuda.kernels import get_kernels

    api.use_device(0)
    return api, get_kernels(0), api.Stream()


def _bench_spec(classes: int, size: tuple[int, int], head: str = "logits"):
    from deeplab_trt.runtime.spec import ModelSpec, voc_palette

    return ModelSpec("check", [f"c{i}" for i in range(classes)], voc_palette(classes), *size, head=head)


def _fp16_within_ulp(got: np.ndarray, ref: np.ndarray) -> bool:
    """The fp16 rule of tests/test_gpu_kernels.py: within one fp16 ulp (+1e-4) of the reference."""
    err = np.abs(got.astype(np.float64) - ref.astype(np.float64))
    ulp = np.maximum(np.spacing(np.abs(ref)), np.spacing(np.abs(got))).astype(np.float64)
    return bool((err <= ulp + 1e-4).all())


def check_kernel_numerics(ctx: Context) -> dict:
    """Preprocess (≤ 1e-3 fp32, one ulp fp16), upsample+argmax labels (exact) and overlay (exact) vs numpy."""
    from deeplab_trt.benchmarks.gpu_kernels import blob_logits
    from deeplab_trt.runtime.postprocess import palette_bgr, render, upsample_argmax
    from deeplab_trt.runtime.preprocess import Geometry, preprocess

    api, kernels, stream = _cuda()
    rng = np.random.default_rng(0)
    rows, ok = [], True
    ih, iw = ctx.model_input
    lh, lw = -(-ih // STRIDE), -(-iw // STRIDE)
    for fh, fw in ctx.frame_sizes:
        frame = rng.integers(0, 256, (fh, fw, 3), dtype=np.uint8)
        dev = api.to_device(frame)
        spec = _bench_spec(CLASSES, (ih, iw))
        for policy in ("stretch", "letterbox"):
            for dtype in (np.float32, np.float16):
                ref, geo = preprocess(frame, spec, policy, dtype)
                out = api.empty(ref.shape, dtype)
                kernels.preprocess(dev, fh, fw, out, spec, geo, out_dtype=dtype, stream=stream.handle)
                stream.synchronize()
                got = out.copy_to_host()
                err = float(np.abs(got.astype(np.float64) - ref.astype(np.float64)).max())
                good = err <= 1e-3 if dtype == np.float32 else _fp16_within_ulp(got, ref)
                ok &= good
                rows.append(
                    {
                        "step": "preprocess",
                        "frame": [fh, fw],
                        "policy": policy,
                        "dtype": np.dtype(dtype).name,
                        "max_abs_err": err,
                        "ok": good,
                    }
                )
        geo = Geometry.compute((fh, fw), (lh * STRIDE, lw * STRIDE), "stretch")
        for kind, low in (("smooth", blob_logits(CLASSES, lh, lw)), ("random", rng.standard_normal((CLASSES, lh, lw)))):
            for dtype in (np.float32, np.float16):
                host = low.astype(dtype)
                labels = api.empty((fh, fw), np.uint8)
                kernels.upsample_argmax(
                    api.to_device(host), CLASSES, lh, lw, geo, labels, dtype=dtype, stream=stream.handle
                )
                stream.synchronize()
                ref = upsample_argmax(host, geo)
                wrong = int((labels.copy_to_host() != ref).sum())
                ok &= wrong == 0
                rows.append(
                    {
                        "step": "upsample_argmax",
                        "frame": [fh, fw],
                        "logits": kind,
                        "dtype": np.dtype(dtype).name,
                        "labels_differing": wrong,
                        "ok": wrong == 0,
                    }
                )
        labels_host = rng.integers(0, CLASSES, (fh, fw)).astype(np.uint8)
        kernels.render(dev, fh, fw, api.to_device(labels_host), spec, mode="overlay", alpha=0.5, stream=stream.handle)
        stream.synchronize()
        wrong = int((dev.copy_to_host() != render(frame, labels_host, palette_bgr(spec), "overlay", 0.5)).sum())
        ok &= wrong == 0
        rows.append({"step": "overlay", "frame": [fh, fw], "values_differing": wrong, "ok": wrong == 0})
    bad = [r for r in rows if not r["ok"]]
    return {
        "ok": ok,
        "cases": len(rows),
        "failed_cases": len(bad),
        "rows": rows,
        **({"why": f"{len(bad)} cases off: {bad[:3]}"} if bad else {}),
    }


def check_kernel_bandwidth(ctx: Context) -> dict:
    """Preprocess at frame size (every pixel read once) vs a device-to-device copy; goal >= 0.7 of it."""
    from deeplab_trt.benchmarks.gpu_kernels import copy_bandwidth, preprocess_bandwidth
    from deeplab_trt.runtime.preprocess import Geometry

    api, kernels, stream = _cuda()
    copy_gbs = copy_bandwidth(api, stream, 256 << 20, max(5, ctx.iters // 5), ctx.repeats)
    rng = np.random.default_rng(0)
    rows = []
    for fh, fw in ctx.frame_sizes:
        frame = api.to_device(rng.integers(0, 256, (fh, fw, 3), dtype=np.uint8))
        spec = _bench_spec(CLASSES, (fh, fw))
        geo = Geometry.compute((fh, fw), (fh, fw), "stretch")
        for dtype in (np.float32, np.float16):
            rows.append(
                preprocess_bandwidth(
                    api,
                    kernels,
                    stream,
                    frame,
                    spec,
                    geo,
                    dtype,
                    copy_gbs=copy_gbs,
                    iters=ctx.iters,
                    repeats=ctx.repeats,
                )
            )
    worst = min(r["ratio_to_memcpy"] for r in rows)
    numbers = {
        "ok": worst >= BANDWIDTH_GOAL,
        "memcpy_d2d_gbs": copy_gbs,
        "worst_ratio": worst,
        "goal": BANDWIDTH_GOAL,
        "rows": rows,
    }
    if worst < BANDWIDTH_GOAL:
        numbers["why"] = f"preprocess reaches {worst:.2f} of memcpy bandwidth (goal {BANDWIDTH_GOAL})"
    return numbers


def check_upsample_vs_torch(ctx: Context) -> dict:
    """Fused upsample+argmax vs torch ``F.interpolate(bilinear) + argmax`` on the same stream: time ratio, agreement."""
    import torch
    import torch.nn.functional as F

    from deeplab_trt.benchmarks.gpu_kernels import blob_logits, time_ms
    from deeplab_trt.runtime.preprocess import Geometry

    api, kernels, stream = _cuda()
    rng = np.random.default_rng(0)
    ih, iw = ctx.model_input
    lh, lw = -(-ih // STRIDE), -(-iw // STRIDE)
    ext = torch.cuda.ExternalStream(stream.handle)
    rows = []
    for fh, fw in ctx.frame_sizes:
        geo = Geometry.compute((fh, fw), (lh * STRIDE, lw * STRIDE), "stretch")
        for kind, low in (("smooth", blob_logits(CLASSES, lh, lw)), ("random", rng.standard_normal((CLASSES, lh, lw)))):
            for dtype in (np.float32, np.float16):
                host = low.astype(dtype)
                logits, labels = api.to_device(host), api.empty((fh, fw), np.uint8)

                def ours(logits=logits, labels=labels, geo=geo, dtype=dtype):
                    kernels.upsample_argmax(logits, CLASSES, lh, lw, geo, labels, dtype=dtype, stream=stream.handle)

                t = torch.as_tensor(host, device="cuda")[None]

                def theirs(t=t, fh=fh, fw=fw):
                    with torch.cuda.stream(ext):
                        return (
                            F.interpolate(t, size=(fh, fw), mode="bilinear", align_corners=False)
                            .argmax(1)
                            .to(torch.uint8)
                        )  # noqa: B023

                ms = time_ms(api, stream, ours, ctx.iters, ctx.repeats)
                torch_ms = time_ms(api, stream, theirs, ctx.iters, ctx.repeats)
                with torch.cuda.stream(ext):
                    reference = F.interpolate(t.float(), size=(fh, fw), mode="bilinear", align_corners=False).argmax(1)[
                        0
                    ]
                stream.synchronize()
                agree = float((torch.as_tensor(labels, device="cuda") == reference.to(torch.uint8)).float().mean())
                rows.append(
                    {
                        "frame": [fh, fw],
                        "logits": kind,
                        "dtype": np.dtype(dtype).name,
                        "ms": ms,
                        "torch_ms": torch_ms,
                        "speedup_vs_torch": torch_ms / ms,
                        "agreement_with_torch": agree,
                    }
                )
    worst_agree = min(r["agreement_with_torch"] for r in rows)
    numbers = {
        "ok": worst_agree >= 0.999,
        "min_speedup": min(r["speedup_vs_torch"] for r in rows),
        "min_agreement": worst_agree,
        "rows": rows,
    }
    if worst_agree < 0.999:
        numbers["why"] = f"labels agree with torch on only {worst_agree:.5f} of pixels"
    return numbers


class _Collect:
    """A sink keeping every written picture (labels mode: class ids as grey)."""

    description = "collect"
    wants_stop = False

    def __init__(self):
        self.pictures: list[np.ndarray] = []
        self.frames = 0

    def write(self, frame: np.ndarray) -> None:
        self.pictures.append(frame[..., 0].copy() if frame.ndim == 3 else frame.copy())
        self.frames += 1

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass


def _demo_video(ctx: Context, size=(360, 640)) -> Path:
    """A street-scene clip (benchmarks/scenes.py) written with OpenCV and decoded back, as users' files are."""
    import cv2

    from deeplab_trt.benchmarks.scenes import render_video

    path = ctx.outdir / "work" / "scenes.avi"
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), 25.0, (size[1], size[0]))
    for frame, _labels in render_video(seed=3, n_frames=ctx.frames, size=size):
        writer.write(frame)
    writer.release()
    return path


def _demo_model(ctx: Context):
    """(exported low-res demo ONNX path, its ModelSpec, the torch module computing the same head)."""
    from deeplab_trt.builder.export import export_onnx, make_export_module
    from deeplab_trt.builder.models import build_model

    onnx_path = ctx.outdir / "work" / "demo_lowres.onnx"
    onnx_path.parent.mkdir(parents=True, exist_ok=True)
    spec = export_onnx(onnx_path, model="demo", head="lowres", progress=False)
    built = build_model("demo")
    return onnx_path, spec, make_export_module(built.net, "lowres", spec.input_size)


def _agreement(a: Sequence[np.ndarray], b: Sequence[np.ndarray]) -> float:
    return float(np.mean([np.mean(x == y) for x, y in zip(a, b)])) if a and len(a) == len(b) else 0.0


def check_video_pipeline(ctx: Context) -> dict:
    """GPU pipeline (CUDA kernels, the demo model in torch on the pipeline's stream) vs the CPU pipeline (ORT)."""
    import torch

    sys.path.insert(0, str(ctx.root / "tests"))
    from torch_inference import TorchInference

    from deeplab_trt.runtime import gpu_pipeline
    from deeplab_trt.runtime.backends import open_backend
    from deeplab_trt.runtime.pipeline import RunOptions
    from deeplab_trt.runtime.pipeline import run_video as cpu_run_video
    from deeplab_trt.runtime.video import open_source

    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False  # FP32 against FP32
    clip = _demo_video(ctx)
    onnx_path, spec, module = _demo_model(ctx)
    options = RunOptions(mode="labels", policy="stretch", progress=False)
    cpu_sink, gpu_sink = _Collect(), _Collect()
    with open_backend(onnx_path, "onnxruntime") as backend, open_source(clip) as source:
        cpu_stats = cpu_run_video(backend, source, [cpu_sink], options)

    class TorchBackend:  # what the loop reads from a backend when the inference step is given
        name = "torch (CUDA) stand-in"

    TorchBackend.spec = spec
    inference = TorchInference(module, spec)
    with open_source(clip) as source:
        gpu_stats = gpu_pipeline.run_video(TorchBackend(), source, [gpu_sink], options, inference=inference)
    agree = _agreement(cpu_sink.pictures, gpu_sink.pictures)
    numbers = {
        "ok": gpu_stats.frames == cpu_stats.frames == ctx.frames and agree >= 0.99,
        "frames": gpu_stats.frames,
        "label_agreement_gpu_vs_cpu": agree,
        "gpu_pipeline": gpu_stats.pipeline,
        "gpu_fps": gpu_stats.fps,
        "cpu_fps": cpu_stats.fps,
        "gpu_ms_per_frame": gpu_stats.to_dict().get("ms_per_frame"),
    }
    if not numbers["ok"]:
        numbers["why"] = f"{gpu_stats.frames}/{cpu_stats.frames} frames, labels agree on {agree:.4f} (need 0.99)"
    return numbers


def _step(results: dict, name: str, fn: Callable[[], bool]) -> None:
    """One interop sub-check: True / False / the exception's last line."""
    try:
        results[name] = bool(fn())
    except Exception as exc:  # noqa: BLE001 - recorded, the other sub-checks still run
        results[name] = f"{type(exc).__name__}: {exc}"


def check_interop(ctx: Context) -> dict:
    """torch / CuPy in and out without copies (same pointers), ordered after the producer's stream,
    from another thread, with pending work advertised (issue 11 items 2, 4, 7, 8)."""
    import threading

    import torch

    sys.path.insert(0, str(ctx.root / "tests"))
    from torch_inference import TorchInference, tiny_lowres_model, tiny_spec

    from deeplab_trt.runtime.cuda import api, dlpack
    from deeplab_trt.runtime.interop import Segmenter, as_device_array
    from deeplab_trt.runtime.postprocess import labels_from_output
    from deeplab_trt.runtime.preprocess import preprocess

    api.use_device(0)
    spec = tiny_spec()
    seg = Segmenter(inference=TorchInference(tiny_lowres_model(), spec), policy="letterbox")
    rng = np.random.default_rng(1)
    h, w = 720, 1280
    frame = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)

    def expected_labels(host_frame):
        x, geo = preprocess(host_frame, spec, "letterbox")
        with torch.no_grad():
            logits = seg.inference.model(torch.from_numpy(x).cuda()).cpu().numpy()[0]
        return labels_from_output(logits, spec, geo)

    reference = expected_labels(frame)
    src = torch.from_numpy(frame).cuda()
    torch.cuda.synchronize()
    results: dict[str, Any] = {}

    def same(labels) -> bool:  # GPU preprocessing is ~1e-5 off OpenCV: a rare near-tie may flip
        return float(np.mean(labels.copy_to_host() == reference)) >= 0.999

    def torch_pointers():
        t = torch.zeros((h, w, 3), dtype=torch.uint8, device="cuda")
        ours = api.to_device(np.arange(6, dtype=np.int32))
        return (
            as_device_array(t).ptr == t.data_ptr()
            and torch.as_tensor(ours, device="cuda").data_ptr() == ours.ptr
            and torch.from_dlpack(ours).data_ptr() == ours.ptr
        )

    def torch_side_stream():  # DLPack: our stream waits for torch's current (side) stream
        side = torch.cuda.Stream()
        target = torch.zeros_like(src)
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            torch.cuda._sleep(200_000_000)  # ~0.1 s of GPU time before the frame is written
            target.copy_(src)
            labels = seg.segment(target)
        return same(labels)

    def torch_legacy_default_stream():  # CAI v2 without "stream": ready on the legacy default stream
        target = torch.zeros_like(src)
        torch.cuda._sleep(200_000_000)
        target.copy_(src)

        class OnlyCAI:
            __cuda_array_interface__ = target.__cuda_array_interface__

        return same(seg.segment(OnlyCAI()))

    def other_thread():  # item 4: the CUDA context is bound in whatever thread calls
        box = {}
        thread = threading.Thread(target=lambda: box.setdefault("labels", seg.segment(src)))
        thread.start()
        thread.join(60)
        return same(box["labels"])

    def pending_preprocess():  # item 7: sync=False output advertises its stream; torch waits on it
        out = seg.preprocess(src, sync=False)
        got = torch.as_tensor(out, device="cuda").cpu().numpy()
        x, _ = preprocess(frame, spec, "letterbox")
        return float(np.abs(got - x).max()) <= 1e-3

    def device_ordinal():  # item 8
        arr = api.to_device(np.arange(4, dtype=np.float32))
        return arr.__dlpack_device__() == (dlpack.kDLCUDA, 0) and torch.from_dlpack(arr).device == torch.device(
            "cuda", 0
        )

    def cupy_pointers_and_stream():
        import cupy

        x = cupy.asarray(frame)
        ours = api.to_device(np.ones((2, 3), np.float32))
        pointers = as_device_array(x).ptr == x.data.ptr and cupy.asarray(ours).data.ptr == ours.ptr
        cupy.cuda.Device().synchronize()
        side = cupy.cuda.Stream(non_blocking=True)
        with side:
            big = cupy.zeros((64, h, w, 3), dtype=cupy.uint8)
            for _ in range(4):
                big += 1  # GPU work queued ahead of the frame on the side stream
            target = cupy.asarray(frame) + (big[-1] - 4)
            labels = seg.segment(target)
        return pointers and same(labels)

    for name, fn in (
        ("torch_zero_copy", torch_pointers),
        ("torch_side_stream_ordered", torch_side_stream),
        ("torch_legacy_stream_cai_ordered", torch_legacy_default_stream),
        ("segment_from_another_thread", other_thread),
        ("preprocess_sync_false_advertises_stream", pending_preprocess),
        ("dlpack_device_ordinal", device_ordinal),
        ("cupy_zero_copy_and_stream_ordered", cupy_pointers_and_stream),
    ):
        _step(results, name, fn)
    seg.close()
    bad = [k for k, v in results.items() if v is not True]
    return {"ok": not bad, **results, **({"why": f"failed: {', '.join(bad)}"} if bad else {})}


def check_tensorrt_engines(ctx: Context) -> dict:
    """Where TensorRT imports: build fp32/fp16/int8 engines of the demo model, run them, agree with ORT."""
    import cv2

    from deeplab_trt.benchmarks.scenes import render_video
    from deeplab_trt.builder.engine import BuildOptions, build_engine
    from deeplab_trt.runtime.backends import open_backend
    from deeplab_trt.runtime.postprocess import labels_from_output
    from deeplab_trt.runtime.preprocess import preprocess

    onnx_path, spec, _module = _demo_model(ctx)
    frames = [f for f, _ in render_video(seed=5, n_frames=16, size=spec.input_size)]
    data = ctx.outdir / "work" / "calib"
    data.mkdir(parents=True, exist_ok=True)
    for i, frame in enumerate(frames):
        cv2.imwrite(str(data / f"{i:03d}.png"), frame)

    def labels_of(backend):
        out = []
        for frame in frames:
            x, geo = preprocess(frame, backend.spec, "stretch", backend.input_dtype)
            out.append(labels_from_output(backend.infer(x)[0], backend.spec, geo))
        return out

    with open_backend(onnx_path, "onnxruntime") as ort:
        reference = labels_of(ort)
    rows, ok = [], True
    for precision in ("fp32", "fp16", "int8"):
        engine = ctx.outdir / "work" / f"demo_{precision}.engine"
        row: dict[str, Any] = {"precision": precision}
        try:
            started = time.perf_counter()
            options = BuildOptions(precision=precision, data=[str(data)] if precision == "int8" else [], progress=False)
            build_engine(onnx_path, engine, options)
            row["build_s"] = time.perf_counter() - started
            with open_backend(engine) as backend:
                got = labels_of(backend)
                started = time.perf_counter()
                labels_of(backend)
                row["ms_per_frame_host_loop"] = (time.perf_counter() - started) * 1e3 / len(frames)
            row["agreement_with_ort_fp32"] = _agreement(reference, got)
            row["ok"] = row["agreement_with_ort_fp32"] >= (0.99 if precision != "int8" else 0.95)
        except Exception as exc:  # noqa: BLE001 - one precision failing does not hide the others
            row.update(ok=False, error=f"{type(exc).__name__}: {exc}")
        ok &= row["ok"]
        rows.append(row)
    return {"ok": ok, "rows": rows, **({} if ok else {"why": f"{[r for r in rows if not r['ok']]}"})}


CHECKS = (
    Check("gpu_tests", check_gpu_tests, needs=("cuda", "tests"), budget_s=200),
    Check("kernel_numerics", check_kernel_numerics, needs=("cuda",), budget_s=90),
    Check("kernel_bandwidth", check_kernel_bandwidth, needs=("cuda",), budget_s=45),
    Check("upsample_argmax_vs_torch", check_upsample_vs_torch, needs=("cuda", "torch"), budget_s=45),
    Check("video_pipeline", check_video_pipeline, needs=("cuda", "torch", "tests"), budget_s=90),
    Check("interop", check_interop, needs=("cuda", "torch", "cupy", "tests"), budget_s=60),
    Check("tensorrt_engines", check_tensorrt_engines, needs=("cuda", "tensorrt"), budget_s=120, optional=True),
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m deeplab_trt.benchmarks.gpu_check", description=__doc__.splitlines()[0]
    )
    parser.add_argument("outdir", type=Path, help="where gpu_check.json, gpu_check.md (and work files) go")
    parser.add_argument("--only", nargs="+", choices=[c.name for c in CHECKS], help="run only these checks")
    parser.add_argument(
        "--total-budget", type=float, default=TOTAL_BUDGET_S, help="seconds for all checks (default 480)"
    )
    args = parser.parse_args(argv)
    args.outdir.mkdir(parents=True, exist_ok=True)
    checks = [c for c in CHECKS if not args.only or c.name in args.only]
    needs = probe_needs()
    print(f"gpu_check: {len(checks)} checks, {args.total_budget:g} s in all -> {args.outdir}", flush=True)
    records = run_checks(checks, Context(outdir=args.outdir), needs=needs, total_budget_s=args.total_budget)
    json_path, md_path = write_report(args.outdir, records, environment())
    print(f"wrote {json_path} and {md_path}")
    return 0 if all(r["status"] in ("passed", "skipped") for r in records) else 1


if __name__ == "__main__":
    # Run the imported module, not this __main__ copy: spawned check processes unpickle each check
    # function by its module's name, which must be the importable one.
    from deeplab_trt.benchmarks.gpu_check import main as _main

    raise SystemExit(_main())
