"""Write outputs under a temporary name and rename them into place.

Why: an interrupted export, build or video must never leave a file that looks complete.
Every writer in the toolkit (ONNX, engines, sidecars, caches, videos, reports) goes
through :func:`atomic_path`, the one way to do this; directories (a Triton model, a DeepStream
config directory, an unpacked tool) through :func:`atomic_dir`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``final``; rename it to ``final`` only on success.

    The temporary keeps ``final``'s suffix (OpenCV picks the container from it). On any
    exception, KeyboardInterrupt included, the temporary is removed and ``final`` is
    untouched.
    """
    final = Path(final)
    if final.parent and not final.parent.exists():
        final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{final.stem}.", suffix=suffix if suffix is not None else final.suffix, dir=str(final.parent or ".")
    )
    os.close(fd)
    tmp_path = Path(tmp)
    # mkstemp creates 0600; the final file should get the usual permissions (0666 & ~umask).
    umask = os.umask(0o022)
    os.umask(umask)
    try:
        os.chmod(tmp_path, 0o666 & ~umask)
        yield tmp_path
        os.replace(tmp_path, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def write_bytes_atomic(final: str | os.PathLike, data: bytes) -> None:
    with atomic_path(final) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(final: str | os.PathLike, text: str) -> None:
    with atomic_path(final) as tmp:
        tmp.write_text(text)


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty directory next to ``final``; on success it replaces ``final`` whole.

    On any exception the staged directory is removed and ``final`` (if it existed) is untouched.
    An existing ``final`` is moved aside before the rename and deleted after it, so a reader
    never sees a half-replaced directory.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        yield stage
        old = stage.with_name(stage.name + ".old")
        if final.exists():
            os.replace(final, old)
        os.replace(stage, final)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
