"""``deeplab-trt export``: heads, metadata, dynamic batch, output strides, weights, bad inputs.

Small sizes and random weights throughout: these tests check the graph and the plumbing
(ONNX Runtime against PyTorch on the same weights), not accuracy.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from deeplab_trt.builder import export as export_mod
from deeplab_trt.builder.export import export_onnx
from deeplab_trt.builder.models import build_model, build_network, random_network
from deeplab_trt.runtime.errors import ToolkitError
from deeplab_trt.runtime.spec import spec_from_onnx

MOBILENET = "deeplabv3_mobilenet_v3_large"


def _run_ort(path, x):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["output"], {"input": x})[0]


@functools.lru_cache(maxsize=2)
def _random_mobilenet(num_classes, size):
    return random_network(MOBILENET, num_classes, size=size)


def _torch_reference(head, x, num_classes=5):
    """The same seeded random network the export used, run in PyTorch."""
    net = _random_mobilenet(num_classes, tuple(x.shape[-2:]))
    module = export_mod.make_export_module(net, head, tuple(x.shape[-2:]))
    with torch.no_grad():
        return module(torch.from_numpy(x)).numpy()


@pytest.mark.parametrize("head", ["logits", "lowres", "labels"])
def test_heads_match_pytorch(onnx_factory, head):
    path = onnx_factory(head=head, height=64, width=128, num_classes=5)
    x = np.random.default_rng(1).standard_normal((1, 3, 64, 128)).astype(np.float32)
    got, ref = _run_ort(path, x), _torch_reference(head, x)
    expected_shape = {"logits": (1, 5, 64, 128), "lowres": (1, 5, 4, 8), "labels": (1, 64, 128)}[head]
    assert got.shape == ref.shape == expected_shape  # lowres: stride 16 → 64/16 x 128/16
    if head == "labels":
        assert got.dtype == np.int32
        assert np.mean(got == ref) > 0.999
    else:
        assert got.dtype == np.float32
        assert np.abs(got - ref).max() <= 1e-3 * max(1.0, np.abs(ref).max())
        assert len(np.unique(ref.argmax(1))) > 1, "random init should not give one label everywhere"
    spec = spec_from_onnx(path)
    assert spec.head == head and spec.input_size == (64, 128) and spec.num_classes == 5
    assert spec.output_stride == 16 and spec.extra["atrous_rates"] == [12, 24, 36]
    assert spec.extra["output_shape"] == list(expected_shape)
    assert spec.extra["output_dtype"] == ("int32" if head == "labels" else "float32")


def test_dynamic_batch_and_metadata_round_trip(tmp_path, capsys):
    out = tmp_path / "dyn.onnx"
    spec = export_onnx(
        out,
        model=MOBILENET,
        weights="none",
        num_classes=3,
        height=32,
        width=64,
        dynamic_batch=(1, 2, 4),
        head="logits",
        progress=True,
    )
    err = capsys.readouterr().err
    assert "parity: max abs diff" in err and "label agreement" in err and "wrote" in err
    assert spec_from_onnx(out) == spec
    assert spec.extra["dynamic_batch"] == [1, 2, 4] and "batch" not in spec.extra
    assert spec.extra["output_shape"][0] == "batch"
    assert spec.exporter.startswith(f"torch {torch.__version__}") and "opset 17" in spec.exporter
    meta = {p.key for p in onnx.load(str(out), load_external_data=False).metadata_props}
    assert {
        "model",
        "classes",
        "palette",
        "mean",
        "std",
        "input_size",
        "head",
        "output_stride",
        "toolkit_version",
        "exporter",
    } <= meta
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 64)).astype(np.float32)
    both = _run_ort(out, x)
    one = _run_ort(out, x[1:])
    assert both.shape == (2, 3, 32, 64) and one.shape == (1, 3, 32, 64)
    np.testing.assert_allclose(both[1:], one, rtol=1e-4, atol=1e-4)
    assert sorted(os.listdir(tmp_path)) == ["dyn.onnx"]


def _dilations(layer):
    return [block.conv2.dilation[0] for block in layer]


@pytest.mark.parametrize(
    "stride, layer3, layer4, rates",
    [
        (8, [1, 2, 2, 2, 2, 2], [2, 4, 4], [12, 24, 36]),
        (16, [1, 1, 1, 1, 1, 1], [1, 2, 2], [6, 12, 18]),
    ],
)
def test_resnet_output_stride_structure(stride, layer3, layer4, rates):
    net = build_network("deeplabv3_resnet50", 3, stride)
    assert _dilations(net.backbone.layer3) == layer3
    assert _dilations(net.backbone.layer4) == layer4
    aspp = net.classifier[0]
    assert [branch[0].dilation[0] for branch in list(aspp.convs)[1:4]] == rates
    assert net.aux_classifier is None
    # same weights fit both strides: dilation changes no parameter shape
    other = build_network("deeplabv3_resnet50", 3, 24 - stride)
    other.load_state_dict(net.state_dict(), strict=True)
    with torch.no_grad():
        lowres = net.classifier(net.backbone(torch.zeros(1, 3, 64, 64))["out"])
    assert lowres.shape[-2:] == (64 // stride, 64 // stride)


def test_resnet50_stride16_export(tmp_path):
    out = tmp_path / "r50.onnx"
    spec = export_onnx(
        out,
        model="deeplabv3_resnet50",
        num_classes=3,
        height=32,
        width=32,
        output_stride=16,
        head="lowres",
        progress=False,
    )
    assert spec.output_stride == 16 and spec.extra["atrous_rates"] == [6, 12, 18]
    assert _run_ort(out, np.zeros((1, 3, 32, 32), np.float32)).shape == (1, 3, 2, 2)


def test_mobilenet_stride8_is_refused():
    with pytest.raises(ToolkitError, match="supports only 16"):
        build_network(MOBILENET, 3, 8)


def test_checkpoint_with_aux_and_fp16_loads(tmp_path):
    """A torchvision training checkpoint: {'model': state dict} with aux keys, fp16 tensors."""
    from torchvision.models.segmentation import deeplabv3_mobilenet_v3_large

    src = deeplabv3_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=4, aux_loss=True).eval()
    sd = {k: (v.half() if v.is_floating_point() else v) for k, v in src.state_dict().items()}
    assert any(k.startswith("aux_classifier.") for k in sd)
    torch.save({"model": sd, "epoch": 3}, tmp_path / "ckpt.pth")
    built = build_model(MOBILENET, str(tmp_path / "ckpt.pth"), progress=False)
    assert built.classes == ["class0", "class1", "class2", "class3"]
    weight = built.net.classifier[4].weight
    assert weight.dtype == torch.float32
    torch.testing.assert_close(weight, sd["classifier.4.weight"].float())
    with pytest.raises(ToolkitError, match="has 4 classes but --num-classes 5"):
        build_model(MOBILENET, str(tmp_path / "ckpt.pth"), num_classes=5)


def test_demo_checkpoint_format(tmp_path):
    """The agreed demo format supplies classes, palette, input size and mean/std."""
    net = build_network(MOBILENET, 3)
    ckpt = {
        "arch": MOBILENET,
        "state_dict": {k: v.half() if v.is_floating_point() else v for k, v in net.state_dict().items()},
        "classes": ["bg", "disc", "box"],
        "palette": [[0, 0, 0], [255, 0, 0], [0, 255, 0]],
        "input_size": [96, 160],
        "mean": [0.5, 0.5, 0.5],
        "std": [0.25, 0.25, 0.25],
        "train": {"miou": 0.7},
    }
    torch.save(ckpt, tmp_path / "demo.pt")
    built = build_model("demo", str(tmp_path / "demo.pt"))
    assert built.classes == ["bg", "disc", "box"] and built.palette[1] == (255, 0, 0)
    assert built.input_size == (96, 160) and built.mean == (0.5, 0.5, 0.5) and built.info == {"miou": 0.7}


def test_parity_failure_leaves_no_file(tmp_path, monkeypatch):
    monkeypatch.setattr(export_mod, "PARITY_RTOL", -1.0)  # any difference, even 0, fails
    with pytest.raises(ToolkitError, match="ONNX Runtime disagrees with PyTorch"):
        export_onnx(
            tmp_path / "bad.onnx", model=MOBILENET, num_classes=3, height=32, width=32, head="lowres", progress=False
        )
    assert os.listdir(tmp_path) == []


# ----- CLI bad inputs -------------------------------------------------------------------------
def _write_wrong_keys(path):
    torch.save(
        {
            "state_dict": {
                "backbone.0.0.weight": torch.zeros(16, 3, 3, 3),
                "classifier.4.weight": torch.zeros(3, 256, 1, 1),
            }
        },
        path,
    )


BAD_CASES = {
    "missing_weights": (["--model", MOBILENET, "--weights", "{tmp}/nope.pt"], "nope.pt: no such file"),
    "random_bytes": (["--model", MOBILENET, "--weights", "{tmp}/random.pt"], "random.pt: not a loadable"),
    "wrong_keys": (["--model", MOBILENET, "--weights", "{tmp}/wrong.pt"], "wrong.pt: does not match"),
    "unknown_model": (["--model", "deeplabv3_vgg"], "invalid choice"),
    "bad_dynamic_batch": (["--model", MOBILENET, "--dynamic-batch", "4:2:1"], "MIN <= OPT <= MAX"),
    "mobilenet_stride8": (["--model", MOBILENET, "--output-stride", "8"], "supports only 16"),
    "offline_torchvision": (
        ["--model", MOBILENET, "--weights", "DEFAULT"],
        "save it as {tmp}/torch_home/hub/checkpoints/deeplabv3_mobilenet_v3_large-fc3c493d.pth",
    ),
}


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_cli_bad_inputs(tmp_path, case):
    args, expected = BAD_CASES[case]
    (tmp_path / "random.pt").write_bytes(np.random.default_rng(0).bytes(4096))
    _write_wrong_keys(tmp_path / "wrong.pt")
    out_dir = tmp_path / "out"
    env = dict(os.environ, TORCH_HOME=str(tmp_path / "torch_home"))
    cmd = [
        sys.executable,
        "-m",
        "deeplab_trt",
        "export",
        *[a.format(tmp=tmp_path) for a in args],
        "--height",
        "32",
        "--width",
        "32",
        "-o",
        str(out_dir / "model.onnx"),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, proc.stderr
    assert expected.format(tmp=tmp_path) in errors[0]
    assert not out_dir.exists() or os.listdir(out_dir) == []
