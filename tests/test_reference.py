"""Reference numerics: preprocessing, upsample+argmax, letterbox mapping, rendering, spec round trips.

These pin down the definitions the CUDA kernels are tested against, so each is checked
against an independent implementation (torch's ``F.interpolate``, a per-pixel loop).
"""

from __future__ import annotations

import numpy as np
import pytest

from deeplab_trt.runtime.errors import ToolkitError
from deeplab_trt.runtime.postprocess import (
    labels_from_output,
    overlay,
    palette_bgr,
    render,
    upsample_argmax,
    upsample_then_argmax,
)
from deeplab_trt.runtime.preprocess import Geometry, preprocess, preprocess_batch
from deeplab_trt.runtime.spec import ModelSpec, read_onnx_metadata, spec_from_onnx, voc_palette


def make_spec(h=64, w=128, classes=5, head="lowres", **kw) -> ModelSpec:
    return ModelSpec(
        name="test",
        classes=[f"c{i}" for i in range(classes)],
        palette=voc_palette(classes),
        input_height=h,
        input_width=w,
        head=head,
        **kw,
    )


def blobby_logits(c: int, h: int, w: int, seed: int) -> np.ndarray:
    """Low-res logits with large single-class regions (so most cells are *not* on a boundary)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    centres = rng.uniform([0, 0], [h, w], size=(c, 2))
    dist = (yy[None] - centres[:, 0, None, None]) ** 2 + (xx[None] - centres[:, 1, None, None]) ** 2
    return (-dist / (h * w) * 8 + rng.normal(0, 0.05, (c, h, w))).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# upsample + argmax
# ---------------------------------------------------------------------------------------------
FRAME_SIZES = [(64, 128), (481, 637), (480, 640), (37, 53), (8, 16), (7, 300)]


@pytest.mark.parametrize("frame_hw", FRAME_SIZES)
@pytest.mark.parametrize("kind", ["random", "blobby"])
def test_fused_upsample_argmax_equals_naive_and_torch(frame_hw, kind):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    c, h, w = 5, 8, 16
    logits = (
        np.random.default_rng(1).normal(size=(c, h, w)).astype(np.float32)
        if kind == "random"
        else blobby_logits(c, h, w, seed=2)
    )
    geo = Geometry.compute(frame_hw, (64, 128), "stretch")
    fused = upsample_argmax(logits, geo)
    naive = upsample_then_argmax(logits, geo)
    assert fused.shape == frame_hw and fused.dtype == np.uint8
    np.testing.assert_array_equal(fused, naive)

    full = F.interpolate(torch.from_numpy(logits)[None], size=frame_hw, mode="bilinear", align_corners=False)[0]
    ref = full.argmax(0).numpy()
    # torch computes its weights in float32 with another formula: labels may differ only
    # where the two best classes are within float rounding of each other.
    at_ours = torch.gather(full, 0, torch.from_numpy(fused.astype(np.int64))[None])[0].numpy()
    gap = full.max(0).values.numpy() - at_ours
    assert gap.max() <= 1e-5
    assert (fused == ref).mean() >= 0.9999


def test_fused_path_blends_only_boundary_cells():
    """On blobby logits most output pixels come from the shortcut, yet labels match the oracle."""
    logits = blobby_logits(4, 16, 32, seed=5)
    low = logits.argmax(0)
    assert len(np.unique(low)) >= 3  # several regions, so there are boundaries
    geo = Geometry.compute((240, 320), (64, 128), "stretch")
    np.testing.assert_array_equal(upsample_argmax(logits, geo), upsample_then_argmax(logits, geo))


@pytest.fixture
def many_bands(monkeypatch):
    """Row bands of 3 rows on 5 threads, whatever this machine's core count: every band edge case runs."""
    from concurrent.futures import ThreadPoolExecutor

    from deeplab_trt.runtime import bands

    pool = ThreadPoolExecutor(5)
    monkeypatch.setattr(bands, "_band_pool", lambda: (pool, 5))
    monkeypatch.setattr(bands, "MIN_ROWS_PER_BAND", 3)
    yield
    pool.shutdown()


