"""``deeplab-trt deploy triton``: configs parsed with Triton's own schema, bad input, and a real server end to end.

The end-to-end test starts the ``tritonserver`` that ``./setup.sh`` unzips from the nvidia-pytriton
wheel (:mod:`deeplab_trt.benchmarks.tritonserver`), sends frames of a synthetic street video over
HTTP and gRPC, and compares the labels with the in-process runtime's, byte for byte.
"""

from __future__ import annotations

import concurrent.futures
import copy
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from deeplab_trt.runtime.errors import ToolkitError

ROOT = Path(__file__).resolve().parents[1]
FRAME_HW = (72, 136)  # not the model's 64x128: the server resizes like the runtime does


def parse_config(path: Path):
    """``config.pbtxt`` → Triton's ``ModelConfig`` message (tritonclient ships the schema)."""
    pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")
    from google.protobuf import text_format

    return text_format.Parse(path.read_text(), pb2.ModelConfig())


def parameters(config) -> dict[str, str]:
    return {k: v.string_value for k, v in config.parameters.items()}


@pytest.fixture(scope="module")
def dynamic_onnx(onnx_factory):
    return onnx_factory(head="lowres", height=64, width=128, num_classes=5, dynamic_batch=(1, 4, 8))


@pytest.fixture(scope="module")
def sidecar_of(dynamic_onnx, tmp_path_factory, rtx_flavour):
    """A real engine + sidecar (TensorRT-RTX, built on CPU) with a 1:4:8 batch profile."""
    from deeplab_trt.builder.engine import BuildOptions, build_engine

    out = tmp_path_factory.mktemp("engine") / "dyn.engine"
    build_engine(dynamic_onnx, out, BuildOptions(precision="fp32", flavour="tensorrt-rtx", progress=False))
    return out


# ---------------------------------------------------------------------------------------------
# configs and files
# ---------------------------------------------------------------------------------------------
def test_segmenter_repository_for_onnx(dynamic_onnx, tmp_path):
    from deeplab_trt.builder.triton import deploy_triton
    from deeplab_trt.runtime.spec import spec_from_onnx

    written = deploy_triton(dynamic_onnx, output=tmp_path / "repo", instances=2)
    assert [(m.name, m.kind) for m in written] == [("segmenter", "segmenter")]
    model = tmp_path / "repo" / "segmenter"
    assert sorted(p.name for p in (model / "1").iterdir()) == ["model.onnx", "model.py"]
    assert (model / "1" / "model.onnx").read_bytes() == dynamic_onnx.read_bytes()
    config = parse_config(model / "config.pbtxt")
    pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")
    assert config.name == "segmenter" and config.backend == "python" and config.max_batch_size == 8
    assert [(i.name, i.data_type, list(i.dims)) for i in config.input] == [("FRAMES", pb2.TYPE_UINT8, [-1, -1, 3])]
    assert [(o.name, o.data_type, list(o.dims)) for o in config.output] == [
        ("LABELS", pb2.TYPE_UINT8, [-1, -1]),
        ("OVERLAY", pb2.TYPE_UINT8, [-1, -1, 3]),
    ]
    assert [(g.kind, g.count) for g in config.instance_group] == [(pb2.ModelInstanceGroup.KIND_CPU, 2)]
    assert config.HasField("dynamic_batching")
    params = parameters(config)
    spec = spec_from_onnx(dynamic_onnx)
    assert params["model_file"] == "model.onnx" and params["policy"] == "stretch"
    assert json.loads(params["classes"]) == spec.classes
    assert json.loads(params["palette"]) == [list(p) for p in spec.palette[: spec.num_classes]]
    assert json.loads(params["mean"]) == list(spec.mean) and json.loads(params["std"]) == list(spec.std)
    compile((model / "1" / "model.py").read_text(), "model.py", "exec")


def test_fixed_frame_size_and_quoted_class_names(dynamic_onnx, tmp_path):
    """Class names with quotes, backslashes and non-ASCII survive the text format; --frame-size fixes dims."""
    from deeplab_trt.builder.triton import segmenter_config
    from deeplab_trt.runtime.spec import spec_from_onnx

    spec = spec_from_onnx(dynamic_onnx)
    spec.classes = ['say "hi"', "back\\slash", "café", "tab\there", "x"]
    path = tmp_path / "config.pbtxt"
    path.write_text(segmenter_config(spec, name="seg", model_file="model.onnx", kind="gpu", frame_size=(720, 1280)))
    config = parse_config(path)
    assert list(config.input[0].dims) == [720, 1280, 3] and list(config.output[0].dims) == [720, 1280]
    assert json.loads(parameters(config)["classes"]) == spec.classes
    assert config.instance_group[0].kind == config.instance_group[0].KIND_GPU


