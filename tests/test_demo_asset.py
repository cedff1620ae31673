"""The shipped demo ONNX template: filled from the checkpoint it is the torch export, and the demo needs no torch.

Why these checks: the demo must run on a Jetson without torch (issue 10 item 8), so it fills
``builder/assets/demo_model.template.onnx`` with ``demo_model.pt``'s weights instead of exporting
the checkpoint. That is only honest while the result is the checkpoint's export: same weights,
same labels. (The demo without torch:
``tests/test_packaging.py::test_demo_command_without_torch``.)
"""

from __future__ import annotations

import numpy as np
import pytest

from deeplab_trt.builder import demo_asset
from deeplab_trt.builder.models import DEMO_PATH
from deeplab_trt.runtime.engine_record import sha256_file

pytestmark = pytest.mark.skipif(not demo_asset.DEMO_ONNX_PATH.exists(), reason="no shipped demo ONNX template")


def test_shipped_onnx_is_derived_from_the_committed_checkpoint():
    """A retrained checkpoint needs ``python -m deeplab_trt.builder.demo_asset`` (else the demo falls back to torch)."""
    assert demo_asset.source_sha256() == sha256_file(DEMO_PATH)


def _labels(path, frames):
    import onnxruntime as ort

    from deeplab_trt.runtime.preprocess import preprocess
    from deeplab_trt.runtime.spec import ModelSpec

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    spec = ModelSpec.from_metadata({p.key: p.value for p in _metadata(path)})
    return [session.run(None, {"input": preprocess(f, spec)[0]})[0].argmax(axis=1) for f in frames]


def _metadata(path):
    import onnx

    return onnx.load(str(path), load_external_data=False).metadata_props


def _serialized(path):
    """The file's bytes once the checkpoint is named by its repository path (the export names it by this machine's)."""
    import onnx

    model = onnx.load(str(path))
    for prop in model.metadata_props:
        prop.value = prop.value.replace(str(DEMO_PATH), "builder/assets/demo_model.pt")
    return model.SerializeToString()


def test_shipped_onnx_equals_the_export_of_the_checkpoint(tmp_path, demo_onnx):
    pytest.importorskip("torch", reason="the export needs torch")
    from deeplab_trt.benchmarks.scenes import SceneGenerator

    expanded = tmp_path / "expanded.onnx"
    demo_asset.expand_onnx(demo_asset.DEMO_ONNX_PATH, expanded, checkpoint=DEMO_PATH)
    assert demo_asset._weights(expanded) == demo_asset._weights(demo_onnx)  # name, dtype, shape, bytes
    assert _serialized(expanded) == _serialized(demo_onnx)  # graph, metadata: the whole file
    frames = [frame for frame, _ in SceneGenerator(256, 512, seed=10_000_000).video_frames(3, index=16)]
    for got, want in zip(_labels(expanded, frames), _labels(demo_onnx, frames)):
        np.testing.assert_array_equal(got, want)


def test_the_template_is_small_and_names_checkpoint_tensors():
    """The weights live once in the repository, in the checkpoint: the template holds graph, scales, metadata."""
    import onnx

    from deeplab_trt.builder.torch_checkpoint import read_state_dict

    assert demo_asset.DEMO_ONNX_PATH.stat().st_size < 1_000_000
    sd = read_state_dict(DEMO_PATH)
    placeholders = [t for t in onnx.load(str(demo_asset.DEMO_ONNX_PATH)).graph.initializer if t.doc_string]
    assert len(placeholders) > 50
    for t in placeholders:
        key = t.doc_string.removeprefix(demo_asset._KEY)
        assert not t.raw_data and sd[key].shape == tuple(t.dims), t.name


def test_the_expanded_onnx_is_valid_and_runs(tmp_path):
    """Filled and folded with numpy only (no torch, no export): a checked ONNX that ONNX Runtime runs."""
    import onnx

    expanded = tmp_path / "expanded.onnx"
    demo_asset.expand_onnx(demo_asset.DEMO_ONNX_PATH, expanded, checkpoint=DEMO_PATH)
    onnx.checker.check_model(str(expanded))
    frame = np.full((256, 512, 3), 127, np.uint8)
    assert _labels(expanded, [frame])[0].shape == (1, 16, 32)


def test_a_checkpoint_without_a_placeholder_tensor_is_one_line(tmp_path):
    """The template filled from another checkpoint: one line naming the template and the missing key."""
    import zipfile

    from deeplab_trt.runtime.errors import InvalidModelError

    other = tmp_path / "other.pt"
    with zipfile.ZipFile(DEMO_PATH) as src, zipfile.ZipFile(other, "w") as dst:
        for name in src.namelist():
            data = src.read(name)
            if name.endswith("/data.pkl"):
                data = data.replace(b"backbone.0.0.weight", b"backbone.0.0.weighs")
            dst.writestr(name, data)
    with pytest.raises(InvalidModelError, match=r"template\.onnx: .*'backbone\.0\.0\.weight'.* absent"):
        demo_asset.expand_onnx(demo_asset.DEMO_ONNX_PATH, tmp_path / "x.onnx", checkpoint=other)
    assert not (tmp_path / "x.onnx").exists()


def test_demo_needs_no_export(monkeypatch, tmp_path):
    """The demo's ONNX comes from the template and the checkpoint, under the cache key of the export."""
    from deeplab_trt.benchmarks import demo_command

    monkeypatch.setattr("deeplab_trt.builder.export.export_onnx", lambda *a, **k: pytest.fail("exported"))
    key = demo_command.cached_onnx_name(tmp_path)
    assert demo_command.demo_onnx_path(tmp_path, progress=False) == key and key.is_file()
