"""Segment GPU images that live in someone else's framework, without copies.

Why: an application that already has frames on the GPU (a torch tensor from a decoder, a CuPy
array, a pycuda ``GPUArray``, a DeepStream/VPI buffer exposed through DLPack) should not pay
for a round trip through host memory. :class:`~deeplab_trt.runtime.segmenter.Segmenter` (in the
spirit of jetson-inference's ``segNet``; numpy frames go to its host path) hands device frames to
:class:`DeviceSegmenter`, defined here: it takes any object speaking ``__cuda_array_interface__``
(v3) or DLPack, reads it in place, and returns :class:`~deeplab_trt.runtime.cuda.api.DeviceArray`
results that those frameworks take back the same way::

    seg = Segmenter("model.engine")               # or Segmenter(inference=..., ...)
    labels = seg.segment(frame_tensor)            # H×W uint8 labels on the GPU
    overlay = seg.render(frame_tensor, labels)    # H×W×3 picture (new array) ...
    seg.render(frame_tensor, labels, in_place=True)   # ... or drawn onto the frame itself
    torch.as_tensor(labels, device="cuda")        # zero-copy back into torch (or torch.from_dlpack)
    cupy.asarray(labels)                          # CuPy

Images are uint8 H×W×3 (BGR by default, ``bgr=False`` for RGB) or H×W×4 (BGRx), any row
pitch. Streams: the segmenter's stream waits on the GPU for the input's producer (DLPack
``__dlpack__(stream=...)`` first, else the CAI ``stream``, else — CAI v2 — the legacy default
stream; see :func:`as_device_array`); results are complete on return (``sync=True``,
default) or advertise the segmenter's stream for the consumer to wait on (``sync=False``).

The runtime never imports torch/CuPy/pycuda: the interfaces are read by hand.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from deeplab_trt.runtime.errors import ToolkitError
from deeplab_trt.runtime.preprocess import POLICIES, Geometry

LEGACY_DEFAULT_STREAM = 1  # CAI v3 and DLPack spell the legacy default stream 1 (cudaStreamLegacy)


def _cai_producer_stream(cai: dict) -> int | None:
    """The stream a ``__cuda_array_interface__`` producer's writes are on; None: nothing to wait for.

    Why, by the CAI v3 spec (numba-cuda docs, "CUDA Array Interface (Version 3)", *Synchronization*):
    an integer ``stream`` is the producer's stream and the consumer must order its work after it
    (1 = legacy default stream, 2 = per-thread default stream, any other = a ``cudaStream_t``; 0 is
    disallowed by the spec and is read here as the null stream, i.e. the legacy one);
    ``stream: None`` (or no key in a v3 dict) says no synchronization is needed. A version-2 dict
    (torch's ``__cuda_array_interface__`` today) predates the key: its producer's work may still be
    pending on the legacy default stream, which our non-blocking streams do NOT serialise with, so
    we wait for that stream.
    """
    if "stream" in cai:
        producer = cai["stream"]
        return None if producer is None else int(producer)
    return LEGACY_DEFAULT_STREAM if int(cai.get("version", 0)) < 3 else None


def _wait_for(producer: int | None, stream) -> None:
    """Make our ``stream`` wait (GPU-side, an event) for the work queued so far on ``producer``."""
    from deeplab_trt.runtime.cuda import api

    if producer is not None and stream is not None and producer != stream.handle:
        api._order_streams(producer=producer, consumer=stream.handle)


def as_device_array(obj: Any, stream=None):
    """Wrap a CUDA array (DLPack or ``__cuda_array_interface__``) as a DeviceArray, zero-copy.

    Args:
        obj: a DeviceArray, or any object with ``__dlpack__`` and/or ``__cuda_array_interface__``.
        stream: the :class:`~deeplab_trt.runtime.cuda.api.Stream` our kernels will read ``obj`` on;
            it is ordered after the producer's pending writes so no kernel reads a half-written frame.

    Why DLPack first when an object offers both (torch, CuPy): ``__dlpack__(stream=ours)`` lets the
    producer order its own current stream before ours (Python array API, ``__dlpack__``: the
    producer synchronises for the consumer's ``stream``), which is exact even when its work is on
    a stream the CAI dict does not name (torch reports CAI version 2, without ``stream``). For CAI
    the rules are in :func:`_cai_producer_stream`. A producer whose ``__dlpack__`` takes no
    ``stream`` is treated like a CAI v2 one (we wait for the legacy default stream).
    """
    from deeplab_trt.runtime.cuda import api

    if isinstance(obj, api.DeviceArray):
        _wait_for(None if obj.stream is None else int(obj.stream), stream)
        return obj
    if hasattr(obj, "__dlpack__"):
        return _from_dlpack(obj, stream)
    cai = getattr(obj, "__cuda_array_interface__", None)
    if cai is not None:
        if cai.get("mask") is not None:
            raise ToolkitError("masked CUDA arrays are not supported")
        ptr, readonly = cai["data"]
        _wait_for(_cai_producer_stream(cai), stream)
        return api.DeviceArray(
            int(ptr or 0),
            tuple(cai["shape"]),
            np.dtype(cai["typestr"]),
            strides=cai.get("strides"),
            owner=obj,
            readonly=bool(readonly),
        )
    raise ToolkitError(
        f"expected a CUDA array (torch CUDA tensor, CuPy array, pycuda GPUArray or any "
        f"__cuda_array_interface__/DLPack object), got {type(obj).__module__}.{type(obj).__name__}"
    )


def _from_dlpack(obj: Any, stream):
    """Import ``obj.__dlpack__`` for ``stream`` (the producer orders its work before our stream)."""
    from deeplab_trt.runtime.cuda import api, dlpack

    imported = dlpack.from_dlpack(obj, stream=stream.handle if stream is not None else None)
    if imported.device_type not in (dlpack.kDLCUDA, dlpack.kDLCUDAHost, dlpack.kDLCUDAManaged):
        imported.release()
        raise ToolkitError(
            f"{type(obj).__name__} lives on "
            f"{dlpack.DEVICE_NAMES.get(imported.device_type, imported.device_type)}, "
            "not on a CUDA device (move it to the GPU first)"
        )
    if not imported.stream_ordered:
        _wait_for(LEGACY_DEFAULT_STREAM, stream)
    return api.DeviceArray(
        imported.ptr,
        imported.shape,
        imported.dtype,
        strides=imported.strides,
        owner=imported,
        device_id=imported.device_id,
        readonly=imported.readonly,
    )


def image_layout(image) -> tuple[int, int, int, int]:
    """(height, width, row pitch bytes, pixel stride bytes) of a uint8 H×W×{3,4} device image."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] not in (3, 4):
        raise ToolkitError(f"expected a uint8 H×W×3 (or ×4) image, got shape {image.shape} dtype {image.dtype}")
    row, pixel, channel = image.byte_strides
    if channel != 1 or pixel < 3 or row < pixel * image.shape[1]:
        raise ToolkitError(
            f"image strides {image.byte_strides} are not an interleaved HWC layout "
            "(channels must be contiguous; rows may be padded)"
        )
    return image.shape[0], image.shape[1], row, pixel


class DeviceSegmenter:
    """The GPU path of :class:`~deeplab_trt.runtime.segmenter.Segmenter`: kernels around a DeviceInference.

    Use :class:`~deeplab_trt.runtime.segmenter.Segmenter` (it opens model files and also takes host
    frames); this class is what it runs for device frames. ``inference``: an object with the
    :class:`~deeplab_trt.runtime.cuda.inference.DeviceInference` contract (a TensorRT runner,
    ``HostBackendInference(backend)``, a torch adapter). ``owns_inference``: whether :meth:`close`
    closes it too.
    """

    def __init__(
        self,
        inference,
        *,
        policy: str = "stretch",
        bgr: bool = True,
        alpha: float = 0.5,
        device: int = 0,
        owns_inference: bool = True,
    ):
        from deeplab_trt.runtime.cuda import api
        from deeplab_trt.runtime.cuda.kernels import get_kernels, label_dtype_for

        if policy not in POLICIES:
            raise ToolkitError(f"unknown resize policy {policy!r} (expected one of {', '.join(POLICIES)})")
        self.device = api.use_device(device)
        self.device_index = device
        self.inference = inference
        self.owns_inference = owns_inference
        self.spec = inference.spec
        self.name = inference.name
        self.policy = policy
        self.bgr = bgr
        self.alpha = alpha
        self.label_dtype = np.dtype(label_dtype_for(self.spec))
        self.kernels = get_kernels(device)
        self.stream = api.Stream()
        self._api = api

    # ---- helpers ----------------------------------------------------------------------------
    def _bind(self) -> None:
        """Make this Segmenter's device current on the calling thread (issue 11 item 4).

        Why in every entry point: ``cuLaunchKernel`` runs in the thread's current context, and a
        thread that never bound one (a worker, a web server's pool) or bound another device would
        launch nowhere or on the wrong GPU; ``recheck`` also catches a framework (torch, CuPy) that
        switched the thread's device behind our back. A thread-local check plus ``cudaGetDevice``.
        """
        self._api.use_device(self.device_index, recheck=True)

    def _image(self, image):
        arr = as_device_array(image, self.stream)
        return arr, image_layout(arr)

    def _finish(self, arr, sync: bool):
        if sync:
            self.stream.synchronize()
            arr.stream = None
        else:
            arr.stream = self.stream.handle
        return arr

    def geometry(self, height: int, width: int, policy: str | None = None) -> Geometry:
        return Geometry.compute((height, width), self.spec.input_size, policy or self.policy)

    # ---- API --------------------------------------------------------------------------------
    def preprocess(self, image, *, out=None, policy: str | None = None, bgr: bool | None = None, sync: bool = True):
        """The model input (1×3×H×W, the model's dtype) for ``image``; by default the engine's own buffer.

        ``sync=False``: the result advertises this Segmenter's stream (CAI ``stream``, ``__dlpack__``
        ordering), also when it is the engine's buffer, so a consumer waits for the kernel."""
        self._bind()
        arr, (h, w, pitch, stride) = self._image(image)
        geo = self.geometry(h, w, policy)
        if out is not None:
            target = as_device_array(out, self.stream)
        else:  # a view of the engine's buffer, so advertising our stream (sync=False) leaves the buffer's own record alone
            own = self.inference.input
            target = self._api.DeviceArray(
                own.ptr, own.shape, own.dtype, own.strides, owner=own, device_id=own.device_id
            )
        self.kernels.preprocess(
            arr.ptr,
            h,
            w,
            target.ptr,
            self.spec,
            geo,
            out_dtype=target.dtype,
            frame_pitch=pitch,
            pixel_stride=stride,
            bgr=self.bgr if bgr is None else bgr,
            stream=self.stream.handle,
        )
        return self._finish(target, sync)

    def segment(self, image, *, out=None, policy: str | None = None, bgr: bool | None = None, sync: bool = True):
        """H×W labels at the image's resolution (uint8 up to 256 classes, else int32)."""
        self._bind()
        arr, (h, w, pitch, stride) = self._image(image)
        geo = self.geometry(h, w, policy)
        inf = self.inference
        self.kernels.preprocess(
            arr.ptr,
            h,
            w,
            inf.input.ptr,
            self.spec,
            geo,
            out_dtype=inf.input.dtype,
            frame_pitch=pitch,
            pixel_stride=stride,
            bgr=self.bgr if bgr is None else bgr,
            stream=self.stream.handle,
        )
        inf.enqueue(self.stream)
        labels = as_device_array(out, self.stream) if out is not None else self._api.empty((h, w), self.label_dtype)
        if labels.shape[:2] != (h, w) or labels.dtype not in (np.dtype(np.uint8), np.dtype(np.int32)):
            raise ToolkitError(f"out: expected a {h}×{w} uint8/int32 array, got {labels.shape} {labels.dtype}")
        label_pitch = labels.byte_strides[0] // labels.dtype.itemsize
        self.kernels.labels_from_output(
            inf.output.ptr,
            inf.output.shape[1:],
            inf.output.dtype,
            self.spec,
            geo,
            labels.ptr,
            label_dtype=labels.dtype,
            label_pitch=label_pitch,
            stream=self.stream.handle,
        )
        return self._finish(labels, sync)

    def render(
        self,
        image,
        labels,
        *,
        mode: str = "overlay",
        alpha: float | None = None,
        bgr: bool | None = None,
        out=None,
        in_place: bool = False,
        sync: bool = True,
    ):
        """Overlay / colour mask / grey labels for ``image``; a new H×W×3 array unless ``out``/``in_place``."""
        self._bind()
        arr, (h, w, pitch, stride) = self._image(image)
        lab = as_device_array(labels, self.stream)
        if lab.shape[:2] != (h, w):
            raise ToolkitError(f"labels {lab.shape} do not match the image's {h}×{w}")
        if in_place:
            target, (_, _, out_pitch, out_stride) = arr, (h, w, pitch, stride)
        else:
            target = as_device_array(out, self.stream) if out is not None else self._api.empty((h, w, 3), np.uint8)
            _, _, out_pitch, out_stride = image_layout(target)
            if out_stride != stride:
                raise ToolkitError(f"out has {out_stride} bytes per pixel, the image {stride}")
        channel_order = "BGR" if (self.bgr if bgr is None else bgr) else "RGB"
        self.kernels.render(
            arr.ptr,
            h,
            w,
            lab.ptr,
            self.spec,
            mode=mode,
            alpha=self.alpha if alpha is None else alpha,
            out=target.ptr,
            frame_pitch=pitch,
            out_pitch=out_pitch,
            pixel_stride=stride,
            label_dtype=lab.dtype,
            label_pitch=lab.byte_strides[0] // lab.dtype.itemsize,
            channel_order=channel_order,
            stream=self.stream.handle,
        )
        return self._finish(target, sync)

    def process(
        self,
        image,
        *,
        mode: str = "overlay",
        alpha: float | None = None,
        policy: str | None = None,
        bgr: bool | None = None,
        sync: bool = True,
    ):
        """``(labels, picture)`` in one call (segNet's Process + Overlay)."""
        self._bind()
        labels = self.segment(image, policy=policy, bgr=bgr, sync=False)
        picture = self.render(image, labels, mode=mode, alpha=alpha, bgr=bgr, sync=sync)
        if sync:
            labels.stream = None
        return labels, picture

    def close(self) -> None:
        self._bind()
        self.stream.synchronize()
        self.stream.close()
        if self.owns_inference and hasattr(self.inference, "close"):
            self.inference.close()


def __getattr__(name: str):
    """``interop.Segmenter``: the old import path of :class:`deeplab_trt.runtime.segmenter.Segmenter`."""
    if name == "Segmenter":
        from deeplab_trt.runtime.segmenter import Segmenter

        return Segmenter
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