def test_plan_config_from_a_real_sidecar(sidecar_of):
    from deeplab_trt.builder.triton import plan_config
    from deeplab_trt.runtime.engine_record import EngineRecord

    pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")
    sidecar = EngineRecord.read(sidecar_of)
    path = sidecar_of.with_name("config.pbtxt")
    path.write_text(plan_config(sidecar, name="seg_plan"))
    config = parse_config(path)
    assert config.platform == "tensorrt_plan" and config.max_batch_size == 8
    inputs = [t for t in sidecar.io if t["mode"] == "input"]
    outputs = [t for t in sidecar.io if t["mode"] == "output"]
    assert [(i.name, i.data_type, list(i.dims)) for i in config.input] == [
        (inputs[0]["name"], pb2.TYPE_FP32, [3, 64, 128])
    ]
    assert [(o.name, list(o.dims)) for o in config.output] == [(outputs[0]["name"], outputs[0]["shape"][1:])]
    assert config.instance_group[0].kind == pb2.ModelInstanceGroup.KIND_GPU and config.HasField("dynamic_batching")
    path.write_text(plan_config(sidecar, name="seg_plan", max_batch=2, instances=3))
    config = parse_config(path)
    assert config.max_batch_size == 2 and config.instance_group[0].count == 3
    with pytest.raises(ToolkitError, match="exceeds the engine profile's maximum batch 8"):
        plan_config(sidecar, name="seg_plan", max_batch=9)
    fixed = copy.deepcopy(sidecar)
    for tensor in fixed.io:
        tensor["shape"][0] = 1
    path.write_text(plan_config(fixed, name="seg_plan"))
    config = parse_config(path)
    assert config.max_batch_size == 0 and list(config.input[0].dims) == [1, 3, 64, 128]
    assert not config.HasField("dynamic_batching")


def test_engine_repository(sidecar_of, tmp_path, caplog):
    """An RTX engine: the segmenter (GPU instance, engine + sidecar copied), no plan model (Triton cannot load it)."""
    from deeplab_trt.builder.triton import deploy_triton

    written = deploy_triton(sidecar_of, output=tmp_path / "repo", name="street")
    assert [(m.name, m.kind) for m in written] == [("street", "segmenter")]
    assert "TensorRT-RTX" in caplog.text and not (tmp_path / "repo" / "street_plan").exists()
    version = tmp_path / "repo" / "street" / "1"
    assert sorted(p.name for p in version.iterdir()) == ["model.engine", "model.engine.json", "model.py"]
    config = parse_config(tmp_path / "repo" / "street" / "config.pbtxt")
    assert config.instance_group[0].kind == config.instance_group[0].KIND_GPU and config.max_batch_size == 8
    assert parameters(config)["model_file"] == "model.engine"


def test_engine_repository_with_tensorrt_plan(sidecar_of, tmp_path):
    """A TensorRT (not RTX) engine gets NAME_plan too: config.pbtxt + 1/model.plan (the engine's bytes)."""
    from deeplab_trt.builder.triton import deploy_triton
    from deeplab_trt.runtime.engine_record import EngineRecord

    engine = tmp_path / "trt.engine"
    engine.write_bytes(sidecar_of.read_bytes())
    record = EngineRecord.read(sidecar_of)
    record.tensorrt["flavour"] = "tensorrt"
    record.write(engine)
    written = deploy_triton(engine, output=tmp_path / "repo", max_batch=4)
    assert [(m.name, m.kind) for m in written] == [("segmenter", "segmenter"), ("segmenter_plan", "plan")]
    plan = tmp_path / "repo" / "segmenter_plan"
    assert (plan / "1" / "model.plan").read_bytes() == engine.read_bytes()
    assert parse_config(plan / "config.pbtxt").max_batch_size == 4
    assert parse_config(tmp_path / "repo" / "segmenter" / "config.pbtxt").max_batch_size == 4


