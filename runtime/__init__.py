"""deeplab-trt runtime: the deployable core (never imports torch)."""

from importlib import metadata as _metadata

try:  # one version source: pyproject.toml, read back from the installed distribution
    __version__ = _metadata.version("deeplab-trt")
except _metadata.PackageNotFoundError:  # pragma: no cover - a tree that was never installed
    __version__ = "0+unknown"
