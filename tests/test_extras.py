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


#: JetPack 6: Ubuntu 22.04 (glibc 2.35), Python 3.10, aarch64.
JETPACK6_ENV = {"platform_machine": "aarch64", "python_version": "3.10", "python_full_version": "3.10.12"}
JETPACK6_PLATFORMS = ["manylinux2014_aarch64"] + [f"manylinux_2_{v}_aarch64" for v in (17, 26, 27, 28, 31, 34, 35)]


def _requirements_for(env: dict[str, str], extras: tuple[str, ...]) -> list[str]:
    """The requirement strings pip would consider for ``deeplab-trt[extras]`` on a machine like ``env``."""
    Requirement = pytest.importorskip("packaging.requirements").Requirement

    project = _pyproject()["project"]
    reqs = list(project["dependencies"]) + [r for e in extras for r in project["optional-dependencies"][e]]
    kept = []
    for text in reqs:
        req = Requirement(text)
        if req.marker is None or req.marker.evaluate(env):
            req.marker = None
            kept.append(str(req))
    return kept


def test_pip_opencv_is_not_installed_on_aarch64():
    """On a Jetson, pip's OpenCV (no GStreamer) would shadow JetPack's; elsewhere it is a core dependency."""
    jetson = {_dist(r) for r in _requirements_for(JETPACK6_ENV, ("jetpack6",))}
    desktop = {_dist(r) for r in _requirements_for({"platform_machine": "x86_64", "python_version": "3.11"}, ())}
    assert "opencv-python-headless" not in jetson and "opencv-python-headless" in desktop
    assert "opencv-python-headless" in {_dist(r) for r in _requirements_for(JETPACK6_ENV, ("opencv",))}
    assert not {"torch", "torchvision", "tensorrt"} & jetson  # JetPack's tensorrt is a system package


@pytest.mark.slow
def test_jetpack6_install_resolves_to_cuda12_numpy1_and_no_pip_opencv():
    """What ``pip install 'deeplab-trt[jetpack6]'`` would install on JetPack 6 (aarch64, Python 3.10):
    cuda-python 12.x (the CUDA 12.6 driver), numpy 1.x (JetPack's OpenCV and TensorRT bindings are built
    against numpy 1.21), ONNX Runtime, no torch and no pip OpenCV. Resolved for real by pip; skips offline."""
    import json

    if subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True).returncode != 0:
        pytest.skip("pip not available")
    platforms = [arg for p in JETPACK6_PLATFORMS for arg in ("--platform", p)]
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--ignore-installed", "--report", "-"]
        + platforms
        + ["--python-version", "3.10", "--only-binary=:all:"]
        + _requirements_for(JETPACK6_ENV, ("jetpack6",)),
        capture_output=True,
        text=True,
        timeout=300,
    )
    if proc.returncode != 0:
        pytest.skip(f"pip could not resolve (offline?): {proc.stderr.strip().splitlines()[-1:]}")
    report = json.loads(proc.stdout[proc.stdout.index("{") :])
    picked = {i["metadata"]["name"].lower(): i["metadata"]["version"] for i in report["install"]}
    assert picked["cuda-python"].startswith("12."), picked
    assert picked["numpy"].startswith("1."), picked
    assert "onnxruntime" in picked
    assert not [name for name in picked if name.startswith(("opencv", "torch"))], picked


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


def test_missing_opencv_is_one_line_naming_jetpack_and_the_extra():
    """A Jetson venv without --system-site-packages has no cv2 (pip's is not installed on aarch64)."""
    code = (
        "import sys; sys.modules['cv2'] = None\n"
        "from deeplab_trt.cli import main\n"
        "raise SystemExit(main(['run', 'model.onnx', '--source', 'clip.mp4']))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert "python3-opencv" in line and "--system-site-packages" in line and "deeplab-trt[opencv]" in line


def test_opencv_built_for_numpy1_under_numpy2_names_the_fix():
    from deeplab_trt.runtime.errors import opencv_import_hint

    hint = opencv_import_hint(ImportError("numpy.core.multiarray failed to import"))
    assert hint is not None and "numpy<2" in hint and "jetpack6" in hint
    assert opencv_import_hint(ImportError("No module named 'torch'")) is None
