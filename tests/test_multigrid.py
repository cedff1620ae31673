"""``export --multi-grid``: ResNet block 4's units get base rate × (r1, r2, r3), in the exported graph and its metadata."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest

from deeplab_trt.runtime.errors import ToolkitError

ROOT = Path(__file__).resolve().parents[1]
RESNET = "deeplabv3_resnet50"


def block4_dilations(onnx_path: Path) -> list[int]:
    """The dilation of each block-4 unit's 3×3 conv, in unit order, read from the ONNX graph."""
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    rates = []
    for node in graph.node:
        if node.op_type == "Conv" and "layer4" in node.name and "conv2" in node.name:
            attrs = {a.name: list(a.ints) for a in node.attribute}
            assert attrs["kernel_shape"] == [3, 3]
            rates.append(attrs["dilations"][0])
    return rates


@pytest.mark.parametrize(("stride", "expected"), [(16, [2, 4, 8]), (8, [4, 8, 16])])
def test_exported_graph_has_the_multi_grid_dilations(onnx_factory, stride, expected):
    from deeplab_trt.runtime.spec import spec_from_onnx

    path = onnx_factory(model=RESNET, height=64, width=64, num_classes=3, output_stride=stride, multi_grid=(1, 2, 4))
    assert block4_dilations(path) == expected  # export_onnx's parity check passed on this graph too
    extra = spec_from_onnx(path).extra
    assert extra["multi_grid"] == [1, 2, 4] and extra["block4_rates"] == expected


def test_without_multi_grid_torchvision_rates_and_weights_still_load():
    from deeplab_trt.builder.models import build_network

    plain = build_network(RESNET, 3, 16)
    assert [u.conv2.dilation[0] for u in plain.backbone.layer4] == [1, 2, 2]  # torchvision's OS16
    grid = build_network(RESNET, 3, 16, multi_grid=(1, 2, 4))
    assert [(u.conv2.dilation[0], u.conv2.padding[0]) for u in grid.backbone.layer4] == [(2, 2), (4, 4), (8, 8)]
    grid.load_state_dict(plain.state_dict(), strict=True)  # dilations carry no weights


def test_pretrained_weights_warn_that_accuracy_changes(tmp_path, caplog):
    import torch

    from deeplab_trt.builder.models import build_model, build_network

    checkpoint = tmp_path / "r50.pt"
    torch.save(build_network(RESNET, 3, 16).state_dict(), checkpoint)
    with caplog.at_level(logging.WARNING):
        built = build_model(RESNET, str(checkpoint), output_stride=16, multi_grid=(1, 2, 4))
    assert built.block4_rates == (2, 4, 8) and "trained without multi-grid" in caplog.text


def test_mobilenet_and_bad_grids_are_refused(tmp_path):
    from deeplab_trt.builder.models import multi_grid_rates

    with pytest.raises(ToolkitError, match="applies to ResNet backbones"):
        multi_grid_rates("deeplabv3_mobilenet_v3_large", 16, (1, 2, 4))
    with pytest.raises(ToolkitError, match="three positive integers"):
        multi_grid_rates(RESNET, 16, (1, 2))
    out = tmp_path / "m.onnx"
    for extra, expect in ((["--model", "deeplabv3_mobilenet_v3_large", "--multi-grid", "1,2,4"], "ResNet"),
                          (["--model", RESNET, "--multi-grid", "1,0,4"], "three positive integers")):  # fmt: skip
        proc = subprocess.run(
            [sys.executable, "-m", "deeplab_trt", "export", *extra, "-o", str(out)],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=str(ROOT),
        )
        assert proc.returncode == 2 and expect in proc.stderr.strip().splitlines()[-1], proc.stderr
        assert not out.exists()
