"""Build torchvision DeepLab v3 networks and load their weights for export.

Why a module of its own: the export command, the demo-model trainer and the tests all need
"a DeepLab v3 with these options and these weights" with the same rules: which output
strides each backbone supports, where torchvision weights come from when offline, what a
valid checkpoint is, and where the class names and palette come from. The auxiliary head is
never built (it is a training-time loss), and its keys are ignored in checkpoints.

torch is imported inside the functions so the CLI can list the choices without loading it.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deeplab_trt.runtime.errors import ToolkitError
from deeplab_trt.runtime.spec import IMAGENET_MEAN, IMAGENET_STD, VOC_CLASSES, voc_palette

log = logging.getLogger(__name__)

ARCHS = ("deeplabv3_mobilenet_v3_large", "deeplabv3_resnet50", "deeplabv3_resnet101")
MODELS = ARCHS + ("demo",)
DEMO_PATH = Path(__file__).resolve().parent / "assets" / "demo_model.pt"

#: Output strides each backbone supports, first = default, and the ASPP rates used with each.
#: ResNet: 8 = layer3+layer4 dilated (torchvision's model), 16 = only layer4 dilated; the
#: rates follow the DeepLab v3 paper's pairing. Both strides load the same weights (dilation
#: changes no parameter shape). MobileNetV3: torchvision dilates only the last stage, so the
#: network runs at stride 16 with rates 12/24/36 (torchvision's choice, kept so its pretrained
#: weights stay valid); stride 8 would need a second dilated stage that torchvision lacks.
OUTPUT_STRIDES: dict[str, dict[int, tuple[int, int, int]]] = {
    "deeplabv3_mobilenet_v3_large": {16: (12, 24, 36)},
    "deeplabv3_resnet50": {8: (12, 24, 36), 16: (6, 12, 18)},
    "deeplabv3_resnet101": {8: (12, 24, 36), 16: (6, 12, 18)},
}

_WEIGHTS_ENUMS = {
    "deeplabv3_mobilenet_v3_large": "DeepLabV3_MobileNet_V3_Large_Weights",
    "deeplabv3_resnet50": "DeepLabV3_ResNet50_Weights",
    "deeplabv3_resnet101": "DeepLabV3_ResNet101_Weights",
}
_CLASSIFIER_KEY = "classifier.4.weight"  # the final 1x1 conv: its shape gives the class count


@dataclass
class BuiltModel:
    """A DeepLab v3 in eval mode (float32, no aux head) and the facts the export records."""

    net: Any  # torchvision DeepLabV3
    name: str  # what the user asked for (an arch, or "demo")
    arch: str
    classes: list[str]
    palette: list[tuple[int, int, int]]
    output_stride: int
    atrous_rates: tuple[int, int, int]
    weights: str  # human-readable description of where the weights came from
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    input_size: tuple[int, int] | None = None  # the model's preferred (H, W), if it has one
    info: dict[str, Any] = field(default_factory=dict)
    multi_grid: tuple[int, int, int] | None = None  # block 4's unit rates, if multi-grid
    block4_rates: tuple[int, int, int] | None = None  # the dilations they give


# ----- networks ------------------------------------------------------------------------------
def resolve_output_stride(arch: str, output_stride: int | None) -> tuple[int, tuple[int, int, int]]:
    """(stride, ASPP rates) for ``arch``; a clear error for strides the backbone cannot do."""
    options = OUTPUT_STRIDES[arch]
    if output_stride is None:
        output_stride = next(iter(options))
    if output_stride not in options:
        supported = ", ".join(str(s) for s in options)
        raise ToolkitError(
            f"--output-stride {output_stride}: {arch} supports only {supported}"
            + (" (torchvision dilates only its last stage)" if "mobilenet" in arch else "")
        )
    return output_stride, options[output_stride]


#: ResNet block 4 has three units; multi-grid gives each its own unit rate.
MULTI_GRID_UNITS = 3


def multi_grid_rates(arch: str, output_stride: int, grid) -> tuple[int, int, int]:
    """Block 4's atrous rates for ``grid`` (DeepLab v3's Multi_Grid): base rate × unit rate, per unit.

    The base rate is block 4's dilation at that output stride (2 at OS16, 4 at OS8), so
    ``(1, 2, 4)`` at OS16 gives ``(2, 4, 8)``, as in the paper. Only ResNet backbones have
    the three-unit block 4 this applies to.
    """
    if not arch.startswith("deeplabv3_resnet"):
        raise ToolkitError(f"--multi-grid: applies to ResNet backbones (block 4's three units), not {arch}")
    try:
        units = tuple(int(g) for g in grid)
    except (TypeError, ValueError) as exc:
        raise ToolkitError(f"--multi-grid {grid}: expected three positive integers, e.g. 1,2,4") from exc
    if len(units) != MULTI_GRID_UNITS or min(units) < 1:
        raise ToolkitError(f"--multi-grid {','.join(map(str, units))}: expected three positive integers, e.g. 1,2,4")
    base = {16: 2, 8: 4}[output_stride]
    return base * units[0], base * units[1], base * units[2]


def _apply_multi_grid(net, rates: tuple[int, int, int]) -> None:
    """Set each block-4 unit's 3×3 conv to its rate (padding = rate keeps the spatial size)."""
    for unit, rate in zip(net.backbone.layer4, rates):
        unit.conv2.dilation = (rate, rate)
        unit.conv2.padding = (rate, rate)


