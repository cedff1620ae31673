"""The torch-free checkpoint reader: torch's own tensors, bit for bit, and nothing but tensors.

Why: the demo fills its ONNX template from ``demo_model.pt`` where torch is absent, so the
reader must give exactly what ``torch.load(weights_only=True)`` gives, and refuse what it refuses
(a pickle that would run code).
"""

from __future__ import annotations

import pickle
import zipfile

import numpy as np
import pytest

from deeplab_trt.builder.models import DEMO_PATH
from deeplab_trt.builder.torch_checkpoint import read_checkpoint, read_state_dict
from deeplab_trt.runtime.errors import InvalidModelError


def test_every_tensor_equals_torch_load_bit_for_bit():
    torch = pytest.importorskip("torch")
    want = torch.load(str(DEMO_PATH), map_location="cpu", weights_only=True)
    got = read_checkpoint(DEMO_PATH)
    assert got.keys() == want.keys() and list(got["state_dict"]) == list(want["state_dict"])
    for key, tensor in want["state_dict"].items():
        a = got["state_dict"][key]
        assert a.dtype == tensor.numpy().dtype and a.shape == tuple(tensor.shape), key
        assert a.tobytes() == tensor.contiguous().numpy().tobytes(), key
    assert {k: v for k, v in got.items() if k != "state_dict"} == {k: v for k, v in want.items() if k != "state_dict"}


def test_views_offsets_and_scalars_like_torch(tmp_path):
    """Strided views of a shared storage (a transpose, a slice at an offset) and 0-d tensors."""
    torch = pytest.importorskip("torch")
    base = torch.arange(24, dtype=torch.float16).reshape(4, 6)
    obj = {"t": base.t(), "s": base[1:, 2:5], "z": torch.tensor(7), "b": torch.tensor([True, False])}
    torch.save(obj, tmp_path / "v.pt")
    got = read_checkpoint(tmp_path / "v.pt")
    for key, tensor in obj.items():
        np.testing.assert_array_equal(got[key], tensor.numpy())
        assert got[key].dtype == tensor.numpy().dtype and got[key].flags.c_contiguous


def test_state_dict_is_the_checkpoints_entry():
    sd = read_state_dict(DEMO_PATH)
    assert sd["backbone.0.0.weight"].dtype == np.float16 and sd["backbone.0.0.weight"].shape == (16, 3, 3, 3)


def _with_pickle(tmp_path, data: bytes):
    path = tmp_path / "evil.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("evil/data.pkl", data)
        archive.writestr("evil/byteorder", "little")
    return path


def test_a_pickle_that_would_run_code_is_refused_in_one_line(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = _with_pickle(tmp_path, pickle.dumps({"w": Evil()}))
    with pytest.raises(
        InvalidModelError, match=r"evil\.pt: not a loadable PyTorch checkpoint \(refused to load builtins\.print"
    ) as err:
        read_checkpoint(path)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("content", [b"not a zip", None])
def test_not_a_torch_zip_is_one_line(tmp_path, content):
    path = tmp_path / "x.pt"
    if content is None:
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("readme.txt", "hello")
    else:
        path.write_bytes(content)
    with pytest.raises(InvalidModelError, match=r"x\.pt: not a loadable PyTorch checkpoint"):
        read_checkpoint(path)


def test_a_non_tensor_state_dict_is_refused(tmp_path):
    path = _with_pickle(tmp_path, pickle.dumps({"state_dict": {"w": [1, 2]}}))
    with pytest.raises(InvalidModelError, match="not a model state dict"):
        read_state_dict(path)
