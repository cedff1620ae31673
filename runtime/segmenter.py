"""segNet's four verbs on every machine: numpy frames on the host, device arrays on the GPU.

Why one class with two paths: the loop ::

    seg = Segmenter("model.onnx")                  # or "model.engine"
    for frame in source:
        sink.write(seg.render(frame, seg.segment(frame)))

should run unchanged on a laptop without CUDA (ONNX Runtime) and on a Jetson (TensorRT, frames
on the GPU). Each call looks at where its frame lives and results come back in the same place:

* a numpy array (or a CPU DLPack tensor) → the **host path**: the numpy/OpenCV references of
  :mod:`~deeplab_trt.runtime.preprocess` and :mod:`~deeplab_trt.runtime.postprocess` around
  ``backend.infer`` (the same calls as the CPU video loop's ``HostStage``, so the labels equal
  ``deeplab-trt run --backend onnxruntime``'s exactly). Results are numpy arrays.
* a CUDA array (``__cuda_array_interface__``, or DLPack on a CUDA device) → the **GPU path**,
  :class:`~deeplab_trt.runtime.interop.DeviceSegmenter` (kernels, zero-copy, device arrays out).
  It starts on the first device frame: a Segmenter over an ``.onnx`` never touches CUDA until then.

================  ====================================  ==================================================
model             numpy frames                          device frames
================  ====================================  ==================================================
``.onnx``         ONNX Runtime                          kernels + ONNX Runtime through pinned host staging
``.engine``       the TensorRT backend, host I/O        kernels + the engine's own device buffers
``inference=``    ToolkitError (no host entry point)    kernels + that DeviceInference
================  ====================================  ==================================================

Why an error, not a conversion, for numpy frames with ``inference=``: a DeviceInference only
reads and writes device buffers, so serving a host frame would hide an upload of the frame (twice
in segment + render) and a download of every result behind each call; open the model file instead
and the host path runs it. Device frames on an ``.onnx`` do convert (model input and output
cross, the kernels stay on the GPU) because that is the one way ONNX Runtime serves the GPU path.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import numpy as np

from deeplab_trt.runtime.backends.base import ENGINE_SUFFIXES, Backend, open_backend
from deeplab_trt.runtime.errors import ToolkitError
from deeplab_trt.runtime.postprocess import label_dtype_for, labels_from_output, palette_bgr, render
from deeplab_trt.runtime.preprocess import POLICIES, Geometry, preprocess

if TYPE_CHECKING:
    from deeplab_trt.runtime.cuda.inference import DeviceInference
    from deeplab_trt.runtime.interop import DeviceSegmenter

_DLPACK_CPU = 1  # DLDeviceType kDLCPU (deeplab_trt.runtime.cuda.dlpack.kDLCPU)


def host_frame(image: Any, what: str = "image") -> np.ndarray | None:
    """``image`` as a numpy array if it lives in host memory, ``None`` if it is a CUDA array.

    Why not ``np.asarray`` on anything: a device array would become a 0-d object array and fail
    far from here; a CPU DLPack tensor (a torch CPU tensor) is taken without a copy.
    """
    if isinstance(image, np.ndarray):
        return image
    if hasattr(image, "__cuda_array_interface__"):
        return None
    if hasattr(image, "__dlpack_device__"):
        if int(image.__dlpack_device__()[0]) == _DLPACK_CPU:
            return np.from_dlpack(image)
        return None  # a CUDA device (anything else is named by the GPU path's import)
    raise ToolkitError(
        f"{what}: expected a numpy uint8 H×W×3 array or a CUDA array (torch/CuPy/pycuda, any "
        f"__cuda_array_interface__/DLPack object), got {type(image).__module__}.{type(image).__name__}"
    )


def _host_out(out: Any, shape: tuple[int, ...], dtypes: tuple[np.dtype, ...], what: str) -> np.ndarray:
    """``out`` checked as a writeable, C-contiguous numpy array of ``shape`` and one of ``dtypes``."""
    if not isinstance(out, np.ndarray):
        raise ToolkitError(f"{what}: expected a numpy array for a host frame, got {type(out).__name__}")
    if out.shape != shape or out.dtype not in dtypes or not out.flags.writeable or not out.flags.c_contiguous:
        names = "/".join(str(d) for d in dtypes)
        raise ToolkitError(
            f"{what}: expected a writeable contiguous {'×'.join(map(str, shape))} {names} array, "
            f"got {out.shape} {out.dtype}{'' if out.flags.writeable else ' (read-only)'}"
        )
    return out


class _HostPath:
    """The CPU video loop's per-frame steps (``HostStage``), one frame at a time."""

    def __init__(self, backend: Backend):
        self.backend = backend
        self.spec = backend.spec
        self.input_dtype = np.dtype(backend.input_dtype)
        shape = (backend.fixed_batch or 1, 3, self.spec.input_height, self.spec.input_width)
        self.batch = np.zeros(shape, self.input_dtype)
        self.lut_bgr = palette_bgr(self.spec)
        self.lut_rgb = np.ascontiguousarray(self.lut_bgr[:, ::-1])

    def preprocess(self, frame: np.ndarray, *, out: Any, policy: str, bgr: bool) -> np.ndarray:
        if out is not None:
            shape = (1, *self.batch.shape[1:])
            out = _host_out(out, shape if np.ndim(out) == 4 else shape[1:], (self.input_dtype,), "out")
        return preprocess(frame, self.spec, policy, self.input_dtype, bgr, out=out)[0]

    def segment(self, frame: np.ndarray, *, out: Any, policy: str, bgr: bool) -> np.ndarray:
        _, geo = preprocess(frame, self.spec, policy, self.input_dtype, bgr, out=self.batch[0])
        labels = labels_from_output(self.backend.infer(self.batch)[0], self.spec, geo)
        if out is None:
            return labels
        dtypes = (np.dtype(np.int32),) if labels.dtype == np.int32 else (np.dtype(np.uint8), np.dtype(np.int32))
        np.copyto(_host_out(out, labels.shape, dtypes, "out"), labels)
        return out

    def render(
        self, frame: np.ndarray, labels: np.ndarray, *, mode: str, alpha: float, bgr: bool, out: Any, in_place: bool
    ) -> np.ndarray:
        if labels.shape != frame.shape[:2]:
            raise ToolkitError(f"labels {labels.shape} do not match the image's {frame.shape[0]}×{frame.shape[1]}")
        picture = render(frame, labels, self.lut_bgr if bgr else self.lut_rgb, mode, alpha)
        target = frame if in_place else out
        if target is None:
            return picture
        np.copyto(_host_out(target, picture.shape, (np.dtype(np.uint8),), "image" if in_place else "out"), picture)
        return target


