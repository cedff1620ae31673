"""A missing optional dependency is one line naming the extra to install, never a traceback (issue 10 item 6).

Each case hides one module the way an absent install looks to Python (``sys.modules[name] =
None`` makes ``import name`` raise ImportError) and runs the command that needs it through
the CLI: exit code 2 (a ToolkitError), one ``error:`` line with the ``pip install`` that
fixes it, nothing written.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from deeplab_trt.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _hide(monkeypatch, *modules: str) -> None:
    """Make ``import name`` (and of its submodules, even ones an earlier test imported) raise ImportError."""
    for name in modules:
        for loaded in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
            monkeypatch.setitem(sys.modules, loaded, None)
        monkeypatch.setitem(sys.modules, name, None)


def _one_line_error(capsys, rc: int, extra: str) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert rc == 2, err
    assert "Traceback" not in err and len(lines) == 1, err
    assert f"pip install 'deeplab-trt[{extra}]'" in lines[0], err
    return lines[0]


@pytest.mark.parametrize(
    ("hidden", "argv"),
    [
        ("torch", ["--model", "deeplabv3_mobilenet_v3_large", "--height", "64", "--width", "64"]),
        ("torchvision", ["--model", "demo"]),
        ("onnxscript", ["--model", "deeplabv3_mobilenet_v3_large", "--height", "64", "--width", "64", "--opset", "21"]),
    ],
)
def test_export_without_its_extra(monkeypatch, capsys, tmp_path, hidden, argv):
    _hide(monkeypatch, hidden)
    out = tmp_path / "m.onnx"
    line = _one_line_error(capsys, main(["export", *argv, "-o", str(out), "--no-check"]), "export")
    assert f"'{hidden}'" in line
    assert not list(tmp_path.iterdir())


def test_fp16_build_without_the_fp16_pass(monkeypatch, capsys, tmp_path, onnx_factory, rtx_flavour):
    """The issue's case: ``pip install '.[dev,rtx]'`` minus onnxconverter-common, then an FP16 build."""
    model = onnx_factory(head="lowres")
    _hide(monkeypatch, "onnxconverter_common")
    engine = tmp_path / "m.engine"
    argv = ["build", str(model), "--precision", "fp16", "--flavour", "tensorrt-rtx", "--output", str(engine)]
    line = _one_line_error(capsys, main(argv), "fp16")
    assert "the FP16 pass" in line and "'onnxconverter_common'" in line
    assert not list(tmp_path.iterdir())


def test_no_tensorrt_is_a_not_installed_error():
    """In a fresh process: detect()'s cache is shared with the session's flavour fixtures."""
    code = """
import sys
sys.modules.update(dict.fromkeys(["tensorrt", "tensorrt_rtx", "tensorrt_rtx_bindings"], None))
from deeplab_trt.runtime.errors import NotInstalledError
from deeplab_trt.runtime.tensorrt_flavour import detect
for name in ("auto", "tensorrt-rtx"):
    try:
        detect(name)
    except NotInstalledError as exc:
        print(exc)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    auto, rtx = proc.stdout.splitlines()
    assert auto.startswith("no TensorRT found") and "deeplab-trt[rtx]" in auto
    assert rtx.startswith("--flavour tensorrt-rtx: not installed")


def test_the_install_wording_lives_in_require_only():
    """One way to say "install this extra": the sentence is require's; others call it."""
    owners = [
        p.relative_to(ROOT).as_posix()
        for d in ("runtime", "builder", "calibration", "benchmarks", "deeplab_trt")
        for p in sorted((ROOT / d).rglob("*.py"))
        if "which is not installed: pip install" in p.read_text()
    ]
    assert owners == ["runtime/errors.py"]
