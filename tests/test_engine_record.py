"""The engine record (``X.engine.json``): one owner that writes, reads, validates and describes it.

CPU only, no TensorRT: ``data/v1_builder.engine.json`` is a sidecar written by the builder before
the record type existed (TensorRT-RTX 1.7.1, FP16 mobilenet 64x128): it must still read, and write
back byte for byte. Real builds that go through the record are in test_build.py.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest

from deeplab_trt.info_command import describe, format_text
from deeplab_trt.runtime.engine_record import EngineFile, EngineRecord, engine_of, sidecar_path
from deeplab_trt.runtime.errors import IncompatibleEngineError, InvalidModelError, ToolkitError
from deeplab_trt.runtime.tensorrt_flavour import Flavour

OLD = Path(__file__).parent / "data" / "v1_builder.engine.json"
RTX = Flavour.documented("tensorrt-rtx", (1, 7, 1))


@pytest.fixture
def old_engine(tmp_path) -> Path:
    """A stand-in engine file next to the old builder's sidecar (under the name it records)."""
    name = json.loads(OLD.read_text())["engine"]["file"]
    engine = tmp_path / name
    engine.write_bytes(b"stand-in engine bytes")
    shutil.copy(OLD, sidecar_path(engine))
    return engine


def test_old_builder_sidecar_reads_and_writes_back_byte_for_byte(old_engine, tmp_path):
    record = EngineRecord.read(old_engine)
    assert record.to_dict() == json.loads(OLD.read_text()) and record.unknown == {}
    assert record.precision == "fp16" and record.tf32 is True and record.built_label == "TensorRT-RTX 1.7.1"
    assert record.engine.bytes == 24918964 and record.model_spec().num_classes == 5
    copy = tmp_path / "copy" / old_engine.name
    assert record.write(copy) == sidecar_path(copy)
    assert sidecar_path(copy).read_bytes() == OLD.read_bytes()


def test_write_with_engine_then_read_round_trips(tmp_path):
    blob = b"\x00engine\xff" * 100
    out = tmp_path / "m.engine"
    record = EngineRecord(
        engine=EngineFile.of(out.name, blob),
        tensorrt=RTX.describe(),
        io=[{"name": "input", "mode": "input", "shape": [1, 3, 8, 8], "dtype": "float32"}],
        spec={"name": "m"},
        precision="fp32",
        engine_build_s=0.5,
        unknown={"added_by_a_newer_writer": [1, 2]},
    )
    record.write(out, engine=blob)
    assert out.read_bytes() == blob and sorted(p.name for p in tmp_path.iterdir()) == ["m.engine", "m.engine.json"]
    again = EngineRecord.read(out)
    assert again == record and list(again.to_dict())[-1] == "added_by_a_newer_writer"
    again.check_engine_bytes(blob)
    with pytest.raises(InvalidModelError, match="truncated"):
        again.check_engine_bytes(blob[:-1])


def test_a_failed_write_leaves_nothing(tmp_path):
    record = EngineRecord(engine=EngineFile("m.engine"), tensorrt={}, io=[], spec={})
    with pytest.raises(TypeError):
        record.write(tmp_path / "m.engine", engine="not bytes")  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []


def test_optional_keys_may_be_absent(tmp_path):
    """Only engine, tensorrt, io and spec are needed (format_version too may be absent: 0)."""
    engine = tmp_path / "min.engine"
    engine.write_bytes(b"x")
    minimal = {"format": "deeplab-trt engine", "engine": {"file": engine.name}, "tensorrt": {}, "io": [], "spec": {}}
    sidecar_path(engine).write_text(json.dumps(minimal))
    record = EngineRecord.read(engine)
    assert record.tf32 is None and record.compute_capabilities == [] and record.engine.sha256 is None
    assert record.describe()[0] == "?, built with ? ? for - (?)" and "built ? in ? s" in record.describe()[-1]
    record.check_engine_bytes(b"anything")  # nothing recorded, nothing to compare


MALFORMED = {
    "bad_json": ("{broken", InvalidModelError, "not a valid engine sidecar (JSONDecodeError"),
    "not_an_object": ("[1, 2]", InvalidModelError, "not a deeplab-trt engine sidecar"),
    "missing_keys": ({"io": None, "spec": None}, InvalidModelError, "incomplete engine sidecar (io, spec missing)"),
    "io_not_a_list": ({"io": "input"}, InvalidModelError, 'io is str "input", expected list'),
    "io_item": ({"io": [{"name": "x"}]}, InvalidModelError, "io[0] is not a tensor"),
    "target_not_str": ({"compute_capabilities": [86]}, InvalidModelError, "compute_capabilities[0] is int 86"),
    "engine_bytes": ({"engine": {"file": "e", "bytes": "10"}}, InvalidModelError, "engine.bytes is str"),
    "engine_file": ({"engine": {"bytes": 10}}, InvalidModelError, "engine.file missing"),
    "tf32_str": ({"tf32": "yes"}, InvalidModelError, 'tf32 is str "yes", expected bool or null'),
    "bool_as_number": ({"engine_build_s": True}, InvalidModelError, "engine_build_s is bool"),
    "version_str": ({"format_version": "1"}, InvalidModelError, "format_version is '1'"),
    "newer_version": ({"format_version": 99}, IncompatibleEngineError, "sidecar format 99 is newer"),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_malformed_sidecar_is_one_line_naming_the_file(case, old_engine):
    content, error, expected = MALFORMED[case]
    if isinstance(content, dict):
        data = {**json.loads(OLD.read_text()), **content}
        content = json.dumps({k: v for k, v in data.items() if v is not None})
    sidecar_path(old_engine).write_text(content)
    with pytest.raises(error) as caught:
        EngineRecord.read(old_engine)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"{sidecar_path(old_engine)}: "), message
    assert expected in message, message


