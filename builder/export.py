"""torch → ONNX export of DeepLab v3, with metadata and a parity check against PyTorch.

Why each step: the ONNX file is the hand-off to every later stage (FP16/Q-DQ passes, engine
builds, the CPU runtime), so it carries the :class:`~deeplab_trt.runtime.spec.ModelSpec` in its
``metadata_props``, is validated by ``onnx.checker``, and is proven numerically equal to the
PyTorch model (ONNX Runtime CPU on a seeded random input) before it is renamed into place.
A failed step leaves no file behind (:func:`deeplab_trt.runtime.atomic.atomic_path`).
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
import time
import warnings
from pathlib import Path

from deeplab_trt.runtime import __version__
from deeplab_trt.runtime.atomic import atomic_path
from deeplab_trt.runtime.cli_types import parse_batch_range
from deeplab_trt.runtime.errors import ToolkitError
from deeplab_trt.runtime.spec import HEADS, ModelSpec

DEFAULT_SIZE = (520, 520)  # torchvision's evaluation size for these models
#: The TorchScript exporter handles opsets up to 20; above that the torch.export (dynamo)
#: exporter is used. 17 is the default: TensorRT 10.3 (JetPack 6) parses it fully.
MIN_OPSET, TORCHSCRIPT_MAX_OPSET, MAX_OPSET = 13, 20, 23
#: Parity: ONNX Runtime vs PyTorch. Max abs diff relative to the logits' magnitude; labels
#: may differ only where two classes are (nearly) tied.
PARITY_RTOL, PARITY_MIN_AGREEMENT = 1e-3, 0.999


def _status(progress: bool, message: str) -> None:
    if progress:
        print(f"export: {message}", file=sys.stderr, flush=True)


def make_export_module(net, head: str, size: tuple[int, int], normalization=None):
    """Wrap a torchvision DeepLabV3 so its single output is the requested head form.

    ``logits`` is torchvision's ``out`` (bilinear, align_corners=False, to the input size);
    ``lowres`` stops before that upsample; ``labels`` adds an ArgMax over channels. The
    upsample target is the fixed export size (H, W are static), so the graph holds a
    constant Resize size rather than a Shape→Slice chain.

    ``normalization=(mean, std)`` folds the preprocessing into the graph (the input is then 0-255):
    ``(x - 255·mean) · (1 / (255·std))`` per channel, the reference preprocessing's own float32
    formula (:func:`deeplab_trt.runtime.preprocess.preprocess`), as one Sub and one Mul.
    """
    import torch
    import torch.nn.functional as F

    class DeepLabExport(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = net.backbone
            self.classifier = net.classifier
            self.fold = normalization is not None
            if self.fold:
                mean, std = (torch.tensor(v, dtype=torch.float32).reshape(1, 3, 1, 1) for v in normalization)
                self.register_buffer("shift", mean * 255.0)
                self.register_buffer("scale", 1.0 / (std * 255.0))

        def forward(self, x):
            if self.fold:
                x = (x - self.shift) * self.scale
            y = self.classifier(self.backbone(x)["out"])
            if head == "lowres":
                return y
            y = F.interpolate(y, size=size, mode="bilinear", align_corners=False)
            if head == "logits":
                return y
            # int32, not ONNX ArgMax's native int64: TensorRT computes ArgMax as TopK, whose
            # indices are int32, so an int64 output would cost an extra cast in the engine and
            # twice the bytes copied back per frame; class ids fit in int32 many times over.
            return torch.argmax(y, dim=1).to(torch.int32)

    return DeepLabExport().eval()


def _torch_export(module, example, path: Path, opset: int, dynamic: bool) -> None:
    """Run the right torch exporter for ``opset``, keeping its chatter off the console."""
    import torch

    kwargs = dict(input_names=["input"], output_names=["output"], opset_version=opset)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        if opset <= TORCHSCRIPT_MAX_OPSET:
            axes = {"input": {0: "batch"}, "output": {0: "batch"}} if dynamic else None
            torch.onnx.export(
                module, (example,), str(path), dynamo=False, dynamic_axes=axes, do_constant_folding=True, **kwargs
            )
        else:
            shapes = ({0: torch.export.Dim("batch", min=1, max=4096)},) if dynamic else None
            torch.onnx.export(
                module,
                (example,),
                str(path),
                dynamo=True,
                dynamic_shapes=shapes,
                external_data=False,
                optimize=True,
                verbose=False,
                **kwargs,
            )


def _write_metadata(path: Path, spec: ModelSpec) -> int:
    """Store the spec (with the graph's output shape) in ``metadata_props``, run ``onnx.checker``;
    returns the file size."""
    import onnx

    model = onnx.load(str(path))
    dims = model.graph.output[0].type.tensor_type.shape.dim
    spec.extra["output_shape"] = [d.dim_param or d.dim_value for d in dims]
    del model.metadata_props[:]
    for key, value in spec.to_metadata().items():
        model.metadata_props.add(key=key, value=value)
    model.producer_name = "deeplab-trt"
    model.producer_version = __version__
    onnx.save(model, str(path))
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:  # noqa: BLE001
        raise ToolkitError(f"{path}: onnx.checker rejected the export ({str(exc).splitlines()[0]})") from exc
    return path.stat().st_size


def check_parity(
    path: Path, module, batch: int, height: int, width: int, head: str, seed: int = 0, reference=None, pixels=False
):
    """ONNX Runtime CPU vs PyTorch on a seeded random input: (max abs diff, label agreement, tol).

    For ``labels`` the graph outputs labels only, so the max abs diff is reported as 0 and
    the check rests on label agreement. ``pixels``: the input is 0-255 (a folded normalisation);
    ``reference(x)``: the PyTorch output to compare with (default ``module(x)``), e.g. the
    unfolded model on the normalised input.
    """
    import numpy as np
    import onnxruntime as ort
    import torch

    gen = torch.Generator().manual_seed(seed)
    x = (
        torch.rand(batch, 3, height, width, generator=gen) * 255.0
        if pixels
        else torch.randn(batch, 3, height, width, generator=gen)
    )
    with torch.no_grad():
        ref = (reference or module)(x).numpy()
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    got = session.run(["output"], {"input": x.numpy()})[0]
    if got.shape != ref.shape:
        raise ToolkitError(f"{path}: ONNX Runtime output shape {got.shape} != PyTorch {ref.shape}")
    if head == "labels":
        return 0.0, float(np.mean(got == ref)), 0.0
    diff = float(np.max(np.abs(got.astype(np.float64) - ref)))
    tol = PARITY_RTOL * max(1.0, float(np.max(np.abs(ref))))
    agreement = float(np.mean(got.argmax(axis=1) == ref.argmax(axis=1)))
    return diff, agreement, tol


def export_onnx(
    output,
    model: str = "deeplabv3_mobilenet_v3_large",
    weights: str | None = "none",
    num_classes: int | None = None,
    height: int | None = None,
    width: int | None = None,
    batch: int = 1,
    dynamic_batch=None,
    output_stride: int | None = None,
    head: str = "logits",
    opset: int = 17,
    check: bool = True,
    progress: bool = True,
    fold_normalization: bool = False,
    multi_grid=None,
) -> ModelSpec:
    """Export ``model`` to ``output`` (ONNX) and return the :class:`ModelSpec` written into it.

    ``dynamic_batch=(min, opt, max)`` makes the batch dimension dynamic and records the range
    in ``spec.extra["dynamic_batch"]`` for the engine builder's optimization profile;
    otherwise the batch is fixed to ``batch`` (``spec.extra["batch"]``). ``onnx.checker``
    always runs; ``check`` adds the ONNX Runtime parity check (a failure is a :class:`ToolkitError`).

    ``fold_normalization``: the graph takes 0-255 RGB and normalises itself (DeepStream's nvinfer
    cannot apply a per-channel std); the spec then says mean 0, std 1/255 (so the runtime's
    preprocessing hands the pixels over unchanged, exactly) and keeps the folded mean/std in
    ``extra["folded_normalization"]``; the parity check compares against the *unfolded* model.

    ``multi_grid=(1, 2, 4)``: ResNet block 4's units get dilation base rate × these (DeepLab v3's
    Multi_Grid; recorded as ``extra["multi_grid"]`` and ``extra["block4_rates"]``).
    """
    from deeplab_trt.builder.models import build_model

    started = time.perf_counter()
    output = Path(output)
    if head not in HEADS:
        raise ToolkitError(f"--head {head}: expected one of {', '.join(HEADS)}")
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ToolkitError(f"--opset {opset}: supported range is {MIN_OPSET}..{MAX_OPSET}")
    dyn = parse_batch_range(dynamic_batch, flag="--dynamic-batch")
    if dyn is None and batch < 1:
        raise ToolkitError(f"--batch {batch}: must be at least 1")
    if (height is None) != (width is None):
        raise ToolkitError("--height and --width go together: give both or neither")
    if output.is_dir():
        raise ToolkitError(f"{output}: is a directory, expected an .onnx file path")

    _status(progress, f"building {model} (weights: {weights or 'none'})")
    if height is None and model != "demo":
        height, width = DEFAULT_SIZE
    built = build_model(
        model,
        weights,
        num_classes=num_classes,
        output_stride=output_stride,
        progress=progress,
        size=(height, width) if height else None,
        multi_grid=multi_grid,
    )
    if height is None:
        height, width = built.input_size or DEFAULT_SIZE
    if height < 16 or width < 16:
        raise ToolkitError(f"--height {height} --width {width}: the input must be at least 16x16")
    import torch

    normalization = (built.mean, built.std) if fold_normalization else None
    module = make_export_module(built.net, head, (height, width), normalization)
    example_batch = dyn[0] if dyn else batch
    example = torch.zeros(example_batch, 3, height, width)

    spec = ModelSpec(
        name=built.name,
        classes=built.classes,
        palette=built.palette,
        input_height=height,
        input_width=width,
        head=head,
        mean=(0.0, 0.0, 0.0) if fold_normalization else built.mean,
        std=(1 / 255, 1 / 255, 1 / 255) if fold_normalization else built.std,
        output_stride=built.output_stride,
        toolkit_version=__version__,
        exporter=f"torch {torch.__version__} / onnx opset {opset}",
        extra={
            "arch": built.arch,
            "weights": built.weights,
            "atrous_rates": list(built.atrous_rates),
            "output_dtype": "int32" if head == "labels" else "float32",
            **({"dynamic_batch": list(dyn)} if dyn else {"batch": batch}),
        },
    )
    if built.multi_grid is not None:
        spec.extra["multi_grid"] = list(built.multi_grid)
        spec.extra["block4_rates"] = list(built.block4_rates or ())
    if fold_normalization:
        spec.extra["folded_normalization"] = {"mean": list(built.mean), "std": list(built.std)}
    if built.info:  # the demo checkpoint's training notes, made JSON-safe for the metadata
        spec.extra["train"] = json.loads(json.dumps(built.info, default=str))

    exporter = "TorchScript" if opset <= TORCHSCRIPT_MAX_OPSET else "torch.export"
    batch_text = ":".join(map(str, dyn)) if dyn else str(batch)
    _status(progress, f"exporting {head} head, input {batch_text}x3x{height}x{width}, opset {opset} ({exporter})")
    with atomic_path(output) as tmp:
        try:
            with torch.no_grad():
                _torch_export(module, example, tmp, opset, dyn is not None)
        except ToolkitError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise ToolkitError(
                f"{output}: torch.onnx.export failed ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''})"
            ) from exc
        size = _write_metadata(tmp, spec)
        if check:
            against = "the unfolded PyTorch model" if fold_normalization else "PyTorch"
            _status(progress, f"onnx.checker ok; parity: ONNX Runtime CPU vs {against} on a seeded random input")
            parity_batch = max(dyn[0], min(2, dyn[2])) if dyn else batch
            reference = None
            if fold_normalization:  # the unfolded model on torchvision's normalisation of the same pixels
                unfolded = make_export_module(built.net, head, (height, width))
                mean, std = (torch.tensor(v).reshape(1, 3, 1, 1) for v in (built.mean, built.std))

                def reference(x):
                    return unfolded((x / 255.0 - mean) / std)

            diff, agreement, tol = check_parity(
                tmp, module, parity_batch, height, width, head, reference=reference, pixels=fold_normalization
            )
            diff_text = "labels output only" if head == "labels" else f"max abs diff {diff:.2e} (tolerance {tol:.1e})"
            _status(progress, f"parity: {diff_text}, label agreement {agreement * 100:.3f}% (batch {parity_batch})")
            if diff > tol or agreement < PARITY_MIN_AGREEMENT:
                raise ToolkitError(
                    f"{output}: ONNX Runtime disagrees with PyTorch (max abs diff {diff:.3g} > "
                    f"{tol:.3g} or label agreement {agreement:.4%} < {PARITY_MIN_AGREEMENT:.1%})"
                )
    _status(progress, f"wrote {output} ({size / 1e6:.1f} MB) in {time.perf_counter() - started:.1f} s")
    return spec