def build_network(arch: str, num_classes: int, output_stride: int | None = None, multi_grid=None):
    """An untrained DeepLab v3 (random init, no aux head) at the requested output stride.

    ``multi_grid=(1, 2, 4)``: block 4's units get dilation base rate × (1, 2, 4)
    (:func:`multi_grid_rates`; ResNet only). Dilations carry no weights: checkpoints still load.
    """
    import torch
    from torchvision.models import resnet50, resnet101
    from torchvision.models._utils import IntermediateLayerGetter
    from torchvision.models.segmentation import deeplabv3_mobilenet_v3_large
    from torchvision.models.segmentation.deeplabv3 import DeepLabHead, DeepLabV3

    if arch not in ARCHS:
        raise ToolkitError(f"unknown model {arch!r} (expected one of {', '.join(MODELS)})")
    stride, rates = resolve_output_stride(arch, output_stride)
    if multi_grid is not None:
        multi_grid_rates(arch, stride, multi_grid)  # refuse before building anything
    if arch == "deeplabv3_mobilenet_v3_large":
        net = deeplabv3_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=num_classes, aux_loss=False)
    else:
        resnet = {"deeplabv3_resnet50": resnet50, "deeplabv3_resnet101": resnet101}[arch]
        dilate = [False, True, True] if stride == 8 else [False, False, True]
        backbone = IntermediateLayerGetter(
            resnet(weights=None, replace_stride_with_dilation=dilate), return_layers={"layer4": "out"}
        )
        net = DeepLabV3(backbone, DeepLabHead(2048, num_classes, atrous_rates=rates), None)
    if multi_grid is not None:
        _apply_multi_grid(net, multi_grid_rates(arch, stride, multi_grid))
    with torch.no_grad():
        return net.eval().float()


#: Noise pixels per image batch for the BatchNorm re-estimation of random weights: small
#: inputs get more images (deep layers have few positions per image), large ones fewer.
NOISE_PIXELS, NOISE_BATCH_RANGE = 65536, (2, 8)