def test_missing_files(tmp_path):
    with pytest.raises(ToolkitError, match="missing.engine: no such file"):
        EngineRecord.read(tmp_path / "missing.engine")
    (tmp_path / "x.engine").write_bytes(b"")
    with pytest.raises(InvalidModelError, match="x.engine: no sidecar x.engine.json next to it"):
        EngineRecord.read(tmp_path / "x.engine")


def test_compatibility_checks(old_engine):
    record = EngineRecord.read(old_engine)
    record.check_compatibility(RTX, (8, 6))
    with pytest.raises(IncompatibleEngineError, match="this machine runs TensorRT 10.3.0"):
        record.check_compatibility(Flavour.documented("tensorrt", (10, 3, 0)), None, "e.engine")
    with pytest.raises(IncompatibleEngineError, match="only in the TensorRT version that built them"):
        record.check_compatibility(Flavour.documented("tensorrt-rtx", (1, 8, 0)), None)
    with pytest.raises(IncompatibleEngineError, match=r"this GPU \(Orin\) is SM87: rebuild with --compute-capability"):
        record.check_compatibility(RTX, (8, 7), "e.engine", "Orin")


def test_info_describes_an_old_engine_without_a_gpu(old_engine):
    assert engine_of(sidecar_path(old_engine)) == old_engine and engine_of(old_engine) == old_engine
    info = describe(sidecar_path(old_engine))
    assert info["record"] == json.loads(OLD.read_text()) and info["built_with"] == "TensorRT-RTX 1.7.1"
    text = format_text(info)
    assert "TensorRT engine, 0.0 MB, fp16, built with TensorRT-RTX 1.7.1 for SM80, SM86, SM89, SM120" in text
    assert "  input   input: 1×3×64×128 float16" in text and "bytes but its sidecar records 24918964" in text
    assert "model: " in text and "plan: strongly typed network from the FP16 ONNX pass" in text


def test_user_allocation_round_trips_and_is_absent_from_old_records(old_engine, tmp_path):
    """Issue 11 item 5: whether the RTX engine was built CUDA-graph capturable (REQUIRE_USER_ALLOCATION)."""
    assert "user_allocation" not in EngineRecord.read(old_engine).to_dict()
    assert EngineRecord.read(old_engine).user_allocation is None
    record = EngineRecord(engine=EngineFile("u.engine"), tensorrt=RTX.describe(), io=[], spec={}, user_allocation=True)
    record.write(tmp_path / "u.engine")
    (tmp_path / "u.engine").write_bytes(b"")
    again = EngineRecord.read(tmp_path / "u.engine")
    assert again == record and again.to_dict()["user_allocation"] is True
    assert "CUDA-graph capturable (REQUIRE_USER_ALLOCATION on)" in again.describe()
    with pytest.raises(InvalidModelError, match='user_allocation is str "yes", expected bool or null'):
        EngineRecord.from_dict({**record.to_dict(), "user_allocation": "yes"}, "u.engine.json")


def test_dla_record_round_trips_and_is_checked(old_engine, tmp_path):
    """A DLA engine's record says which core; GPU records (the old builder's) have no ``dla`` key at all."""
    assert "dla" not in EngineRecord.read(old_engine).to_dict()
    trt10 = Flavour.documented("tensorrt", (10, 3, 0))
    record = EngineRecord(
        engine=EngineFile("d.engine"),
        tensorrt=trt10.describe(),
        io=[],
        spec={},
        precision="fp16",
        dla={"core": 1, "gpu_fallback": True},
    )
    record.write(tmp_path / "d.engine")
    (tmp_path / "d.engine").write_bytes(b"")
    again = EngineRecord.read(tmp_path / "d.engine")
    assert again == record and "DLA core 1 (layers DLA cannot run fall back to the GPU)" in again.describe()
    again.check_compatibility(trt10, (8, 7))
    again.check_dla_cores(2)
    with pytest.raises(IncompatibleEngineError, match="built for DLA core 1, this machine has 1 DLA core: rebuild"):
        again.check_dla_cores(1, "d.engine")
    with pytest.raises(IncompatibleEngineError, match="this machine has no DLA"):
        again.check_dla_cores(0, "d.engine")
    no_dla = dataclasses.replace(trt10, has_dla=False)  # e.g. bindings built without DeviceType.DLA
    with pytest.raises(IncompatibleEngineError, match="built for DLA core 1, but TensorRT 10.3.0 has no DLA"):
        again.check_compatibility(no_dla, None, "d.engine")
    data = {**record.to_dict(), "dla": {"core": "1"}}
    with pytest.raises(InvalidModelError, match="dla is"):
        EngineRecord.from_dict(data, "d.engine.json")
