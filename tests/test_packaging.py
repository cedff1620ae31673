"""The deployable core works where torch is not installed (Jetson images often lack it).

A subprocess installs an import hook that refuses ``torch``/``torchvision``, then imports the
runtime modules and runs ``deeplab-trt run`` through the real CLI dispatcher.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np

BLOCK_TORCH = textwrap.dedent("""
    import sys

    class BlockTorch:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "torchvision"):
                raise ModuleNotFoundError(f"No module named {name!r} (blocked by test)", name=name)
            return None

    sys.meta_path.insert(0, BlockTorch())
""")


def run_without_torch(code: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", BLOCK_TORCH + textwrap.dedent(code)], capture_output=True, text=True, timeout=timeout
    )


def test_hook_really_blocks_torch():
    proc = run_without_torch("import torch")
    assert proc.returncode != 0 and "blocked by test" in proc.stderr


def test_runtime_imports_without_torch():
    proc = run_without_torch("""
        import deeplab_trt.runtime, deeplab_trt.runtime.spec, deeplab_trt.runtime.preprocess, deeplab_trt.runtime.postprocess, deeplab_trt.runtime.atomic
        import deeplab_trt.runtime.backends, deeplab_trt.runtime.backends.onnxruntime, deeplab_trt.runtime.pipeline, deeplab_trt.runtime.video
        import deeplab_trt.runtime.run_command
        assert not any(m.split(".")[0] in ("torch", "torchvision") for m in sys.modules)
        print("ok")
    """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def test_run_command_without_torch(onnx_factory, tmp_path):
    model = onnx_factory(head="lowres")
    src = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(src), cv2.VideoWriter_fourcc(*"MJPG"), 8.0, (160, 120))
    for i in range(3):
        writer.write(np.full((120, 160, 3), 60 * i, np.uint8))
    writer.release()
    out = tmp_path / "out.mp4"
    proc = run_without_torch(f"""
        from deeplab_trt.cli import main
        rc = main(["run", {str(model)!r}, "--source", {str(src)!r}, "-o", {str(out)!r}, "--no-progress"])
        assert not any(m.split(".")[0] in ("torch", "torchvision") for m in sys.modules)
        raise SystemExit(rc)
    """)
    assert proc.returncode == 0, proc.stderr
    assert "3 frames" in proc.stdout
    assert out.exists()


def test_demo_command_without_torch(tmp_path):
    """``deeplab-trt demo`` on a Jetson-like install: the shipped demo ONNX, never torch (issue 10 item 8)."""
    cache, out = tmp_path / "cache", tmp_path / "demo.avi"
    proc = run_without_torch(f"""
        from deeplab_trt.cli import main
        argv = ["demo", "--frames", "3", "--backend", "onnxruntime", "--no-progress"]
        rc = main(argv + ["--cache-dir", {str(cache)!r}, "--output", {str(out)!r}])
        assert not any(m.split(".")[0] in ("torch", "torchvision") for m in sys.modules)
        raise SystemExit(rc)
    """)
    assert proc.returncode == 0, proc.stderr
    assert "mIoU vs ground truth" in proc.stdout and "3 frames" in proc.stdout
    assert len(list((cache / "demo").glob("*.onnx"))) == 1 and out.exists()


def test_front_door_names_resolve_lazily():
    """Every name in ``deeplab_trt.__all__`` resolves, and importing the package loads none of them."""
    import subprocess
    import sys

    code = (
        "import sys, deeplab_trt\n"
        "heavy = [m for m in ('torch', 'tensorrt', 'tensorrt_rtx', 'onnxruntime', 'deeplab_trt.builder') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "missing = [n for n in deeplab_trt.__all__ if getattr(deeplab_trt, n, None) is None]\n"
        "assert not missing, missing\n"
        "print(len(deeplab_trt.__all__))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) >= 7


# What a regular (non-editable) ``pip install .`` needs from the repository: the mapped package folders.
INSTALL_SOURCES = ("pyproject.toml", "README.md", "deeplab_trt", "runtime", "builder", "calibration", "benchmarks")


def test_regular_install_has_one_namespace(tmp_path):
    """A non-editable install puts nothing under generic top-level names (runtime, builder, ...).

    The project is copied first so setuptools' in-tree ``build/`` (which keeps deleted modules) and the
    checkout's own folders cannot leak in; the check runs with ``-I -S`` and only the install on
    ``sys.path``, so neither the repository nor the editable install can shadow it.
    """
    root = Path(__file__).resolve().parents[1]
    src, site = tmp_path / "src", tmp_path / "site"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build")
    src.mkdir()
    for name in INSTALL_SOURCES:
        if (root / name).is_dir():
            shutil.copytree(root / name, src / name, ignore=ignore)
        else:
            shutil.copy2(root / name, src / name)
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-compile"]
    proc = subprocess.run([*pip, "--target", str(site), str(src)], capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    # Dependencies (numpy, ...) come from their own folders, appended after the install; -S keeps
    # .pth files (the editable install's finder) inactive.
    deps = sorted({str(Path(np.__file__).parents[1]), str(Path(cv2.__file__).parents[1])})
    check = textwrap.dedent(f"""
        import importlib.util, sys
        sys.path.insert(0, {str(site)!r})
        names = ("runtime", "builder", "calibration", "benchmarks")
        generic = [n for n in names if importlib.util.find_spec(n)]
        assert not generic, f"generic top-level names installed: {{generic}}"
        sys.path += {deps!r}
        import deeplab_trt.runtime.spec
        for n in names:
            spec = importlib.util.find_spec("deeplab_trt." + n)
            assert spec and spec.origin.startswith({str(site)!r}), (n, spec)
        assert deeplab_trt.runtime.spec.__file__.startswith({str(site)!r})
        print("ok")
    """)
    proc = subprocess.run(
        [sys.executable, "-I", "-S", "-c", check], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"