class Segmenter:
    """Segment single frames with a model, on the host or on the GPU (after jetson-inference's segNet).

    Verbs: :meth:`preprocess`, :meth:`segment` (labels), :meth:`render` (a picture from labels),
    :meth:`process` (both). Each takes a numpy frame (numpy results) or a CUDA array (device
    results); see the module docstring for which path runs what.
    """

    def __init__(
        self,
        model: str | os.PathLike[str] | Backend | None = None,
        *,
        backend: str = "auto",
        inference: DeviceInference | None = None,
        policy: str = "stretch",
        bgr: bool = True,
        alpha: float = 0.5,
        device: int = 0,
        threads: int | None = None,
    ) -> None:
        """Open ``model`` (or take ``inference=``) for segmenting frames.

        Args:
            model: a ``.onnx`` model or a TensorRT ``.engine``/``.plan`` (with its sidecar), or an
                open :class:`~deeplab_trt.runtime.backends.base.Backend` (not closed by :meth:`close`).
            backend: how to run a model path: ``auto`` (by suffix), ``onnxruntime`` or ``tensorrt``.
            inference: instead of ``model``, a device-only
                :class:`~deeplab_trt.runtime.cuda.inference.DeviceInference` (GPU path only).
            policy: ``stretch`` or ``letterbox`` (per call: ``policy=``).
            bgr: frames are BGR (OpenCV's order); ``False`` for RGB (per call: ``bgr=``).
            alpha: overlay opacity in [0, 1] (per call: ``alpha=``).
            device: the CUDA device of the GPU path and of a TensorRT engine (with an open GPU
                backend: the device it was opened on).
            threads: ONNX Runtime intra-op threads (default: ONNX Runtime's own).
        """
        if policy not in POLICIES:
            raise ToolkitError(f"unknown resize policy {policy!r} (expected one of {', '.join(POLICIES)})")
        if not 0.0 <= alpha <= 1.0:
            raise ToolkitError(f"alpha must be within [0, 1], got {alpha}")
        if (model is None) == (inference is None):
            raise ToolkitError(
                "Segmenter needs a model (a .onnx/.engine path or an open Backend) or inference=, one of them"
            )
        self.policy, self.bgr, self.alpha, self.device_index = policy, bgr, alpha, device
        self.backend: Backend | None = None
        self._owns_backend = False
        self._host: _HostPath | None = None
        self._device: DeviceSegmenter | None = None
        if inference is not None:
            from deeplab_trt.runtime.interop import DeviceSegmenter

            self._device = DeviceSegmenter(inference, policy=policy, bgr=bgr, alpha=alpha, device=device)
            self.spec, self.name = inference.spec, inference.name
        else:
            self.backend = self._open(model, backend=backend, device=device, threads=threads)
            self._host = _HostPath(self.backend)
            self.spec, self.name = self.backend.spec, self.backend.name
        self.label_dtype = label_dtype_for(self.spec)

    def _open(self, model: Any, *, backend: str, device: int, threads: int | None) -> Backend:
        if isinstance(model, (str, os.PathLike)):
            engine = backend == "tensorrt" or str(model).lower().endswith(ENGINE_SUFFIXES)
            opened = open_backend(model, backend, threads=threads, **({"device": device} if engine else {}))
            self._owns_backend = True
            return opened
        if isinstance(model, Backend):
            return model
        raise ToolkitError(
            f"model: expected a .onnx/.engine path or an open Backend, got {type(model).__module__}.{type(model).__name__}"
        )

    # ---- the two paths ----------------------------------------------------------------------
    def _host_path(self) -> _HostPath:
        if self._host is None:
            raise ToolkitError(
                f"{self.name}: Segmenter(inference=...) takes CUDA arrays only, got a host (numpy) frame; "
                "open the model file (Segmenter('model.onnx' or 'model.engine')) for host frames"
            )
        return self._host

    def _gpu(self) -> DeviceSegmenter:
        """The GPU path, started on first use (an ``.onnx`` Segmenter touches no CUDA before)."""
        if self._device is None:
            from deeplab_trt.runtime.interop import DeviceSegmenter

            assert self.backend is not None  # no inference= and no backend cannot be constructed
            try:
                from deeplab_trt.runtime.cuda import api

                api.use_device(self.device_index)
                inference, owns = self.backend.runner, False
                if inference is None:
                    from deeplab_trt.runtime.cuda.inference import HostBackendInference

                    inference, owns = HostBackendInference(self.backend), True
                self._device = DeviceSegmenter(
                    inference,
                    policy=self.policy,
                    bgr=self.bgr,
                    alpha=self.alpha,
                    device=self.device_index,
                    owns_inference=owns,
                )
            except ToolkitError as exc:
                raise ToolkitError(
                    f"{self.name}: a CUDA array needs the GPU path, which cannot start here ({exc}); "
                    "pass numpy frames for the host path"
                ) from exc
        return self._device

    @property
    def stream(self):
        """The GPU path's CUDA stream (starts the GPU path)."""
        return self._gpu().stream

    @property
    def inference(self):
        """The GPU path's :class:`~deeplab_trt.runtime.cuda.inference.DeviceInference` (starts the GPU path)."""
        return self._gpu().inference

    @property
    def kernels(self):
        """The GPU path's kernels (starts the GPU path)."""
        return self._gpu().kernels

    def geometry(self, height: int, width: int, policy: str | None = None) -> Geometry:
        """Where a ``height``×``width`` frame lands in the model input under ``policy``."""
        return Geometry.compute((height, width), self.spec.input_size, policy or self.policy)

    # ---- the four verbs ---------------------------------------------------------------------
    def preprocess(
        self, image: Any, *, out: Any = None, policy: str | None = None, bgr: bool | None = None, sync: bool = True
    ) -> Any:
        """The model input (1×3×H×W of the model's dtype) for ``image``.

        Args:
            image: a uint8 H×W×3 frame (numpy, or a CUDA array: H×W×3/×4, any row pitch).
            out: where to write it (host: a numpy array; GPU: a device array). Default: a new numpy
                array on the host, the engine's own input buffer on the GPU.
            policy: resize policy for this call (default: the Segmenter's).
            bgr: channel order of this frame (default: the Segmenter's).
            sync: GPU path: wait for the result (``False``: it advertises the pending stream).
        """
        policy, bgr = policy or self.policy, self.bgr if bgr is None else bgr
        frame = host_frame(image)
        if frame is None:
            return self._gpu().preprocess(image, out=out, policy=policy, bgr=bgr, sync=sync)
        return self._host_path().preprocess(frame, out=out, policy=policy, bgr=bgr)

    def segment(
        self, image: Any, *, out: Any = None, policy: str | None = None, bgr: bool | None = None, sync: bool = True
    ) -> Any:
        """H×W labels at the image's resolution (uint8 up to 256 classes, else int32).

        Args:
            image: a uint8 H×W×3 frame (numpy, or a CUDA array).
            out: an H×W uint8/int32 array to write the labels into (same place as ``image``).
            policy: resize policy for this call (default: the Segmenter's).
            bgr: channel order of this frame (default: the Segmenter's).
            sync: GPU path: wait for the result (``False``: it advertises the pending stream).
        """
        policy, bgr = policy or self.policy, self.bgr if bgr is None else bgr
        frame = host_frame(image)
        if frame is None:
            return self._gpu().segment(image, out=out, policy=policy, bgr=bgr, sync=sync)
        return self._host_path().segment(frame, out=out, policy=policy, bgr=bgr)

    def render(
        self,
        image: Any,
        labels: Any,
        *,
        mode: str = "overlay",
        alpha: float | None = None,
        bgr: bool | None = None,
        out: Any = None,
        in_place: bool = False,
        sync: bool = True,
    ) -> Any:
        """The picture for ``image`` and its ``labels``: a new H×W×3 uint8 array unless ``out``/``in_place``.

        Args:
            image: the frame the labels belong to (numpy, or a CUDA array).
            labels: H×W labels from :meth:`segment`, in the same place as ``image``.
            mode: ``overlay`` (alpha blend), ``mask`` (palette colours) or ``labels`` (grey levels).
            alpha: overlay opacity for this call (default: the Segmenter's).
            bgr: channel order of this frame (default: the Segmenter's).
            out: an H×W×3 uint8 array to draw into.
            in_place: draw onto ``image`` itself.
            sync: GPU path: wait for the result (``False``: it advertises the pending stream).
        """
        alpha, bgr = self.alpha if alpha is None else alpha, self.bgr if bgr is None else bgr
        frame, host_labels = host_frame(image), host_frame(labels, "labels")
        if (frame is None) != (host_labels is None):
            raise ToolkitError("render: image and labels must live in the same place (both numpy or both CUDA arrays)")
        if frame is None:
            return self._gpu().render(
                image, labels, mode=mode, alpha=alpha, bgr=bgr, out=out, in_place=in_place, sync=sync
            )
        assert host_labels is not None
        return self._host_path().render(frame, host_labels, mode=mode, alpha=alpha, bgr=bgr, out=out, in_place=in_place)

    def process(
        self,
        image: Any,
        *,
        mode: str = "overlay",
        alpha: float | None = None,
        policy: str | None = None,
        bgr: bool | None = None,
        sync: bool = True,
    ) -> tuple[Any, Any]:
        """``(labels, picture)`` in one call (segNet's Process + Overlay).

        Args:
            image: a uint8 H×W×3 frame (numpy, or a CUDA array).
            mode: what :meth:`render` draws (``overlay``, ``mask``, ``labels``).
            alpha: overlay opacity for this call (default: the Segmenter's).
            policy: resize policy for this call (default: the Segmenter's).
            bgr: channel order of this frame (default: the Segmenter's).
            sync: GPU path: wait for both results (``False``: they advertise the pending stream).
        """
        alpha, policy = self.alpha if alpha is None else alpha, policy or self.policy
        bgr = self.bgr if bgr is None else bgr
        if host_frame(image) is None:
            return self._gpu().process(image, mode=mode, alpha=alpha, policy=policy, bgr=bgr, sync=sync)
        labels = self.segment(image, policy=policy, bgr=bgr)
        return labels, self.render(image, labels, mode=mode, alpha=alpha, bgr=bgr)

    def close(self) -> None:
        """Release the GPU path (if started) and the model this Segmenter opened."""
        if self._device is not None:
            self._device.close()
            self._device = None
        if self._owns_backend and self.backend is not None:
            self.backend.close()
            self._owns_backend = False

    def __enter__(self) -> Segmenter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
