"""Every ``--flag`` an error message tells users to pass exists in the ``deeplab-trt`` parser.

Why: error messages are the CLI's documentation at the moment it matters most; a message naming
a flag that was renamed or never existed (once: ``--fp16 block ops``) sends users nowhere. The
scan reads the source (every string in a ``*Error(...)`` call of the project's packages) so new
messages are covered without listing them here.
"""

from __future__ import annotations

import argparse
import ast
import re
from pathlib import Path

from deeplab_trt.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("runtime", "builder", "calibration", "benchmarks", "deeplab_trt")
#: our flags are dashed words; an underscore marks another tool's option (NVRTC's --use_fast_math)
FLAG = re.compile(r"(?<![\w-])(--[a-z][a-z0-9_-]*[a-z0-9])(?![\w-])")


def _parser_flags(parser: argparse.ArgumentParser) -> set[str]:
    flags: set[str] = set()
    for action in parser._actions:
        flags.update(s for s in action.option_strings if s.startswith("--"))
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                flags |= _parser_flags(sub)
    return flags


def _strings(node: ast.AST) -> list[str]:
    """String constants inside an expression (f-string parts included)."""
    return [n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str)]


def _flags_in_error_messages() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            for call in ast.walk(tree):
                if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name)):
                    continue
                if not call.func.id.endswith("Error"):
                    continue
                for arg in call.args:
                    for text in _strings(arg):
                        for flag in FLAG.findall(text):
                            if "_" in flag:
                                continue
                            found.setdefault(flag, []).append(f"{path.relative_to(ROOT)}:{call.lineno}")
    return found


def test_error_messages_name_only_flags_the_parser_has():
    known = _parser_flags(build_parser())
    quoted = _flags_in_error_messages()
    assert quoted, "the scan found no flag in any error message: the scan is broken"
    unknown = {flag: where for flag, where in quoted.items() if flag not in known}
    assert not unknown, f"error messages name flags that deeplab-trt does not have: {unknown}"
