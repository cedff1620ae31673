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


def _graph_and_metadata(path):
    """The file's bytes without its initializers' data, the checkpoint named by its repository path
    (the export names it by this machine's)."""
    import onnx

    model = onnx.load(str(path))
    for prop in model.metadata_props:
        prop.value = prop.value.replace(str(DEMO_PATH), "builder/assets/demo_model.pt")
    for tensor in model.graph.initializer:
        tensor.ClearField("raw_data")
    return model.SerializeToString()


def _initializers(path):
    import onnx
    from onnx import numpy_helper

    return {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}


def test_shipped_onnx_equals_the_export_of_the_checkpoint(tmp_path, demo_onnx):
    """Same graph, metadata, initializer names and types, weights and labels as a torch export made here.

    Byte for byte where torch's CPU kernels round as on the machine that made the template (an
    AVX2 x86-64: ``demo_asset.write_demo_onnx`` checks that there); elsewhere the exporter's
    BatchNorm fold rounds otherwise (measured on an AVX-512 AMD EPYC: 105 of 140 initializers
    differ, by at most 256 ulp, 2.3e-5 relative) while the expansion is numpy's IEEE arithmetic on
    every machine, so the weights are compared to 1e-4 relative and the labels must agree.
    """
    pytest.importorskip("torch", reason="the export needs torch")
    from deeplab_trt.benchmarks.scenes import SceneGenerator

    expanded = tmp_path / "expanded.onnx"
    demo_asset.expand_onnx(demo_asset.DEMO_ONNX_PATH, expanded, checkpoint=DEMO_PATH)
    assert _graph_and_metadata(expanded) == _graph_and_metadata(demo_onnx)  # graph, metadata, initializer types
    got, want = _initializers(expanded), _initializers(demo_onnx)
    assert got.keys() == want.keys()
    for name, array in want.items():
        assert got[name].dtype == array.dtype and got[name].shape == array.shape, name
        np.testing.assert_allclose(got[name], array, rtol=1e-4, atol=1e-8, err_msg=name)
    frames = [frame for frame, _ in SceneGenerator(256, 512, seed=10_000_000).video_frames(3, index=16)]
    for labels, export_labels in zip(_labels(expanded, frames), _labels(demo_onnx, frames)):
        assert (labels == export_labels).mean() >= 0.9999  # identical here (measured), on a tie a pixel may flip


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


def _outputs(path, batch):
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": batch})[0]


@pytest.fixture(scope="module")
def street_batch():
    """Eight different street frames, preprocessed as the runtime does (1x..8x3x256x512)."""
    from deeplab_trt.benchmarks.scenes import SceneGenerator
    from deeplab_trt.runtime.preprocess import preprocess_batch
    from deeplab_trt.runtime.spec import spec_from_onnx

    frames = [
        frame for i in range(8) for frame, _ in SceneGenerator(256, 512, seed=10_000_000).video_frames(1, index=i)
    ]
    return preprocess_batch(frames, spec_from_onnx(demo_asset.DEMO_ONNX_PATH))[0]


def test_dynamic_batch_demo_gives_each_image_its_batch_1_output(tmp_path, street_batch):
    """Several streams in one inference must not change a picture: batch N, image i == image i alone, bit for bit.

    Against the fixed-batch file (the demo's own) the logits differ by an ulp or two (ONNX Runtime
    plans a graph of static shapes otherwise; measured max 1.9e-6), the labels not at all.
    """
    from deeplab_trt.runtime.backends import open_backend

    fixed, dynamic = tmp_path / "fixed.onnx", tmp_path / "dynamic.onnx"
    demo_asset.expand_onnx(demo_asset.DEMO_ONNX_PATH, fixed, checkpoint=DEMO_PATH)
    demo_asset.expand_onnx(demo_asset.DEMO_ONNX_PATH, dynamic, checkpoint=DEMO_PATH, dynamic_batch=(1, 8, 8))
    alone = np.concatenate([_outputs(dynamic, street_batch[i : i + 1]) for i in range(8)])
    for n in (1, 2, 4, 8):
        np.testing.assert_array_equal(_outputs(dynamic, street_batch[:n]), alone[:n])
    fixed_alone = np.concatenate([_outputs(fixed, street_batch[i : i + 1]) for i in range(8)])
    np.testing.assert_allclose(alone, fixed_alone, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(alone.argmax(axis=1), fixed_alone.argmax(axis=1))
    with open_backend(dynamic) as backend:
        assert backend.fixed_batch is None and backend.batch_limits == (1, None)
        assert backend.spec.extra["dynamic_batch"] == [1, 8, 8] and "batch" not in backend.spec.extra
        assert backend.spec.extra["output_shape"][0] == "batch"
    assert demo_asset._weights(dynamic) == demo_asset._weights(fixed)


@pytest.mark.slow
def test_dynamic_batch_demo_equals_the_dynamic_export(tmp_path, onnx_factory, street_batch):
    """The template made dynamic is the checkpoint's export with ``--dynamic-batch``: same outputs (to the
    rounding of the export's BatchNorm fold, :func:`test_shipped_onnx_equals_the_export_of_the_checkpoint`),
    same metadata."""
    pytest.importorskip("torch", reason="the export needs torch")
    import onnx

    export = onnx_factory(
        model="demo", head="lowres", height=None, width=None, num_classes=None, dynamic_batch=(1, 8, 8)
    )
    dynamic = tmp_path / "dynamic.onnx"
    demo_asset.expand_onnx(demo_asset.DEMO_ONNX_PATH, dynamic, checkpoint=DEMO_PATH, dynamic_batch=(1, 8, 8))
    for n in (1, 8):  # bit for bit where the export's BatchNorm fold rounds as the template's (see above)
        ours_out, export_out = _outputs(dynamic, street_batch[:n]), _outputs(export, street_batch[:n])
        np.testing.assert_allclose(ours_out, export_out, rtol=0, atol=1e-4)
        assert (ours_out.argmax(axis=1) == export_out.argmax(axis=1)).mean() >= 0.9999
    ours = {p.key: p.value for p in onnx.load(str(dynamic), load_external_data=False).metadata_props}
    theirs = {p.key: p.value for p in _metadata(export)}
    assert ours == {k: v.replace(str(DEMO_PATH), "builder/assets/demo_model.pt") for k, v in theirs.items()}


def test_demo_onnx_path_keys_the_batch(tmp_path):
    from deeplab_trt.benchmarks import demo_command

    fixed = demo_command.demo_onnx_path(tmp_path, progress=False)
    dynamic = demo_command.demo_onnx_path(tmp_path, progress=False, dynamic_batch=(1, 4, 8))
    assert dynamic != fixed and dynamic == demo_command.cached_onnx_name(tmp_path, (1, 4, 8)) and dynamic.is_file()