@pytest.mark.parametrize("frame_hw", FRAME_SIZES + [(4, 9), (1000, 64)])
@pytest.mark.parametrize("policy", ["stretch", "letterbox"])
@pytest.mark.parametrize("alpha", [np.float32(0.4), np.float32(0.5), 0.5])
def test_banded_postprocess_is_bit_identical(many_bands, frame_hw, policy, alpha):
    """Labels and overlay computed in parallel row bands equal the one-band oracle, byte for byte
    (bands split low-res rows between threads and must not drop or double a boundary row)."""
    from deeplab_trt.runtime.postprocess import overlay, palette_bgr

    rng = np.random.default_rng(7)
    logits = rng.normal(size=(6, 8, 16)).astype(np.float32)
    geo = Geometry.compute(frame_hw, (64, 128), policy)
    labels = upsample_argmax(logits, geo)
    np.testing.assert_array_equal(labels, upsample_then_argmax(logits, geo))
    frame = rng.integers(0, 256, frame_hw + (3,), dtype=np.uint8)
    lut = palette_bgr(make_spec(classes=6))
    colour = lut[labels].astype(np.float32)
    want = (frame.astype(np.float32) * (1.0 - alpha) + colour * alpha + 0.5).astype(np.uint8)
    np.testing.assert_array_equal(overlay(frame, labels, lut, alpha), want)


def test_first_max_index_is_argmax_with_its_tie_and_nan_rules():
    """The vectorised argmax over the class axis: ties go to the first class, -0.0 == 0.0, NaN as numpy."""
    from deeplab_trt.runtime.postprocess import first_max_index

    rng = np.random.default_rng(3)
    cases = [
        rng.normal(size=(21, 500)).astype(np.float32),
        np.round(rng.normal(size=(4, 3, 200))).astype(np.float32),  # many exact ties
        np.array([[0.0, -0.0, 1.0], [-0.0, 0.0, 1.0]], np.float32),
        rng.normal(size=(300, 50)).astype(np.float32),  # > 255 classes: wider ranks
        np.full((3, 4), np.inf, np.float32),
    ]
    nan = rng.normal(size=(6, 40)).astype(np.float32)
    nan[2, 5:9] = np.nan
    nan[4, 7:20] = np.nan
    cases.append(nan)
    for values in cases:
        for dtype in (np.uint8, np.int32) if values.shape[0] <= 256 else (np.int32,):
            got = first_max_index(values, dtype)
            assert got.dtype == dtype
            np.testing.assert_array_equal(got, values.argmax(axis=0))


@pytest.mark.parametrize("frame_hw", [(512, 1024), (333, 517), (100, 37), (1, 1), (700, 30)])
@pytest.mark.parametrize("policy", ["stretch", "letterbox"])
def test_upsample_argmax_on_noisy_logits_in_small_blend_chunks(monkeypatch, frame_hw, policy):
    """Noisy logits (most cells on a boundary), ties, NaN and > 256 classes, blended a few segments at
    a time so every chunk edge is crossed: the labels equal the naive oracle's bit for bit."""
    from deeplab_trt.runtime import postprocess

    monkeypatch.setattr(postprocess, "BLEND_FLOATS", 4096)
    rng = np.random.default_rng(11)
    ties = np.round(rng.normal(size=(4, 32, 64))).astype(np.float32)
    nan = rng.normal(size=(6, 32, 64)).astype(np.float32)
    nan[2, 5:9, 7:30] = np.nan
    many = np.round(rng.normal(size=(300, 8, 16))).astype(np.float32)
    for logits in (rng.normal(size=(21, 32, 64)).astype(np.float32), ties, nan, many):
        geo = Geometry.compute(frame_hw, (logits.shape[1] * 16, logits.shape[2] * 16), policy)
        got = upsample_argmax(logits, geo)
        want = upsample_then_argmax(logits, geo)
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)


