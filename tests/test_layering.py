"""The layering of DESIGN.md, enforced by scanning every import statement (top level and nested).

Lower layers never import higher ones: a Jetson that installs only the runtime must not need torch,
the builder or the benchmarks. The scan reads source with ``ast`` (nothing is imported), resolves
relative imports against the file's installed package name, and reports every offending line.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# repository folder -> forbidden import prefixes (an exact name or a dotted parent of the import)
FORBIDDEN = {
    "runtime": ("torch", "torchvision", "deeplab_trt.builder", "deeplab_trt.calibration", "deeplab_trt.benchmarks"),
    "calibration": ("torch", "torchvision", "deeplab_trt.builder", "deeplab_trt.benchmarks"),
    "builder": ("deeplab_trt.benchmarks",),
}


def package_of(path: Path) -> list[str]:
    """Installed package parts of a file's folder, e.g. runtime/backends/x.py -> deeplab_trt.runtime.backends."""
    rel = path.relative_to(ROOT).parent.parts
    return ["deeplab_trt", *rel]


def imported_names(path: Path) -> list[tuple[int, str]]:
    """Absolute module names imported anywhere in ``path``, with their line numbers."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # level 1 = this file's package, each further dot one package up
                pkg = package_of(path)[: len(package_of(path)) - (node.level - 1)]
                base = ".".join([*pkg, base] if base else pkg)
            names.append((node.lineno, base))
            # ``from deeplab_trt import builder`` imports a subpackage by attribute
            names += [(node.lineno, f"{base}.{alias.name}") for alias in node.names if alias.name != "*"]
    return names


def violates(name: str, forbidden: tuple[str, ...]) -> bool:
    return any(name == f or name.startswith(f + ".") for f in forbidden)


@pytest.mark.parametrize("folder", sorted(FORBIDDEN))
def test_layering(folder):
    files = sorted((ROOT / folder).rglob("*.py"))
    assert files, f"no Python files under {folder}/"
    bad = [
        f"{path.relative_to(ROOT)}:{line}: imports {name}"
        for path in files
        for line, name in imported_names(path)
        if violates(name, FORBIDDEN[folder])
    ]
    assert not bad, "layering of DESIGN.md broken:\n" + "\n".join(bad)


def test_scan_resolves_relative_and_nested_imports(tmp_path, monkeypatch):
    """The scanner itself: relative imports resolve to deeplab_trt.*, imports inside functions count."""
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    probe = tmp_path / "runtime" / "backends" / "probe.py"
    probe.parent.mkdir(parents=True)
    probe.write_text("from ..errors import ToolkitError\nfrom . import onnxruntime\ndef f():\n    import torch.nn\n")
    names = [name for _, name in imported_names(probe)]
    assert "deeplab_trt.runtime.errors" in names
    assert "deeplab_trt.runtime.backends.onnxruntime" in names
    assert violates("torch.nn", FORBIDDEN["runtime"]) and "torch.nn" in names
