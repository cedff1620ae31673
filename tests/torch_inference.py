"""A torch module as a ``DeviceInference`` (tests only: the runtime never imports torch).

Used where a GPU has no TensorRT: the GPU pipeline and the Segmenter run with torch as the
inference step, reading the preprocessing kernel's output and writing the logits the
postprocessing kernels read, all in place through ``__cuda_array_interface__``.
"""

from __future__ import annotations

import numpy as np

from deeplab_trt.runtime.interop import as_device_array
from deeplab_trt.runtime.spec import ModelSpec, voc_palette


def tiny_lowres_model(num_classes: int = 5, seed: int = 0):
    """A small conv net with DeepLab's output form: stride-8 low-resolution logits."""
    import torch

    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, stride=2, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(8, 16, 3, stride=2, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(16, num_classes, 3, stride=2, padding=1),
    ).eval()


def tiny_spec(num_classes: int = 5, size=(64, 96)) -> ModelSpec:
    return ModelSpec(
        "tiny-lowres",
        [f"c{i}" for i in range(num_classes)],
        voc_palette(num_classes),
        size[0],
        size[1],
        head="lowres",
        output_stride=8,
    )


class TorchInference:
    capturable = False
    batch_limits = (1, 1)  # a fixed batch of one (no set_batch)

    def __init__(self, model, spec: ModelSpec, dtype=np.float32):
        import torch

        self.torch = torch
        self.spec = spec
        self.name = "torch (CUDA)"
        self.model = model.cuda().eval()
        tdtype = torch.float16 if np.dtype(dtype) == np.float16 else torch.float32
        if tdtype == torch.float16:
            self.model = self.model.half()
        self._in = torch.zeros((1, 3, spec.input_height, spec.input_width), device="cuda", dtype=tdtype)
        with torch.no_grad():
            y = self._forward()
        self._out = torch.empty_like(y).contiguous()
        torch.cuda.synchronize()
        self.input = as_device_array(self._in)
        self.output = as_device_array(self._out)
        self.input.stream = self.output.stream = None

    def _forward(self):
        y = self.model(self._in)
        return y["out"] if isinstance(y, dict) else y

    def enqueue(self, stream) -> None:
        torch = self.torch
        ext = torch.cuda.ExternalStream(stream.handle)
        with torch.cuda.stream(ext), torch.no_grad():
            self._out.copy_(self._forward())

    def close(self) -> None:
        pass
