"""Client mode: segment frames on a Triton server's "segmenter" model, inside the one video loop.

Why: an edge box without a GPU (or a fleet of cameras) sends frames to a GPU server running the
model that ``deeplab-trt deploy triton`` wrote, and gets the same outputs and the same stats as a
local ``deeplab-trt run``: :class:`TritonStage` is a stage of
:func:`deeplab_trt.runtime.gpu_pipeline.run_video` (the loop every run uses), with the server's
round trip as its ``infer`` time. Only the labels travel back (H×W bytes); the picture is rendered
here with the reference :func:`~deeplab_trt.runtime.postprocess.render`, which is what the server's
``OVERLAY`` output computes too.

The model's spec (classes, palette, mean/std, input size, head) is read from the served model's
config ``parameters``, so the client needs no model file. ``tritonclient`` is optional
(``pip install 'deeplab-trt[triton]'``).
"""

from __future__ import annotations

import concurrent.futures
import json
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from deeplab_trt.runtime.errors import ToolkitError, require
from deeplab_trt.runtime.pipeline import RunOptions
from deeplab_trt.runtime.postprocess import palette_bgr, render
from deeplab_trt.runtime.spec import ModelSpec

PROTOCOLS = ("grpc", "http")


def parse_url(url: str) -> tuple[str, str]:
    """``grpc://host:8001`` / ``http://host:8000`` / ``host:8001`` (gRPC) → (protocol, host:port)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return "grpc", url
    if scheme not in PROTOCOLS or not rest:
        raise ToolkitError(f"--triton {url}: expected grpc://HOST:PORT or http://HOST:PORT")
    return scheme, rest.rstrip("/")


def _client_module(protocol: str):
    return require(f"tritonclient.{protocol}", extra="triton", purpose="--triton (client mode)")


def spec_from_config(config: dict[str, Any], name: str) -> ModelSpec:
    """The :class:`ModelSpec` a segmenter's config ``parameters`` carry (written by ``deploy triton``)."""
    params = {k: v.get("string_value", "") for k, v in (config.get("parameters") or {}).items()}
    missing = [k for k in ("classes", "input_size", "head") if k not in params]
    if missing:
        raise ToolkitError(
            f"Triton model {name!r}: no deeplab-trt parameters ({', '.join(missing)} missing); "
            "serve a repository written by 'deeplab-trt deploy triton'"
        )
    try:
        height, width = json.loads(params["input_size"])
        extra = {k: json.loads(params[k]) for k in ("palette", "mean", "std") if k in params}
        return ModelSpec(
            name=name,
            classes=json.loads(params["classes"]),
            input_height=int(height),
            input_width=int(width),
            head=params["head"],
            **extra,
        )
    except (ValueError, TypeError) as exc:
        raise ToolkitError(f"Triton model {name!r}: malformed deeplab-trt parameters ({exc})") from exc


@dataclass
class RemoteModel:
    """What the video loop needs of a model that runs elsewhere: its spec and a name for reports."""

    spec: ModelSpec
    name: str
    url: str


class TritonSegmenter:
    """Frames → labels on a served segmenter; one client per calling thread (tritonclient's clients are not shared).

    Args:
        url: ``grpc://HOST:PORT`` or ``http://HOST:PORT`` (no scheme: gRPC).
        model_name: the served segmenter's name.
        timeout: seconds to wait for the server to say the model is ready.
    """

    def __init__(self, url: str, *, model_name: str = "segmenter", timeout: float = 10.0):
        self.protocol, self.address = parse_url(url)
        self.module = _client_module(self.protocol)
        self.model_name = model_name
        self.url = url
        self._local = threading.local()
        client = self.client()
        deadline = time.perf_counter() + timeout
        while True:
            try:
                if client.is_model_ready(model_name):
                    break
                reason = "not ready"
            except Exception as exc:  # noqa: BLE001 - tritonclient raises its own exception types
                reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            if time.perf_counter() > deadline:
                raise ToolkitError(f"--triton {url}: model {model_name!r} is not available ({reason})")
            time.sleep(0.2)
        if self.protocol == "grpc":
            config = client.get_model_config(model_name, as_json=True)["config"]
        else:
            config = client.get_model_config(model_name)
        self.spec = spec_from_config(config, model_name)
        params = config.get("parameters") or {}
        self.policy = params.get("policy", {}).get("string_value") or "stretch"
        self.model = RemoteModel(self.spec, f"triton {self.protocol}://{self.address}/{model_name}", url)

    def client(self):
        """This thread's client."""
        client = getattr(self._local, "client", None)
        if client is None:
            client = self._local.client = self.module.InferenceServerClient(self.address)
        return client

    def segment(self, frames: np.ndarray) -> np.ndarray:
        """N×H×W labels (uint8) for N×H×W×3 uint8 BGR frames (one request)."""
        frames = np.ascontiguousarray(frames, dtype=np.uint8)
        if frames.ndim == 3:
            frames = frames[None]
        inp = self.module.InferInput("FRAMES", list(frames.shape), "UINT8")
        inp.set_data_from_numpy(frames)
        try:
            result = self.client().infer(self.model_name, [inp], outputs=[self.module.InferRequestedOutput("LABELS")])
        except Exception as exc:  # noqa: BLE001 - InferenceServerException and transport errors
            line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ToolkitError(f"--triton {self.url}: inference failed ({line})") from exc
        return result.as_numpy("LABELS")


class TritonStage:
    """A video-loop stage whose inference is a request to the server; ``slots`` requests in flight."""

    def __init__(self, segmenter: TritonSegmenter, options: RunOptions, slots: int = 4):
        self.segmenter = segmenter
        self.options = options
        self.slots = slots
        self.name = segmenter.model.name
        self.lut = palette_bgr(segmenter.spec)
        self._pool = concurrent.futures.ThreadPoolExecutor(slots, thread_name_prefix="triton")
        self._pending: dict[int, tuple[list[tuple[np.ndarray, concurrent.futures.Future]], float]] = {}

    def bind_thread(self) -> None:
        pass

    def submit(self, slot: int, frames: Sequence[tuple[int, np.ndarray]]) -> None:
        """One request per frame (the server's dynamic batcher batches requests from every stream)."""
        sent = time.perf_counter()
        self._pending[slot] = ([(frame, self._pool.submit(self.segmenter.segment, frame)) for _, frame in frames], sent)

    def finish(self, slot: int) -> tuple[list[np.ndarray], dict[str, float]]:
        requests, sent = self._pending.pop(slot)
        labels = [future.result()[0] for _, future in requests]
        t0 = time.perf_counter()
        pictures = [
            render(frame, lab, self.lut, self.options.mode, self.options.alpha)
            for (frame, _), lab in zip(requests, labels, strict=True)
        ]
        return pictures, {"infer": t0 - sent, "postprocess": time.perf_counter() - t0}

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._pending.clear()
