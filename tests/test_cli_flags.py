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

import pytest

from deeplab_trt.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("runtime", "builder", "calibration", "benchmarks", "deeplab_trt")
#: our flags are dashed words; an underscore marks another tool's option (NVRTC's --use_fast_math)
FLAG = re.compile(r"(?<![\w-])(--[a-z][a-z0-9_-]*[a-z0-9])(?![\w-])")


def _parser_flags(parser: argparse.ArgumentParser) -> set[str]:
    flags: set[str] = set()
    for action in parser._actions:
        if action.help == argparse.SUPPRESS:  # a renamed flag (it only says where the option went)
            continue
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


# ----- shared option groups and the batch flags (issue 10 item 5) ---------------------------------
def _commands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


def _describe(parser: argparse.ArgumentParser, groups: tuple[str, ...]) -> dict[str, tuple]:
    """flag -> (action class, type, default, choices, nargs) for the actions of the named groups."""
    return {
        action.option_strings[-1]: (type(action), action.type, action.default, action.choices, action.nargs)
        for group in parser._action_groups
        if group.title in groups
        for action in group._group_actions
    }


CALIBRATION_GROUPS = ("calibration data", "calibration method")


def test_calibrate_and_build_take_the_same_calibration_flags():
    calibrate = _describe(_commands()["calibrate"], CALIBRATION_GROUPS)
    build = _describe(_commands()["build"], CALIBRATION_GROUPS)
    assert calibrate == build
    assert {"--data", "--num", "--every", "--seed", "--policy", "--calib-batch", "--cache"} <= set(build)
    assert {"--method", "--percentile", "--bins", "--exclude", "--quantize-head"} <= set(build)


def test_build_int8_hands_every_calibration_flag_to_the_calibration():
    from deeplab_trt.builder.build_command import build_options

    argv = ["build", "m.onnx", "--precision", "int8", "--data", "a", "b*.png", "--every", "3", "--seed", "7"]
    argv += ["--exclude", "*head*", "--exclude", "/aspp/*", "--policy", "letterbox", "--num", "5"]
    argv += ["--calib-batch", "2", "--method", "percentile", "--percentile", "99.9", "--bins", "1024"]
    argv += ["--quantize-head", "--cache", "m.cache", "--profile-batch", "1:2:4"]
    options = build_options(build_parser().parse_args(argv))
    cal = options.calibration
    assert (cal.data, cal.every, cal.seed, cal.policy, cal.num) == (["a", "b*.png"], 3, 7, "letterbox", 5)
    assert (cal.exclude, cal.batch_size, cal.method, cal.percentile) == (["*head*", "/aspp/*"], 2, "percentile", 99.9)
    assert (cal.bins, cal.quantize_head, cal.cache, options.profile_batch) == (1024, True, "m.cache", (1, 2, 4))
    kwargs = cal.quantize_kwargs()
    assert (kwargs["every"], kwargs["seed"], kwargs["policy"], kwargs["exclude"]) == (3, 7, "letterbox", cal.exclude)


def test_calibrate_defaults_are_the_library_defaults():
    """The CLI's defaults are CalibrationOptions' defaults, and those are quantize_onnx's."""
    import inspect

    from deeplab_trt.calibration.options import CalibrationOptions, calibration_options
    from deeplab_trt.calibration.quantize import quantize_onnx

    parsed = calibration_options(build_parser().parse_args(["calibrate", "m.onnx"]))
    assert parsed == CalibrationOptions()
    params = inspect.signature(quantize_onnx).parameters
    for name, value in CalibrationOptions().quantize_kwargs().items():
        default = params[name].default
        if name in ("data", "exclude"):  # [] here, None / () there: nothing either way
            assert not value and not default, name
        else:
            assert value == default, name


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["build", "m.onnx", "--profile-batch", "1:4:8"], ("profile_batch", (1, 4, 8))),
        (["build", "m.onnx", "--profile-batch", "4"], ("profile_batch", (4, 4, 4))),
        (["calibrate", "m.onnx", "--calib-batch", "4"], ("calib_batch", 4)),
        (["export", "--model", "demo", "-o", "m.onnx", "--batch", "4"], ("batch", 4)),
        (["bench", "m.onnx", "--batch", "4"], ("batch", 4)),
    ],
)
def test_batch_flags(argv, expected):
    name, value = expected
    assert getattr(build_parser().parse_args(argv), name) == value


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["build", "m.onnx", "--batch", "1:4:8"], "--profile-batch"),
        (["calibrate", "m.onnx", "--batch", "4"], "--calib-batch"),
        (["build", "m.onnx", "--profile-batch", "4:2:8"], "MIN <= OPT <= MAX"),
        (["calibrate", "m.onnx", "--calib-batch", "0"], "positive integer"),
    ],
)
def test_renamed_or_bad_batch_flags_fail_with_one_line(argv, named, capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(argv)
    assert exit_info.value.code == 2
    assert named in capsys.readouterr().err.strip().splitlines()[-1]


def test_visible_batch_flag_is_a_model_or_inference_batch_only():
    """--batch is one integer wherever it is shown (export: the model's batch; bench: inference)."""
    shown = {
        name
        for name, command in _commands().items()
        for action in command._actions
        if "--batch" in action.option_strings and action.help != argparse.SUPPRESS
    }
    assert shown == {"export", "bench"}