def random_network(
    arch: str,
    num_classes: int,
    output_stride: int | None = None,
    size: tuple[int, int] = (96, 96),
    seed: int = 0,
    multi_grid=None,
):
    """A seeded random-init network whose outputs have a usable scale and more than one label.

    Why not torchvision's init as is: in eval mode (BatchNorm running stats = identity) a
    random DeepLab's activations shrink to ~1e-9 (denormal, slow on CPU) by the last layer,
    and the classifier bias decides every pixel's label, so parity checks pass trivially,
    FP16 underflows and label maps are one colour. A data-dependent init fixes that: the
    BatchNorm statistics are re-estimated on a seeded noise batch at the export ``size``
    (the statistics depend on resolution), then the final 1x1 conv is rescaled so each
    class's logit has zero mean and unit variance on that batch. Seeded, so the same options
    export the same file.
    """
    import torch

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net = build_network(arch, num_classes, output_stride, multi_grid)
        batch = min(max(-(-NOISE_PIXELS // (size[0] * size[1])), NOISE_BATCH_RANGE[0]), NOISE_BATCH_RANGE[1])
        noise = torch.randn(batch, 3, *size)  # >= 2: ASPP's pooled branch is 1x1, BatchNorm needs 2 values
    norms = [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average: running stats = this batch's stats
    net.train()
    for m in net.modules():
        if isinstance(m, torch.nn.Dropout):
            m.eval()  # statistics of the deployed (dropout-free) network, deterministically
    with torch.no_grad():
        net(noise)
        for m in norms:
            m.momentum = 0.1
        net.eval()
        logits = net.classifier(net.backbone(noise)["out"])
        mean, std = logits.mean(dim=(0, 2, 3)), logits.std(dim=(0, 2, 3)).clamp_min(1e-6)
        final = net.classifier[4]
        final.weight.div_(std.view(-1, 1, 1, 1))
        final.bias.sub_(mean).div_(std)
    return net


# ----- weights -------------------------------------------------------------------------------
def torchvision_weights(arch: str, spec: str):
    """The torchvision WeightsEnum member named by ``spec`` (``DEFAULT``, ``COCO_WITH_VOC_LABELS_V1``,
    or ``<Enum>.<member>``), or None when ``spec`` names none of them."""
    from torchvision.models import segmentation

    enum = getattr(segmentation, _WEIGHTS_ENUMS[arch])
    name = spec.split(".", 1)[1] if spec.startswith(enum.__name__ + ".") else spec
    if name.upper() == "DEFAULT":
        return enum.DEFAULT
    return enum.__members__.get(name.upper())


def torchvision_weights_names(arch: str) -> list[str]:
    from torchvision.models import segmentation

    return list(dict.fromkeys(["DEFAULT", *getattr(segmentation, _WEIGHTS_ENUMS[arch]).__members__]))


def hub_checkpoint_path(weights) -> Path:
    """Where torch hub keeps (and we look for) a torchvision weights file."""
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)


def fetch_torchvision_weights(weights, progress: bool = True, timeout_s: float = 30.0) -> Path:
    """The cached weights file, downloaded into the torch hub cache when missing.

    Offline (or any download failure) is a one-line error naming the exact file to put in
    place, because that is all a user on an air-gapped Jetson can do about it.
    """
    import torch

    path = hub_checkpoint_path(weights)
    if path.is_file():
        return path
    where = f"download {weights.url} and save it as {path}"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ToolkitError(f"{path}: cannot create the torch hub cache ({exc.strerror}); {where}") from exc
    match = re.search(r"-([a-f0-9]+)\.", path.name)  # torchvision names end in a sha256 prefix
    old_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout_s)
    try:
        # download_url_to_file writes a temp file and renames it, removing it on failure.
        torch.hub.download_url_to_file(
            weights.url, str(path), hash_prefix=match.group(1) if match else None, progress=progress
        )
    except Exception as exc:  # URLError, timeout, hash mismatch ...  # noqa: BLE001
        reason = str(getattr(exc, "reason", exc)).splitlines()[0] if str(exc) else type(exc).__name__
        raise ToolkitError(
            f"{path}: torchvision weights not cached and the download failed ({reason}); {where} (or set TORCH_HOME)"
        ) from exc
    finally:
        socket.setdefaulttimeout(old_timeout)
    return path


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint safely (``weights_only=True``) as a dict; one-line error otherwise."""
    import torch

    if not path.exists():
        raise ToolkitError(f"{path}: no such file")
    if path.is_dir():
        raise ToolkitError(f"{path}: is a directory, expected a PyTorch checkpoint (.pt/.pth)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pickle-protocol chatter from the weights-only unpickler
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError, RuntimeError (bad zip), EOFError ...  # noqa: BLE001
        raise ToolkitError(f"{path}: not a loadable PyTorch checkpoint ({_load_error_detail(exc)})") from exc
    if not isinstance(obj, dict):
        raise ToolkitError(f"{path}: not a state dict (the file holds a {type(obj).__name__})")
    return obj


def _load_error_detail(exc: Exception) -> str:
    """The informative line of a torch.load failure (its messages are paragraphs of advice)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for i, line in enumerate(lines):
        if line.endswith("WeightsUnpickler error:") and i + 1 < len(lines):
            return f"weights-only unpickler: {lines[i + 1]}"  # e.g. a pickled object that is not tensors
    first = lines[0].split(". ")[0] if lines else ""
    return f"{type(exc).__name__}: {first[:160]}" if first else type(exc).__name__


def state_dict_of(checkpoint: dict[str, Any], path: Path) -> dict[str, Any]:
    """The model state dict inside a checkpoint: the dict itself, or its 'model'/'state_dict' entry.

    Drops aux-head keys (we never build that head) and a DataParallel ``module.`` prefix.
    """
    import torch

    sd = checkpoint
    for key in ("model", "state_dict"):
        if isinstance(checkpoint.get(key), dict):
            sd = checkpoint[key]
            break
    sd = {(k[7:] if isinstance(k, str) and k.startswith("module.") else k): v for k, v in sd.items()}
    tensors = {k: v for k, v in sd.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not tensors or len(tensors) != len(sd):
        raise ToolkitError(
            f"{path}: not a model state dict (expected tensors by parameter name, "
            f"optionally under 'model' or 'state_dict')"
        )
    return {k: v for k, v in tensors.items() if not k.startswith("aux_classifier.")}


def checkpoint_num_classes(sd: dict[str, Any], path: Path, arch: str) -> int:
    w = sd.get(_CLASSIFIER_KEY)
    if w is None or w.ndim != 4:
        raise ToolkitError(f"{path}: not a {arch} checkpoint (no '{_CLASSIFIER_KEY}' classifier weight)")
    return int(w.shape[0])


def load_state_into(net, sd: dict[str, Any], path: Path, arch: str) -> None:
    """Load ``sd`` (cast to float32) into ``net``; mismatched keys/shapes → one-line error."""
    expected = net.state_dict()
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    wrong = [k for k in expected if k in sd and tuple(sd[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or wrong:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong-shape", wrong)):
            if keys:
                parts.append(f"{len(keys)} {label} keys, e.g. '{keys[0]}'")
        raise ToolkitError(f"{path}: does not match {arch} ({'; '.join(parts)})")
    net.load_state_dict({k: (v.float() if v.is_floating_point() else v) for k, v in sd.items()})


def _class_names(n: int) -> list[str]:
    return list(VOC_CLASSES) if n == len(VOC_CLASSES) else [f"class{i}" for i in range(n)]


def _check_num_classes(num_classes: int | None, found: int, source: str) -> None:
    if num_classes is not None and num_classes != found:
        raise ToolkitError(f"{source}: has {found} classes but --num-classes {num_classes} was given")


# ----- the one entry point -------------------------------------------------------------------
def build_model(
    model: str = "deeplabv3_mobilenet_v3_large",
    weights: str | None = "none",
    num_classes: int | None = None,
    output_stride: int | None = None,
    progress: bool = True,
    size: tuple[int, int] | None = None,
    multi_grid=None,
) -> BuiltModel:
    """Build ``model`` with ``weights``: ``none`` (random init, warned), a torchvision weights name,
    or a checkpoint path (``size``: the input size random weights are initialised for, see
    :func:`random_network`). ``multi_grid``: block 4's unit rates (:func:`multi_grid_rates`). ``demo`` always loads its checkpoint (``builder/assets/demo_model.pt``,
    or the checkpoint path given as weights) and takes classes, palette, mean/std and input
    size from it.
    """
    if model not in MODELS:
        raise ToolkitError(f"unknown model {model!r} (expected one of {', '.join(MODELS)})")
    if num_classes is not None and num_classes < 1:
        raise ToolkitError(f"--num-classes {num_classes}: must be at least 1")
    if model == "demo":
        return _with_grid(_build_demo(weights, num_classes, output_stride, multi_grid), multi_grid)
    arch = model
    stride, rates = resolve_output_stride(arch, output_stride)
    if multi_grid is not None:
        multi_grid_rates(arch, stride, multi_grid)  # refuse before any download or load
    spec = "none" if weights is None else str(weights)
    built = _build_arch(arch, model, spec, num_classes, stride, rates, progress, size, multi_grid)
    return _with_grid(built, multi_grid)


def _with_grid(built: BuiltModel, multi_grid) -> BuiltModel:
    """Record the multi-grid rates; warn that pretrained weights were trained without them."""
    if multi_grid is None:
        return built
    built.block4_rates = multi_grid_rates(built.arch, built.output_stride, multi_grid)
    built.multi_grid = tuple(int(g) for g in multi_grid)  # type: ignore[assignment]
    if not built.weights.startswith("none"):
        log.warning(
            "warning: --multi-grid %s: %s was trained without multi-grid (block 4 rates were %s); with rates %s "
            "its accuracy changes: fine-tune, or measure it with 'deeplab-trt eval'",
            ",".join(map(str, built.multi_grid)),
            built.weights,
            "1,2,2" if built.output_stride == 16 else "2,4,4",
            ",".join(map(str, built.block4_rates)),
        )
    return built


def _build_arch(arch, model, spec, num_classes, stride, rates, progress, size, multi_grid) -> BuiltModel:

    if spec.lower() == "none":
        n = 21 if num_classes is None else num_classes
        log.warning(
            "warning: --weights none: %s has random weights (outputs are meaningless; fine for testing the toolchain)",
            arch,
        )
        net = random_network(arch, n, stride, size or (96, 96), multi_grid=multi_grid)
        return BuiltModel(net, model, arch, _class_names(n), voc_palette(n), stride, rates, "none (random init)")

    path = Path(spec).expanduser()
    if not path.exists():
        if os.sep in spec or path.suffix in (".pt", ".pth", ".ckpt", ".bin"):  # checked before importing torch
            raise ToolkitError(f"{path}: no such file")
        tv = torchvision_weights(arch, spec)
        if tv is None:
            raise ToolkitError(
                f"--weights {spec}: no such file, and not a weights name for {arch} "
                f"(expected none, {', '.join(torchvision_weights_names(arch))} or a checkpoint path)"
            )
        categories = list(tv.meta["categories"])
        _check_num_classes(num_classes, len(categories), f"{arch} weights {spec}")
        path = fetch_torchvision_weights(tv, progress=progress)
        sd = state_dict_of(load_checkpoint(path), path)
        net = build_network(arch, len(categories), stride, multi_grid)
        load_state_into(net, sd, path, arch)
        return BuiltModel(
            net, model, arch, categories, voc_palette(len(categories)), stride, rates, f"torchvision {tv}"
        )

    checkpoint = load_checkpoint(path)
    sd = state_dict_of(checkpoint, path)
    n = checkpoint_num_classes(sd, path, arch)
    _check_num_classes(num_classes, n, str(path))
    net = build_network(arch, n, stride, multi_grid)
    load_state_into(net, sd, path, arch)
    classes = checkpoint.get("classes")
    classes = [str(c) for c in classes] if isinstance(classes, (list, tuple)) and len(classes) == n else _class_names(n)
    palette = checkpoint.get("palette")
    palette = palette if isinstance(palette, (list, tuple)) and len(palette) >= n else voc_palette(n)
    return BuiltModel(net, model, arch, classes, [tuple(p) for p in palette], stride, rates, f"checkpoint {path}")


def _build_demo(weights: str | None, num_classes: int | None, output_stride: int | None, multi_grid=None) -> BuiltModel:
    """The small trained demo model; its checkpoint carries arch, classes, palette, size, mean/std."""
    spec = "none" if weights is None else str(weights)
    path = DEMO_PATH if spec.lower() in ("none", "default", "demo") else Path(spec).expanduser()
    if not path.exists():
        if path == DEMO_PATH:
            raise ToolkitError(
                f"{path}: the demo model's weights are not installed (train them, or use "
                f"--model deeplabv3_mobilenet_v3_large)"
            )
        raise ToolkitError(f"{path}: no such file")
    checkpoint = load_checkpoint(path)
    arch = checkpoint.get("arch", "deeplabv3_mobilenet_v3_large")
    if arch not in ARCHS:
        raise ToolkitError(f"{path}: unknown arch {arch!r} in the demo checkpoint")
    stride, rates = resolve_output_stride(arch, output_stride)
    sd = state_dict_of(checkpoint, path)
    n = checkpoint_num_classes(sd, path, arch)
    _check_num_classes(num_classes, n, str(path))
    net = build_network(arch, n, stride, multi_grid)
    load_state_into(net, sd, path, arch)
    try:
        classes = [str(c) for c in checkpoint.get("classes") or _class_names(n)]
        palette = [tuple(int(v) for v in p) for p in checkpoint.get("palette") or voc_palette(n)]
        size = checkpoint.get("input_size")
        input_size = (int(size[0]), int(size[1])) if size else None
        mean = tuple(float(v) for v in checkpoint.get("mean") or IMAGENET_MEAN)
        std = tuple(float(v) for v in checkpoint.get("std") or IMAGENET_STD)
    except (TypeError, ValueError, IndexError) as exc:
        raise ToolkitError(f"{path}: malformed demo checkpoint metadata ({exc})") from exc
    if len(classes) != n:
        raise ToolkitError(f"{path}: lists {len(classes)} class names for a {n}-class classifier")
    info = checkpoint.get("train") if isinstance(checkpoint.get("train"), dict) else {}
    return BuiltModel(
        net,
        "demo",
        arch,
        classes,
        palette,
        stride,
        rates,
        f"demo checkpoint {path}",
        mean=mean,
        std=std,
        input_size=input_size,
        info=info,
    )
