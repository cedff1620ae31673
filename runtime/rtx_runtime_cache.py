"""TensorRT-RTX's runtime cache: the kernels it compiles at run time, kept in a file between starts.

Why: TensorRT-RTX compiles its kernels just in time, when an execution context is created and
shapes are first seen; without a cache every start pays that again. Its ``IRuntimeConfig``
(``ICudaEngine.create_runtime_config``) takes an ``IRuntimeCache`` (``create_runtime_cache``,
``set_runtime_cache``) that is filled while the engine runs, ``serialize``\\ d to bytes and
``deserialize``\\ d at the next start (TensorRT-RTX docs, "Working with Runtime Cache").

One file per engine, TensorRT-RTX version and GPU (:func:`cache_file`): the blob is only valid
for the same RTX version and GPU (``deserialize`` validates it and returns False on a mismatch,
which here just means "start a new one"). It lives under the toolkit's cache directory
(:func:`deeplab_trt.runtime.cache_dir.toolkit_cache_root`, ``$XDG_CACHE_HOME/deeplab-trt`` or ``~/.cache/deeplab-trt``) and is
written atomically at close (:mod:`deeplab_trt.runtime.atomic`): a crash never leaves half a
cache. A cache that cannot be read or written costs only the compile time (a warning, never an
error).
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

from deeplab_trt.runtime.atomic import write_bytes_atomic
from deeplab_trt.runtime.cache_dir import toolkit_cache_root

log = logging.getLogger(__name__)

SUBDIR = "tensorrt-rtx-runtime"


def default_dir() -> Path:
    """Where runtime caches go unless the caller names a directory."""
    return toolkit_cache_root() / SUBDIR


def cache_file(
    directory: str | os.PathLike,
    *,
    engine_sha256: str,
    version: str,
    compute_capability: tuple[int, int],
    gpu_name: str,
) -> Path:
    """The cache file of one engine on one GPU with one TensorRT-RTX version (pure).

    Args:
        directory: the cache directory (:func:`default_dir` by default).
        engine_sha256: the engine file's sha256 (from its record).
        version: the TensorRT-RTX version (``Flavour.version_string``).
        compute_capability: the GPU's (major, minor).
        gpu_name: the GPU's name (two SKUs of one compute capability get separate files).
    """
    gpu = re.sub(r"[^A-Za-z0-9]+", "-", gpu_name).strip("-").lower() or "gpu"
    sm = f"sm{compute_capability[0]}{compute_capability[1]}"
    return Path(directory) / f"{engine_sha256[:16]}-rtx{version}-{sm}-{gpu}.cache"


class RuntimeCache:
    """An ``IRuntimeConfig`` with an ``IRuntimeCache`` loaded from ``path``; :meth:`save` writes it back.

    Args:
        engine: the ``ICudaEngine`` (must have ``create_runtime_config``).
        path: the cache file (need not exist).
        source: the engine's name, for messages.
    """

    def __init__(self, engine: Any, path: str | os.PathLike, *, source: str = "engine"):
        self.path = Path(path)
        self.source = source
        self.config = engine.create_runtime_config()
        self.cache = self.config.create_runtime_cache()
        self.loaded = False
        if self.path.is_file():
            try:
                self.loaded = bool(self.cache.deserialize(self.path.read_bytes()))
            except (OSError, RuntimeError, TypeError, ValueError) as exc:
                log.warning("%s: runtime cache %s unreadable (%s); starting a new one", source, self.path, exc)
            if not self.loaded:
                log.info("%s: runtime cache %s is for another GPU or driver; starting a new one", source, self.path)
        if not self.config.set_runtime_cache(self.cache):
            log.warning("%s: TensorRT-RTX refused the runtime cache; kernels compile at every start", source)
        elif self.loaded:
            log.debug("%s: runtime cache loaded from %s", source, self.path)

    def save(self) -> None:
        """Write the cache atomically; failing to is a warning (only the next start's compile time is lost)."""
        try:
            blob = bytes(memoryview(self.cache.serialize()))
        except (RuntimeError, TypeError, ValueError) as exc:
            log.warning("%s: runtime cache not serialised (%s)", self.source, exc)
            return
        try:
            write_bytes_atomic(self.path, blob)
            log.debug("%s: runtime cache saved to %s (%d bytes)", self.source, self.path, len(blob))
        except OSError as exc:
            log.warning("%s: runtime cache %s not saved (%s)", self.source, self.path, exc)
