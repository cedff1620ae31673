"""The toolkit's cache directory: one definition for every cache (kernels, demo exports, RTX runtime caches).

Why one place: each cache used to spell out ``$XDG_CACHE_HOME`` / ``~/.cache`` itself; now they differ
only in their subdirectory and in the environment variable a user may set to move one of them.
"""

from __future__ import annotations

import os
from pathlib import Path


def toolkit_cache_root() -> Path:
    """``$DEEPLAB_TRT_CACHE``, else ``$XDG_CACHE_HOME/deeplab-trt``, else ``~/.cache/deeplab-trt``."""
    env = os.environ.get("DEEPLAB_TRT_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "deeplab-trt"