@pytest.mark.parametrize(
    "case", ["engine_without_sidecar", "unknown_file", "missing", "name_with_slash", "hidden_name"]
)
def test_bad_input_is_one_line_and_writes_nothing(case, dynamic_onnx, tmp_path):
    model, extra = tmp_path / "model.engine", []
    if case == "engine_without_sidecar":
        model.write_bytes(b"not really an engine")
        expect = "no sidecar"
    elif case == "unknown_file":
        model = tmp_path / "model.pt"
        model.write_bytes(b"weights")
        expect = "unknown model file type '.pt'"
    elif case == "missing":
        expect = "no such file"
    elif case == "name_with_slash":
        model, extra, expect = dynamic_onnx, ["--name", "../x"], "not a usable Triton model"
    else:
        model, extra, expect = dynamic_onnx, ["--name", ".hidden"], "not a usable Triton model"
    repo = tmp_path / "out" / "repo"
    proc = subprocess.run(
        [sys.executable, "-m", "deeplab_trt", "deploy", "triton", str(model), "-o", str(repo), *extra],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=str(ROOT),
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("deeplab-trt deploy: error: ") and expect in lines[0], proc.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_engine_needs_a_gpu_instance(sidecar_of, tmp_path):
    from deeplab_trt.builder.triton import deploy_triton

    with pytest.raises(ToolkitError, match="only on a GPU instance"):
        deploy_triton(sidecar_of, output=tmp_path / "repo", kind="cpu")
    assert not (tmp_path / "repo").exists()


def test_segment_frames_equals_the_one_frame_loop(dynamic_onnx):
    """Batched across requests (chunks of 3, the last one short) = one frame per inference, exactly."""
    from deeplab_trt.benchmarks.scenes import render_video
    from deeplab_trt.runtime.backends import open_backend
    from deeplab_trt.runtime.triton_python import segment_frames

    frames = [f for f, _ in render_video(3, 7, size=FRAME_HW)]
    with open_backend(dynamic_onnx, threads=1) as backend:
        batched = segment_frames(backend, frames, max_batch=3)
        single = [segment_frames(backend, [f])[0] for f in frames]
    assert all(np.array_equal(a, b) for a, b in zip(batched, single))
    assert batched[0].shape == FRAME_HW and batched[0].dtype == np.uint8


# ---------------------------------------------------------------------------------------------
# a real tritonserver
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(dynamic_onnx, demo_onnx, tmp_path_factory):
    from deeplab_trt.benchmarks.tritonserver import TritonServer, find_tritonserver
    from deeplab_trt.builder.triton import deploy_triton

    pytest.importorskip("tritonclient.http")
    pytest.importorskip("tritonclient.grpc")
    found, why = find_tritonserver()
    if found is None:
        pytest.skip(why)
    repo = tmp_path_factory.mktemp("triton") / "repo"
    deploy_triton(dynamic_onnx, output=repo, max_batch=8)
    deploy_triton(demo_onnx, output=repo, name="demo", frame_size=FRAME_HW)  # batch fixed at 1: chunked
    with TritonServer(repo, found=found, ready_timeout=90, log_path=repo.parent / "tritonserver.log") as running:
        print(f"tritonserver ready in {running.startup_s:.2f} s")
        yield running


def _infer(module, client, frames: np.ndarray, outputs=("LABELS",), model="segmenter") -> dict[str, np.ndarray]:
    inp = module.InferInput("FRAMES", list(frames.shape), "UINT8")
    inp.set_data_from_numpy(frames)
    result = client.infer(model, [inp], outputs=[module.InferRequestedOutput(n) for n in outputs])
    return {n: result.as_numpy(n) for n in outputs}


def test_served_labels_equal_in_process_labels(server, dynamic_onnx):
    """HTTP and gRPC, single frames and a 3-frame request, overlay too; then 4 concurrent clients."""
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    from deeplab_trt.benchmarks.scenes import render_video
    from deeplab_trt.runtime.backends import open_backend
    from deeplab_trt.runtime.postprocess import overlay, palette_bgr
    from deeplab_trt.runtime.triton_python import segment_frames

    frames = [f for f, _ in render_video(5, 12, size=FRAME_HW)]
    with open_backend(dynamic_onnx) as backend:
        expected = [segment_frames(backend, [f])[0] for f in frames]  # the one-frame loop of 'deeplab-trt run'
        lut = palette_bgr(backend.spec)
    http = httpclient.InferenceServerClient(server.http_url)
    grpc = grpcclient.InferenceServerClient(server.grpc_url)
    assert http.is_model_ready("segmenter") and grpc.is_model_ready("segmenter")
    for module, client in ((httpclient, http), (grpcclient, grpc)):
        for i in (0, 5):
            got = _infer(module, client, frames[i][None], outputs=("LABELS", "OVERLAY"))
            assert got["LABELS"].shape == (1, *FRAME_HW) and got["LABELS"].dtype == np.uint8
            assert np.array_equal(got["LABELS"][0], expected[i]), f"{module.__name__} frame {i}"
            assert np.array_equal(got["OVERLAY"][0], overlay(frames[i], expected[i], lut, 0.5))
        got = _infer(module, client, np.stack(frames[1:4]))["LABELS"]
        assert all(np.array_equal(got[k], expected[1 + k]) for k in range(3))

    # 4 concurrent clients (2 HTTP, 2 gRPC), one frame per request: the dynamic batcher gathers them.
    def client_run(k: int) -> list[tuple[int, bool]]:
        module, url = (httpclient, server.http_url) if k % 2 == 0 else (grpcclient, server.grpc_url)
        own = module.InferenceServerClient(url)
        return [
            (i, np.array_equal(_infer(module, own, frames[i][None])["LABELS"][0], expected[i])) for i in range(k, 12, 4)
        ]

    before = http.get_inference_statistics("segmenter")["model_stats"][0]
    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = [r for rs in pool.map(client_run, range(4)) for r in rs]
    wall = time.perf_counter() - started
    assert sorted(i for i, _ in results) == list(range(12)) and all(ok for _, ok in results), results
    after = http.get_inference_statistics("segmenter")["model_stats"][0]
    requests = after["inference_count"] - before["inference_count"]
    executions = after["execution_count"] - before["execution_count"]
    print(f"4 clients: 12 frames in {wall:.2f} s, {executions} executions for {requests} frames")
    assert requests == 12 and executions <= requests


def test_demo_model_served(server, demo_onnx):
    """The committed demo model (fixed batch 1, fixed frame size): a 3-frame gRPC request, labels exact."""
    import tritonclient.grpc as grpcclient

    from deeplab_trt.benchmarks.scenes import render_video
    from deeplab_trt.runtime.backends import open_backend
    from deeplab_trt.runtime.triton_python import segment_frames

    frames = [f for f, _ in render_video(9, 3, size=FRAME_HW)]
    with open_backend(demo_onnx) as backend:
        assert backend.fixed_batch == 1
        expected = [segment_frames(backend, [f])[0] for f in frames]
    got = _infer(grpcclient, grpcclient.InferenceServerClient(server.grpc_url), np.stack(frames), model="demo")
    assert all(np.array_equal(got["LABELS"][k], expected[k]) for k in range(3))
    assert len(np.unique(got["LABELS"])) > 1  # a trained model: not one class everywhere


def test_client_mode_run_equals_a_local_run(server, dynamic_onnx, tmp_path):
    """``deeplab-trt run --triton URL`` (gRPC and HTTP): the same lossless label video as a local run, same stats keys."""
    import cv2

    from deeplab_trt.benchmarks.scenes import render_video

    video = tmp_path / "street.mkv"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"FFV1"), 10.0, FRAME_HW[::-1])
    for frame, _ in render_video(11, 10, size=FRAME_HW):
        writer.write(frame)
    writer.release()

    def run(out: Path, *model) -> dict:
        stats = out.with_suffix(".json")
        proc = subprocess.run(
            [sys.executable, "-m", "deeplab_trt", "run", *model, "--source", str(video), "-o", str(out)]
            + ["--mode", "labels", "--no-progress", "--json", str(stats)],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=str(ROOT),
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        return json.loads(stats.read_text())

    local = run(tmp_path / "local.mkv", str(dynamic_onnx))
    for url in (f"grpc://{server.grpc_url}", f"http://{server.http_url}"):
        remote = run(tmp_path / "remote.mkv", "--triton", url)
        assert remote["frames"] == local["frames"] == 10 and set(remote["ms_per_frame"]) >= {"infer", "encode"}
        assert "triton" in remote["backend"]
        got, want = _decoded(tmp_path / "remote.mkv"), _decoded(tmp_path / "local.mkv")
        assert len(got) == len(want) == 10 and all(np.array_equal(a, b) for a, b in zip(got, want)), url


def test_client_mode_several_streams_equal_a_local_batched_run(server, dynamic_onnx, tmp_path):
    """``run --triton URL -s A -s B``: one request per frame (the server batches them); each stream's lossless
    label video equals the local batched run's."""
    import cv2

    from deeplab_trt.benchmarks.scenes import render_video

    videos = []
    for i, (frames, seed) in enumerate(((8, 3), (5, 4))):
        videos.append(tmp_path / f"cam{i}.mkv")
        writer = cv2.VideoWriter(str(videos[-1]), cv2.VideoWriter_fourcc(*"FFV1"), 10.0, FRAME_HW[::-1])
        for frame, _ in render_video(seed, frames, size=FRAME_HW):
            writer.write(frame)
        writer.release()

    def run(out: str, *model) -> dict:
        stats = tmp_path / "stats.json"
        sources = [arg for video in videos for arg in ("-s", str(video))]
        proc = subprocess.run(
            [sys.executable, "-m", "deeplab_trt", "run", *model, *sources, "-o", out, "--mode", "labels"]
            + ["--no-progress", "--json", str(stats)],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=str(ROOT),
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        return json.loads(stats.read_text())

    local = run(str(tmp_path / "local_{index}.mkv"), str(dynamic_onnx))
    remote = run(str(tmp_path / "remote_{index}.mkv"), "--triton", f"grpc://{server.grpc_url}")
    assert [s["frames"] for s in remote["streams"]] == [s["frames"] for s in local["streams"]] == [8, 5]
    for i in range(2):
        got, want = (_decoded(tmp_path / f"{kind}_{i}.mkv") for kind in ("remote", "local"))
        assert len(got) == len(want) and all(np.array_equal(a, b) for a, b in zip(got, want)), i


def _decoded(path: Path) -> list[np.ndarray]:
    import cv2

    cap, out = cv2.VideoCapture(str(path)), []
    while (got := cap.read())[0]:
        out.append(got[1])
    cap.release()
    return out


def test_client_mode_errors_are_one_line(server, tmp_path):
    from deeplab_trt.runtime.triton_client import TritonSegmenter, parse_url

    with pytest.raises(ToolkitError, match="expected grpc://HOST:PORT or http://HOST:PORT"):
        parse_url("ftp://x")
    with pytest.raises(ToolkitError, match="model 'nope' is not available"):
        TritonSegmenter(f"grpc://{server.grpc_url}", model_name="nope", timeout=0.5)
    seg = TritonSegmenter(f"http://{server.http_url}")
    with pytest.raises(ToolkitError, match="inference failed"):
        seg.segment(np.zeros((1, 8, 8, 4), np.uint8))  # 4 channels: the config says 3


def test_served_benchmark_one_run(dynamic_onnx, tmp_path):
    """benchmarks/served.py end to end on a tiny model: both throughputs, their ratio, labels equal (no speed bar: 2 shared cores)."""
    from deeplab_trt.benchmarks.served import main
    from deeplab_trt.benchmarks.tritonserver import find_tritonserver

    pytest.importorskip("tritonclient.grpc")
    if find_tritonserver()[0] is None:
        pytest.skip(find_tritonserver()[1])
    out = tmp_path / "served.json"
    assert main([str(dynamic_onnx), "--frames", "8", "--size", "72x136", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["labels_equal"] and report["clients"] == 4 and report["in_process_fps"] > 0
    assert report["ratio"] == pytest.approx(report["served_fps"] / report["in_process_fps"], rel=0.01)


def test_server_startup_failure_is_one_line(tmp_path):
    """A repository whose model cannot load: start() says so (with the log's error line) and leaves no process."""
    from deeplab_trt.benchmarks.tritonserver import TritonServer, find_tritonserver

    found, why = find_tritonserver()
    if found is None:
        pytest.skip(why)
    (tmp_path / "repo" / "broken" / "1").mkdir(parents=True)
    (tmp_path / "repo" / "broken" / "config.pbtxt").write_text('backend: "no_such_backend"\n')
    server = TritonServer(tmp_path / "repo", found=found, ready_timeout=60, log_path=tmp_path / "server.log")
    with pytest.raises(ToolkitError, match="tritonserver exited while starting"):
        server.start()
    assert server.process is None
