"""What ran a benchmark: CPU, GPU/driver/CUDA, TensorRT and ONNX Runtime facts.

Why its own module: ``bench`` records these in every report and the scripts in
``benchmarks/`` print :func:`machine_line` next to a measured ratio; one place asks the
machine, so a report and a script never describe the same machine differently.
"""

from __future__ import annotations

import contextlib
import os
import platform
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from deeplab_trt.runtime.errors import ToolkitError


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware")):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def cpu_cores() -> int:
    with contextlib.suppress(AttributeError, OSError):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def cuda_device_reason() -> str | None:
    """None when a CUDA device is usable here, else a short reason (asks the flavour module)."""
    from deeplab_trt.runtime.tensorrt_flavour import current_gpu

    cc, why = current_gpu()
    return None if cc is not None else why


def gpu_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "gpu": None,
        "gpu_memory_mb": None,
        "compute_capability": None,
        "driver": None,
        "cuda": None,
    }
    if cuda_device_reason() is not None:
        return info
    from cuda.bindings import runtime as cudart

    with contextlib.suppress(Exception):
        err, prop = cudart.cudaGetDeviceProperties(0)
        if int(err) == 0:
            info["gpu"] = (
                prop.name.decode(errors="replace").rstrip("\x00") if isinstance(prop.name, bytes) else str(prop.name)
            )
            info["gpu_memory_mb"] = round(prop.totalGlobalMem / 2**20, 1)
            info["compute_capability"] = f"{prop.major}.{prop.minor}"
    with contextlib.suppress(Exception):
        err, v = cudart.cudaDriverGetVersion()
        if int(err) == 0:
            info["driver_cuda"] = f"{v // 1000}.{(v % 1000) // 10}"
    with contextlib.suppress(Exception):
        err, v = cudart.cudaRuntimeGetVersion()
        if int(err) == 0:
            info["cuda"] = f"{v // 1000}.{(v % 1000) // 10}"
    with contextlib.suppress(Exception):
        import subprocess

        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        if out.returncode == 0 and out.stdout.strip():
            info["driver"] = out.stdout.strip().splitlines()[0]
    return info


def tensorrt_info() -> dict[str, Any]:
    """TensorRT flavour and version as :func:`deeplab_trt.runtime.tensorrt_flavour.detect` sees them (auto order);
    every installed flavour is listed too (a machine may have TensorRT and TensorRT-RTX)."""
    from deeplab_trt.runtime import tensorrt_flavour as tf

    try:
        found = tf.detect("auto")
    except ToolkitError:
        return {"tensorrt_flavour": None, "tensorrt_version": None, "tensorrt_installed": []}
    return {
        "tensorrt_flavour": found.name,
        "tensorrt_version": found.version_string,
        "tensorrt_installed": [f.label for f in tf.available()],
    }


def environment() -> dict[str, Any]:
    """What ran the benchmark: CPU, GPU/driver/CUDA, TensorRT, ONNX Runtime, numpy, OpenCV."""
    env: dict[str, Any] = {
        "cpu": _cpu_model(),
        "cpu_cores": cpu_cores(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }
    env.update(gpu_info())
    env.update(tensorrt_info())
    try:
        import onnxruntime as ort

        env["onnxruntime"] = ort.__version__
        env["onnxruntime_providers"] = [p for p in ort.get_available_providers() if p != "AzureExecutionProvider"]
    except ImportError:
        env["onnxruntime"], env["onnxruntime_providers"] = None, []
    env["numpy"] = np.__version__
    env["opencv"] = cv2.__version__
    try:
        import onnx

        env["onnx"] = onnx.__version__
    except ImportError:
        env["onnx"] = None
    return env


def machine_line() -> str:
    """One line naming the machine, for scripts that print a measured ratio."""
    env = environment()
    gpu = f"; GPU {env['gpu']}" if env.get("gpu") else "; no GPU"
    return f"{env['cpu']}, {env['cpu_cores']} cores{gpu}; onnxruntime {env.get('onnxruntime')}"
