"""pyproject's dependencies and extras match what the code imports (issue 10 item 7, issue 11 item 3).

Why a static check: a declared-but-unused dependency (``onnxslim`` was one) costs every install,
and a core dependency used only by reports (``matplotlib``) bloats the Jetson image; both show up
here as a distribution with no import in the package sources. The dist→module map is explicit
because distribution and import names differ (``opencv-python-headless`` imports as ``cv2``).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")

ROOT = Path(__file__).resolve().parents[1]
SOURCE_DIRS = ("runtime", "builder", "calibration", "benchmarks", "deeplab_trt")

#: Distribution → the top-level module it provides, or a source marker for indirect use.
DIST_USE = {
    "numpy": "numpy",
    "opencv-python-headless": "cv2",
    "onnx": "onnx",
    "onnxruntime": "onnxruntime",
    "tqdm": "tqdm",
    "torch": "torch",
    "torchvision": "torchvision",
    "onnxconverter-common": "onnxconverter_common",
    "cuda-python": "cuda",
    "tensorrt": "tensorrt",
    "tensorrt-rtx-cu13-bindings": "tensorrt_rtx_bindings",
    "matplotlib": "matplotlib",
    "tritonclient": "tritonclient",
    # Imported by torch.onnx.export(dynamo=True) in builder/export.py, not by our code.
    "onnxscript": "dynamo=True",
    # Shared libraries the bindings load; no Python import of their own.
    "tensorrt-rtx-cu13-libs": "tensorrt_rtx_bindings",
}
#: Tools, not imported by the package.
DEV_EXTRA = "dev"


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _dist(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].strip().lower()


def _source_text() -> str:
    return "\n".join(p.read_text() for d in SOURCE_DIRS for p in sorted((ROOT / d).rglob("*.py")))


def _used(marker: str, source: str) -> bool:
    """``marker`` is imported (statement, ``require("m"...)``, or a quoted module name) or appears literally."""
    if not re.fullmatch(r"[A-Za-z_]\w*", marker):
        return marker in source
    name = re.escape(marker)
    return bool(re.search(rf"^\s*(import|from)\s+{name}\b|[\"']{name}[\"'.]", source, flags=re.MULTILINE))


def _declared() -> dict[str, list[str]]:
    project = _pyproject()["project"]
    groups = {"core": project["dependencies"]}
    groups.update({k: v for k, v in project["optional-dependencies"].items() if k != DEV_EXTRA})
    return groups


def test_every_declared_dependency_is_used():
    source = _source_text()
    unused, unmapped = [], []
    for group, reqs in _declared().items():
        for dist in map(_dist, reqs):
            if dist not in DIST_USE:
                unmapped.append(f"{group}:{dist}")
            elif not _used(DIST_USE[dist], source):
                unused.append(f"{group}:{dist}")
    assert not unmapped, f"add these to DIST_USE (distribution → import): {unmapped}"
    assert not unused, f"declared but never imported: {unused}"


def test_used_check_catches_an_unused_dist():
    assert not _used("onnxslim", _source_text())
    assert _used("matplotlib", 'x = require("matplotlib", extra="plots", purpose="p")')


def test_matplotlib_is_an_extra_not_core():
    deps = _pyproject()["project"]
    assert "matplotlib" not in map(_dist, deps["dependencies"])
    assert "matplotlib" in map(_dist, deps["optional-dependencies"]["plots"])


def test_engine_building_extras_bring_the_fp16_pass():
    extras = _pyproject()["project"]["optional-dependencies"]
    for name in ("export", "tensorrt", "rtx"):
        assert "onnxconverter-common" in map(_dist, extras[name]), name


def _cuda_python_spec(extra: str):
    SpecifierSet = pytest.importorskip("packaging.specifiers").SpecifierSet

    (req,) = _pyproject()["project"]["optional-dependencies"][extra]
    assert _dist(req) == "cuda-python"
    return SpecifierSet(req[len("cuda-python") :])


def test_cuda_extras_pin_one_major():
    cuda12, cuda13 = _cuda_python_spec("cuda12"), _cuda_python_spec("cuda13")
    assert "12.6.0" not in cuda12, "12.6.0 has no cuda.bindings"
    assert "12.6.1" in cuda12 and "12.9.2" in cuda12
    assert "13.0.0" not in cuda12 and "13.4.4" not in cuda12
    assert "13.0.0" in cuda13 and "12.9.2" not in cuda13 and "14.0.0" not in cuda13


def test_setup_sh_installs_every_runtime_extra():
    extras = re.search(r'-e "\.\[([^\]]+)\]"', (ROOT / "setup.sh").read_text()).group(1).split(",")
    assert {"export", "cuda13", "rtx", "plots", "dev"} <= set(extras)


@pytest.mark.slow
def test_jetson_resolve_picks_cuda_python_12():
    """pip resolves cuda12 for JetPack 6 (aarch64, Python 3.10) to a 12.x release; skips offline."""
    if subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True).returncode != 0:
        pytest.skip("pip not available")
    spec = str(_cuda_python_spec("cuda12"))
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed"]
        + ["--platform", "manylinux2014_aarch64", "--python-version", "3.10", "--only-binary=:all:"]
        + [f"cuda-python{spec}"],
        capture_output=True,
        text=True,
        timeout=180,
    )
    if proc.returncode != 0:
        pytest.skip(f"pip could not resolve (offline?): {proc.stderr.strip().splitlines()[-1:]}")
    picked = re.search(r"Would install .*?cuda-python-(\S+)", proc.stdout)
    assert picked and picked.group(1).startswith("12."), proc.stdout


def test_missing_matplotlib_names_the_plots_extra(monkeypatch, tmp_path):
    from deeplab_trt.benchmarks import report as bench_report
    from deeplab_trt.calibration import quantize
    from deeplab_trt.runtime.errors import NotInstalledError

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib → ImportError
    with pytest.raises(NotInstalledError, match=r"deeplab-trt\[plots\]"):
        bench_report.write_plot({"results": {}}, tmp_path / "p.png")
    with pytest.raises(NotInstalledError, match=r"deeplab-trt\[plots\]"):
        quantize.quantize_onnx(tmp_path / "absent.onnx", report_dir=tmp_path / "rep")
    assert not (tmp_path / "rep").exists() and not (tmp_path / "p.png").exists()


def test_cuda_messages_name_both_majors():
    from deeplab_trt.runtime.cuda.api import INSTALL_HINT

    assert "deeplab-trt[cuda12]" in INSTALL_HINT and "deeplab-trt[cuda13]" in INSTALL_HINT
    assert "[cuda]" not in _source_text()


def test_bench_plot_without_matplotlib_fails_before_benchmarking(monkeypatch, tmp_path):
    from deeplab_trt.benchmarks import bench, bench_command
    from deeplab_trt.runtime.errors import NotInstalledError

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setattr(bench, "run_bench", lambda *a, **k: pytest.fail("benchmark ran before the plots check"))
    args = bench_command.argparse.Namespace(json=None, markdown=None, plot=tmp_path / "p.png")
    with pytest.raises(NotInstalledError, match=r"--plot .*deeplab-trt\[plots\]"):
        bench_command.run(args)
