"""The "segmenter" model inside Triton's python backend: raw frames in, labels (and overlay) out.

Why in the runtime: the model that Triton serves is the toolkit's own deployable core -- the same
:func:`~deeplab_trt.runtime.backends.open_backend`, :func:`~deeplab_trt.runtime.preprocess.preprocess`
and :func:`~deeplab_trt.runtime.postprocess.labels_from_output` as ``deeplab-trt run`` -- so served
labels equal in-process labels by construction, and the ``model.py`` that ``deeplab-trt deploy
triton`` writes is a three-line shim that imports :class:`TritonPythonModel` from here.

Triton's dynamic batcher hands ``execute`` a *list* of requests (the python backend does not
concatenate them): :func:`segment_frames` stacks the frames of all of them and infers in chunks
the model accepts (its fixed batch, or ``max_batch``), then the labels are split back per request.

``triton_python_backend_utils`` exists only inside Triton's stub process; it is imported in
:meth:`TritonPythonModel.initialize`, so this module imports (and :func:`segment_frames` is tested)
anywhere.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from deeplab_trt.runtime.backends.base import ENGINE_SUFFIXES
from deeplab_trt.runtime.errors import ToolkitError
from deeplab_trt.runtime.postprocess import labels_from_output, overlay, palette_bgr
from deeplab_trt.runtime.preprocess import POLICIES, check_frame, preprocess

log = logging.getLogger(__name__)

FRAMES, LABELS, OVERLAY = "FRAMES", "LABELS", "OVERLAY"


def segment_frames(
    backend: Any, frames: Sequence[np.ndarray], *, policy: str = "stretch", max_batch: int | None = None
) -> list[np.ndarray]:
    """Labels (H×W, the frame's size) for each BGR frame, inferring several frames per backend call.

    Numerics are the references' (:func:`preprocess` into the batch, :func:`labels_from_output`
    per image); only the batching differs from ``deeplab-trt run``.

    Args:
        backend: an open :class:`~deeplab_trt.runtime.backends.base.Backend`.
        frames: uint8 H×W×3 BGR frames (any sizes: each is resized to the model input).
        policy: ``stretch`` or ``letterbox``.
        max_batch: most frames per inference (a backend with a fixed batch uses exactly that).
    """
    spec = backend.spec
    step = backend.fixed_batch or max(1, int(max_batch or len(frames) or 1))
    labels: list[np.ndarray] = []
    for start in range(0, len(frames), step):
        chunk = frames[start : start + step]
        batch = np.zeros((backend.fixed_batch or len(chunk), 3, *spec.input_size), backend.input_dtype)
        geos = [preprocess(f, spec, policy, backend.input_dtype, out=batch[i])[1] for i, f in enumerate(chunk)]
        output = backend.infer(batch)
        labels.extend(labels_from_output(output[i], spec, geo) for i, geo in enumerate(geos))
    return labels


def segment_frames_on_gpu(segmenter: Any, frames: Sequence[np.ndarray], *, overlay: bool) -> tuple[list, list | None]:
    """A GPU instance's work: per frame, one upload, then the CUDA kernels (preprocess into the engine's
    input, inference, fused upsample+argmax, overlay in place); only labels (and the overlay) come back.

    Why not :func:`segment_frames` on a GPU instance: that is the host path (numpy pre/post-processing
    around the engine's host I/O), which leaves the kernels idle and moves the model input and the
    logits across the bus instead of the frame and its labels.

    Args:
        segmenter: a :class:`~deeplab_trt.runtime.segmenter.Segmenter` over the engine.
        frames: uint8 H×W×3 BGR host frames (as Triton hands them to the python backend).
        overlay: also return the overlay pictures.
    """
    from deeplab_trt.runtime.cuda import api

    labels_out: list[np.ndarray] = []
    pictures: list[np.ndarray] | None = [] if overlay else None
    for frame in frames:
        device_frame = api.to_device(np.ascontiguousarray(frame))
        labels = segmenter.segment(device_frame)
        labels_out.append(labels.copy_to_host())
        if pictures is not None:
            segmenter.render(device_frame, labels, in_place=True)
            pictures.append(device_frame.copy_to_host())
    return labels_out, pictures


def _wants_overlay(request: Any) -> bool:
    """A request that names no outputs gets all of them (Triton's rule), else OVERLAY only if named."""
    names = request.requested_output_names() if hasattr(request, "requested_output_names") else None
    return not names or OVERLAY in names


def _parameter(config: dict[str, Any], key: str, default: str | None = None) -> str | None:
    value = config.get("parameters", {}).get(key, {}).get("string_value")
    return default if value in (None, "") else value


class TritonPythonModel:
    """Triton's python-backend entry points over the toolkit's runtime.

    Config parameters (written by ``deeplab-trt deploy triton``): ``model_file`` (in the version
    directory), ``policy``, ``alpha``; ``classes``, ``palette``, ``mean``, ``std`` are for clients
    (the numerics come from the model file's own spec, checked to agree on the classes).
    """

    def initialize(self, args: dict[str, Any]) -> None:
        import triton_python_backend_utils as pb_utils  # only inside Triton's stub

        from deeplab_trt.runtime.backends import open_backend

        self.pb = pb_utils
        config = json.loads(args["model_config"])
        version_dir = Path(args["model_repository"]) / str(args["model_version"])
        model_file = version_dir / (_parameter(config, "model_file") or "model.onnx")
        self.policy = _parameter(config, "policy", "stretch") or "stretch"
        if self.policy not in POLICIES:
            raise ToolkitError(f"{config.get('name')}: parameter policy={self.policy!r} is not one of {POLICIES}")
        self.alpha = float(_parameter(config, "alpha", "0.5") or 0.5)
        self.max_batch = int(config.get("max_batch_size") or 1)
        options: dict[str, Any] = {}
        if args.get("model_instance_kind") == "GPU":
            options["device"] = int(args.get("model_instance_device_id") or 0)
        # A GPU instance of an engine runs the CUDA kernels one frame at a time (segment_frames_on_gpu);
        # otherwise the host path infers gathered frames in batches of up to max_batch.
        use_kernels = "device" in options and model_file.suffix.lower() in ENGINE_SUFFIXES
        if model_file.suffix.lower() in ENGINE_SUFFIXES and not use_kernels:
            options["batch"] = self.max_batch  # device buffers for the largest gathered batch, allocated once
        threads = _parameter(config, "threads")
        self.backend = open_backend(model_file, threads=int(threads) if threads else None, **options)
        classes = _parameter(config, "classes")
        if classes is not None and json.loads(classes) != list(self.backend.spec.classes):
            raise ToolkitError(f"{model_file}: config parameter 'classes' disagrees with the model's own spec")
        self.lut = palette_bgr(self.backend.spec)
        self.segmenter = None
        if use_kernels:
            from deeplab_trt.runtime.segmenter import Segmenter

            self.segmenter = Segmenter(self.backend, device=options["device"], policy=self.policy, alpha=self.alpha)
        log.info("%s: %s on %s", config.get("name"), model_file.name, self.backend.name)

    def execute(self, requests: list[Any]) -> list[Any]:
        pb = self.pb
        frames: list[np.ndarray] = []
        counts: list[int] = []
        errors: dict[int, str] = {}
        for n, request in enumerate(requests):
            batch = pb.get_input_tensor_by_name(request, FRAMES).as_numpy()
            try:
                if batch.ndim != 4:
                    raise ToolkitError(f"{FRAMES}: expected N×H×W×3 uint8, got shape {batch.shape}")
                for frame in batch:
                    check_frame(frame)
            except ToolkitError as exc:
                errors[n] = str(exc)
                counts.append(0)
                continue
            frames.extend(batch)
            counts.append(len(batch))
        wants = [_wants_overlay(r) for r in requests]
        gpu_pictures = None
        if self.segmenter is not None:
            labels, gpu_pictures = segment_frames_on_gpu(self.segmenter, frames, overlay=any(wants))
        else:
            labels = segment_frames(self.backend, frames, policy=self.policy, max_batch=self.max_batch)
        responses, start = [], 0
        for n, count in enumerate(counts):
            if n in errors:
                responses.append(pb.InferenceResponse(output_tensors=[], error=pb.TritonError(errors[n])))
                continue
            mine, frames_in = labels[start : start + count], frames[start : start + count]
            # Contiguous copies: the stub hands Triton the array's buffer as is.
            outputs = [pb.Tensor(LABELS, np.ascontiguousarray(np.stack(mine)))]
            if wants[n]:
                if gpu_pictures is not None:
                    pictures = gpu_pictures[start : start + count]
                else:
                    pictures = [overlay(f, lab, self.lut, self.alpha) for f, lab in zip(frames_in, mine)]
                outputs.append(pb.Tensor(OVERLAY, np.ascontiguousarray(np.stack(pictures))))
            start += count
            responses.append(pb.InferenceResponse(output_tensors=outputs))
        return responses

    def finalize(self) -> None:
        if self.segmenter is not None:
            self.segmenter.close()
        self.backend.close()
