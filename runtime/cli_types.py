"""Option parsing shared by every subcommand (and the library calls behind them).

Why one module: ``export``, ``build``, ``eval``, ``demo`` and ``scenes`` all take positive
counts and sizes, and ``export --dynamic-batch`` / ``build --profile-batch`` take the same
``MIN:OPT:MAX`` range; one definition keeps their error messages and rules identical.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable

from deeplab_trt.runtime.errors import ToolkitError

#: why ``calibrate --batch`` and ``build --batch`` were renamed (:func:`renamed_flag`'s message)
BATCH_IS_MODEL_BATCH = "--batch is the model's batch (export) or the inference batch (bench)"


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a positive integer") from exc
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a positive integer")
    return value


def renamed_flag(parser: argparse.ArgumentParser, old: str, new: str, *, why: str = "") -> None:
    """A hidden ``old`` flag that stops with one line naming ``new``.

    Why not an alias: the renamed ``--batch`` meant a different batch in each command (export's
    fixed batch, build's profile, calibrate's ONNX Runtime batch); an alias would keep that
    ambiguity, and an unknown-flag error would not say where the option went.

    Args:
        parser: the subcommand's parser.
        old: the former spelling (takes one value, as it did).
        new: the flag to use instead.
        why: appended to the message after a semicolon.
    """

    class Renamed(argparse.Action):
        def __call__(self, parser, namespace, values, option_string=None):
            parser.error(f"{old} was renamed {new}{'; ' + why if why else ''}")

    parser.add_argument(old, action=Renamed, metavar="VALUE", help=argparse.SUPPRESS)


def parse_batch_range(value: str | Iterable[int] | None, flag: str = "batch range") -> tuple[int, int, int] | None:
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


def frame_size(text: str) -> tuple[int, int]:
    """argparse type: ``HxW`` (e.g. ``720x1280``) → (height, width), both >= 1."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: expected HxW, e.g. 720x1280") from exc
    if h < 1 or w < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected HxW with positive sizes")
    return h, w