def test_only_classes_that_can_win_a_boundary_cell_are_blended():
    """Two regions (classes 0 and 1) meet mid-frame; class 2 is high only along the boundary (it wins
    there, mid-blend), class 3 is far below everywhere (dropped); the labels equal the oracle's."""
    from deeplab_trt.runtime.postprocess import _classes_that_can_win, first_max_index

    h, w = 8, 16
    logits = np.zeros((4, h, w), np.float32)
    logits[0, :, : w // 2], logits[1, :, w // 2 :] = 10.0, 10.0
    logits[2, :, w // 2 - 1 : w // 2 + 1] = 9.0  # under 10 at the corners, over the 0/1 blend's 5 between them
    logits[3] = -50.0
    low = first_max_index(logits, np.uint8)
    pad = np.pad(low, ((0, 1), (0, 1)), mode="edge")
    mixed = (pad[:-1, :-1] != pad[:-1, 1:]) | (pad[:-1, :-1] != pad[1:, :-1]) | (pad[:-1, :-1] != pad[1:, 1:])
    assert list(_classes_that_can_win(logits, mixed)) == [0, 1, 2]
    for frame_hw in [(64, 128), (37, 91)]:
        geo = Geometry.compute(frame_hw, (h * 8, w * 8), "stretch")
        labels = upsample_argmax(logits, geo)
        np.testing.assert_array_equal(labels, upsample_then_argmax(logits, geo))
        assert set(np.unique(labels)) == {0, 1, 2}


@pytest.mark.parametrize("alpha", [0.5, np.float32(0.5), 0.25, np.float32(0.7)])
def test_overlay_equals_the_formula_on_every_pair_of_bytes(alpha):
    """Every (frame byte, colour byte) pair once: the uint8 mean at 0.5 and the tables elsewhere are the formula."""
    from deeplab_trt.runtime.postprocess import overlay

    values = np.arange(256, dtype=np.uint8)
    frame = np.repeat(values[:, None, None], 256, axis=1).repeat(3, axis=2)  # row r: byte r
    labels = np.tile(values, (256, 1))  # column c: class c, whose colour is (c, 255 - c, c)
    lut = np.stack([values, 255 - values, values], axis=1)
    colour = lut[labels].astype(np.float32)
    want = (frame.astype(np.float32) * (1.0 - alpha) + colour * alpha + 0.5).astype(np.uint8)
    np.testing.assert_array_equal(overlay(frame, labels, lut, alpha), want)


def test_logits_and_labels_heads_agree_with_each_other():
    """A full-resolution logits map and its argmax give the same frame labels (nearest mapping)."""
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(5, 64, 128)).astype(np.float32)
    geo = Geometry.compute((481, 637), (64, 128), "stretch")
    a = labels_from_output(logits, make_spec(head="logits"), geo)
    b = labels_from_output(logits.argmax(0)[None].astype(np.int64), make_spec(head="labels"), geo)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (481, 637)


def test_labels_head_identity_at_input_size():
    labels = np.random.default_rng(4).integers(0, 5, (64, 128))
    geo = Geometry.compute((64, 128), (64, 128), "stretch")
    np.testing.assert_array_equal(labels_from_output(labels, make_spec(head="labels"), geo), labels)


# ---------------------------------------------------------------------------------------------
# letterbox
# ---------------------------------------------------------------------------------------------
def test_letterbox_geometry():
    geo = Geometry.compute((480, 640), (64, 128), "letterbox")
    assert (geo.height, geo.width) == (64, 85) and (geo.top, geo.left) == (0, 21)
    geo = Geometry.compute((100, 1000), (64, 128), "letterbox")
    assert (geo.height, geo.width) == (13, 128) and (geo.top, geo.left) == (25, 0)
    for fh, fw in [(481, 637), (64, 128), (1080, 1920), (50, 30)]:
        g = Geometry.compute((fh, fw), (64, 128), "letterbox")
        assert g.top + g.height <= 64 and g.left + g.width <= 128
        assert abs(g.width / g.height - fw / fh) <= fw / fh * 0.1 + 1 / g.height  # aspect kept (to a pixel)
    with pytest.raises(ToolkitError):
        Geometry.compute((10, 10), (8, 8), "squash")


def test_letterbox_preprocess_pads_with_zero_and_matches_stretch_of_content():
    spec = make_spec()
    frame = np.random.default_rng(6).integers(0, 256, (481, 637, 3), dtype=np.uint8)
    x, geo = preprocess(frame, spec, "letterbox")
    content = x[0, :, geo.top : geo.top + geo.height, geo.left : geo.left + geo.width]
    pad = x.copy()
    pad[0, :, geo.top : geo.top + geo.height, geo.left : geo.left + geo.width] = 0
    assert not pad.any()
    inner = make_spec(h=geo.height, w=geo.width)
    np.testing.assert_array_equal(content, preprocess(frame, inner, "stretch")[0][0])


@pytest.mark.parametrize("head", ["lowres", "logits", "labels"])
def test_letterbox_labels_map_content_back_and_never_show_padding(head):
    """Left half of the content = class 1, right half = class 2, padding = class 4 (must never leak)."""
    spec = make_spec(head=head)
    geo = Geometry.compute((480, 640), (64, 128), "letterbox")  # content cols 21..106
    labels = np.full((64, 128), 4)
    mid = geo.left + geo.width // 2
    labels[:, geo.left : mid] = 1
    labels[:, mid : geo.left + geo.width] = 2
    if head == "labels":
        out = labels
    else:
        onehot = (np.arange(5)[:, None, None] == labels[None]).astype(np.float32) * 10
        out = onehot if head == "logits" else onehot[:, ::1, ::1]
    frame_labels = labels_from_output(out, spec, geo)
    assert frame_labels.shape == (480, 640)
    assert 4 not in frame_labels
    assert (frame_labels[:, :300] == 1).all() and (frame_labels[:, 340:] == 2).all()


def test_letterbox_lowres_stride16():
    """Low-res map (stride 16) with the content region one class: the whole frame is that class."""
    spec = make_spec(head="lowres")
    geo = Geometry.compute((300, 1000), (64, 128), "letterbox")  # content rows 25..39 of 64
    low = np.zeros((5, 4, 8), np.float32)
    low[3] = 1.0  # class 3 everywhere (incl. padding rows: must still map fine)
    assert (labels_from_output(low, spec, geo) == 3).all()


# ---------------------------------------------------------------------------------------------
# preprocessing
# ---------------------------------------------------------------------------------------------
def bilinear_half_pixel(img: np.ndarray, oh: int, ow: int) -> np.ndarray:
    """Per-pixel half-pixel bilinear (OpenCV INTER_LINEAR / torch align_corners=False), float64."""
    ih, iw = img.shape[:2]
    out = np.zeros((oh, ow, img.shape[2]))

    def tap(d, n_in, n_out):
        f = (d + 0.5) * n_in / n_out - 0.5
        i0 = int(np.floor(f))
        w = f - i0
        if i0 < 0:
            i0, w = 0, 0.0
        if i0 >= n_in - 1:
            i0, w = n_in - 1, 0.0
        return i0, min(i0 + 1, n_in - 1), w

    for y in range(oh):
        y0, y1, wy = tap(y, ih, oh)
        for x in range(ow):
            x0, x1, wx = tap(x, iw, ow)
            top = (1 - wx) * img[y0, x0] + wx * img[y0, x1]
            bottom = (1 - wx) * img[y1, x0] + wx * img[y1, x1]
            out[y, x] = (1 - wy) * top + wy * bottom
    return out


@pytest.mark.parametrize(
    "frame_hw,input_hw",
    [((7, 5), (4, 6)), ((5, 7), (13, 17)), ((16, 16), (4, 4)), ((9, 11), (9, 11)), ((30, 41), (8, 16))],
)
def test_preprocess_equals_per_pixel_bilinear(frame_hw, input_hw):
    spec = make_spec(*input_hw)
    frame = np.random.default_rng(7).integers(0, 256, (*frame_hw, 3), dtype=np.uint8)
    x, geo = preprocess(frame, spec)
    assert x.shape == (1, 3, *input_hw) and x.dtype == np.float32
    rgb = bilinear_half_pixel(frame.astype(np.float64), *input_hw)[:, :, ::-1]
    expect = ((rgb / 255.0 - np.array(spec.mean)) / np.array(spec.std)).transpose(2, 0, 1)
    np.testing.assert_allclose(x[0], expect, atol=2e-5)


@pytest.mark.parametrize("frame_hw", [(64, 128), (37, 53), (200, 90)])
@pytest.mark.parametrize("policy", ["stretch", "letterbox"])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_banded_preprocess_is_bit_identical(monkeypatch, many_bands, frame_hw, policy, dtype):
    """Preprocessing in row bands on several threads writes the same bytes as one band."""
    from deeplab_trt.runtime import preprocess as module

    spec = make_spec(64, 128)
    frame = np.random.default_rng(5).integers(0, 256, (*frame_hw, 3), dtype=np.uint8)
    banded, _ = preprocess(frame, spec, policy, dtype)
    monkeypatch.setattr(module, "in_row_bands", lambda rows, work: work(0, rows))
    np.testing.assert_array_equal(banded, preprocess(frame, spec, policy, dtype)[0])


def test_preprocess_constant_colour_mean_std_and_channel_order():
    b, g, r = 10, 100, 200
    frame = np.zeros((33, 47, 3), np.uint8)
    frame[:] = (b, g, r)
    spec = make_spec(8, 16, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.5))
    x, _ = preprocess(frame, spec)
    expect = [(r / 255 - 0.5) / 0.2, (g / 255 - 0.4) / 0.25, (b / 255 - 0.3) / 0.5]
    for ch in range(3):
        np.testing.assert_allclose(x[0, ch], expect[ch], rtol=1e-6, atol=1e-6)
    # A model that wants BGR keeps OpenCV's order.
    x_bgr, _ = preprocess(frame, make_spec(8, 16, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.5), channel_order="BGR"))
    np.testing.assert_allclose(x_bgr[0, 0], (b / 255 - 0.5) / 0.2, rtol=1e-6)
    # An RGB frame (bgr=False) into an RGB model: no swap.
    x_rgb, _ = preprocess(frame[:, :, ::-1].copy(), spec, bgr=False)
    np.testing.assert_array_equal(x_rgb, x)
    # fp16 input and batching give the same numbers.
    x16, _ = preprocess(frame, spec, dtype=np.float16)
    assert x16.dtype == np.float16
    np.testing.assert_allclose(x16.astype(np.float32), x, atol=2e-3)
    batch, geos = preprocess_batch([frame, frame], spec)
    assert batch.shape == (2, 3, 8, 16) and len(geos) == 2
    np.testing.assert_array_equal(batch[1], x[0])


