"""Option parsing shared by every subcommand (and the library calls behind them).

Why one module: ``export``, ``build``, ``eval``, ``demo`` and ``scenes`` all take positive
counts and sizes, and ``export --dynamic-batch`` / ``build --batch`` take the same
``MIN:OPT:MAX`` range; one definition keeps their error messages and rules identical.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable

from deeplab_trt.runtime.errors import ToolkitError


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a positive integer") from exc
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a positive integer")
    return value


def parse_batch_range(value: str | Iterable[int] | None, flag: str = "--batch") -> tuple[int, int, int] | None:
    """``"1:4:8"`` or ``(1, 4, 8)`` → (1, 4, 8); ``"4"`` → (4, 4, 4); None → None.

    Checks 1 <= MIN <= OPT <= MAX; anything else is a one-line :class:`ToolkitError` naming ``flag``.
    """
    if value is None or value == "":
        return None
    try:
        values = tuple(int(v) for v in (value.split(":") if isinstance(value, str) else value))
    except (TypeError, ValueError) as exc:
        raise ToolkitError(f"{flag} {value}: expected MIN:OPT:MAX (or N), e.g. 1:4:8") from exc
    if len(values) == 1:
        values = values * 3
    if len(values) != 3:
        raise ToolkitError(f"{flag} {value}: expected MIN:OPT:MAX (or N), e.g. 1:4:8")
    lo, opt, hi = values
    if not 1 <= lo <= opt <= hi:
        raise ToolkitError(f"{flag} {':'.join(map(str, values))}: need 1 <= MIN <= OPT <= MAX")
    return lo, opt, hi


def batch_range(text: str) -> tuple[int, int, int]:
    """argparse type for ``MIN:OPT:MAX``."""
    try:
        return parse_batch_range(text, flag="")  # type: ignore[return-value]
    except ToolkitError as exc:
        raise argparse.ArgumentTypeError(str(exc).strip()) from exc
