"""deeplab-trt runtime: the deployable core (never imports torch)."""

__version__ = "0.1.0"