def test_preprocess_rejects_bad_frames():
    spec = make_spec(8, 16)
    for bad in (np.zeros((4, 4), np.uint8), np.zeros((4, 4, 3), np.float32), np.zeros((4, 4, 4), np.uint8)):
        with pytest.raises(ToolkitError, match="uint8 HxWx3"):
            preprocess(bad, spec)


# ---------------------------------------------------------------------------------------------
# rendering
# ---------------------------------------------------------------------------------------------
def test_render_modes():
    spec = make_spec(classes=3)
    lut = palette_bgr(spec)
    assert lut.shape == (256, 3)
    np.testing.assert_array_equal(lut[1], spec.palette[1][::-1])  # RGB palette, BGR frames
    frame = np.full((4, 6, 3), 200, np.uint8)
    labels = np.zeros((4, 6), np.uint8)
    labels[:, 3:] = 1
    mask = render(frame, labels, lut, "mask")
    np.testing.assert_array_equal(mask[0, 0], lut[0])
    np.testing.assert_array_equal(mask[0, 5], lut[1])
    grey = render(frame, labels, lut, "labels")
    assert grey.shape == (4, 6, 3) and grey[0, 5].tolist() == [1, 1, 1] and grey[0, 0].tolist() == [0, 0, 0]
    ov = render(frame, labels, lut, "overlay", alpha=0.25)
    expect = np.floor(200 * 0.75 + lut[1].astype(np.float64) * 0.25 + 0.5)
    np.testing.assert_array_equal(ov[0, 5], expect)
    np.testing.assert_array_equal(overlay(frame, labels, lut, 0.0), frame)
    np.testing.assert_array_equal(overlay(frame, labels, lut, 1.0), mask)
    with pytest.raises(ToolkitError, match="mode"):
        render(frame, labels, lut, "sparkles")


# ---------------------------------------------------------------------------------------------
# model spec
# ---------------------------------------------------------------------------------------------
def test_spec_metadata_and_dict_round_trip():
    spec = make_spec(head="logits", output_stride=8, extra={"batch": 1})
    meta = spec.to_metadata()
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items())
    assert ModelSpec.from_metadata(meta) == spec
    assert ModelSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(ToolkitError, match="no deeplab-trt metadata"):
        ModelSpec.from_metadata({"model": '"x"'}, source="m.onnx")
    with pytest.raises(ToolkitError, match="malformed"):
        ModelSpec.from_metadata({**meta, "classes": "[not json"}, source="m.onnx")
    with pytest.raises(ToolkitError, match="head"):
        make_spec(head="probabilities")


def test_spec_through_an_onnx_file(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    spec = make_spec(head="labels")
    graph = helper.make_graph(
        [helper.make_node("Identity", ["input"], ["output"])],
        "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 64, 128])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3, 64, 128])],
    )
    model = helper.make_model(graph)
    helper.set_model_props(model, spec.to_metadata())
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    assert spec_from_onnx(path) == spec
    assert read_onnx_metadata(path)["head"] == '"labels"'
    bare = helper.make_model(graph)
    onnx.save(bare, str(tmp_path / "bare.onnx"))
    with pytest.raises(ToolkitError, match="bare.onnx: no deeplab-trt metadata"):
        spec_from_onnx(tmp_path / "bare.onnx")


@pytest.mark.parametrize(("field", "value"), [("palette", [(0, 0, 0, 255)]), ("mean", (0.5, 0.5)), ("std", (1.0,))])
def test_spec_rejects_non_rgb_triples_in_one_line(field, value):
    """Hand-edited metadata with a 4-value colour or a 2-value mean fails as a ToolkitError, not a traceback."""
    from deeplab_trt.runtime.errors import ToolkitError
    from deeplab_trt.runtime.spec import ModelSpec

    kwargs = {"name": "m", "classes": ["a"], "palette": [(1, 2, 3)], "input_height": 8, "input_width": 8}
    kwargs[field] = value
    with pytest.raises(ToolkitError, match=f"model spec: {field}"):
        ModelSpec(**kwargs)


def test_atomic_dir_replaces_whole_or_not_at_all(tmp_path):
    """The one way directories are written (Triton models, DeepStream configs, the unpacked server)."""
    from deeplab_trt.runtime.atomic import atomic_dir

    final = tmp_path / "out"
    with atomic_dir(final) as stage:
        (stage / "a.txt").write_text("one")
    with pytest.raises(RuntimeError):
        with atomic_dir(final) as stage:
            (stage / "b.txt").write_text("half")
            raise RuntimeError("interrupted")
    assert sorted(p.name for p in final.iterdir()) == ["a.txt"]
    with atomic_dir(final) as stage:
        (stage / "c.txt").write_text("two")
    assert sorted(p.name for p in final.iterdir()) == ["c.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"], "no stage or old copy left behind"
