"""The TensorRT target: deferred bundles through the real CLI here; engine builds against a strict fake of
TensorRT 10 and 11 (tests/fake_tensorrt); and real engines where TensorRT and a GPU import."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.conftest import NARROW, one_line_error
from tests.fake_tensorrt import A100, FAKE_COMPUTE_MS, H100, TRT10, TRT11, FakeCudaCrash, FakeGpu, install
from tests.fake_tensorrt.tensorrt_api import CACHE_MAGIC, PLAN_MAGIC
from vncompile.api.options import TargetOptions
from vncompile.api.request import BuildRequest, InputShape, ModelSource
from vncompile.api.target import Availability
from vncompile.cli import main
from vncompile.core import host
from vncompile.core.errors import TargetUnavailable, VncompileError
from vncompile.pipeline.cache import BuildCache
from vncompile.targets import get_target
from vncompile.targets import tensorrt as trt_target
from vncompile.targets.tensorrt import builder as builder_module
from vncompile.targets.tensorrt import toolchain as trt_toolchain
from vncompile.targets.tensorrt.builder import build_engine, network_flags
from vncompile.targets.tensorrt.cuda import CudaRuntime, GpuFacts
from vncompile.targets.tensorrt.profile import TensorRTOptions, shape_profile
from vncompile.targets.tensorrt.runner import TensorRTSession
from vncompile.targets.tensorrt.toolchain import probe_toolchain

W = str(NARROW)
NARROW_SOURCE = ModelSource(model_name="vanillanet_5", width=NARROW)
PROFILE_SIZES = (160, 224, 320)
ORIN = FakeGpu("Orin", (8, 7))  # what CUDA names a Jetson AGX Orin's GPU
DEFERRED_BUILDS = {  # name -> extra CLI arguments; the fake tests reuse these builds' prepared ONNX
    "fp16": ["--precision", "fp16"],
    "int8": ["--precision", "int8"],
    "dynamic": ["--dynamic", "--profile-sizes", ",".join(map(str, PROFILE_SIZES)), "--workspace", "256"],
}


# ---------------------------------------------------------------------------- helpers


@dataclass
class CliRun:
    code: int
    err: str
    out_dir: Path

    @property
    def manifest(self) -> dict:
        return json.loads((self.out_dir / "manifest.json").read_text())


def cli(*args: object) -> tuple[int, str]:
    """The real CLI in-process, stderr captured (Rich writes to the current sys.stderr)."""
    stream = io.StringIO()
    with contextlib.redirect_stderr(stream), pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in args])
    return exit_info.value.code or 0, stream.getvalue()


def narrow_build(out: Path, *extra: object) -> CliRun:
    code, err = cli("build", "--model", "vanillanet_5", "--width", W, "--target", "tensorrt", "-o", out, *extra)
    return CliRun(code, err, out)


def trtexec_arguments(script: str) -> list[str]:
    """The arguments build_engine.sh passes to trtexec, as the shell would split them."""
    line = next(line for line in script.splitlines() if line.startswith("exec "))
    words = shlex.split(line)
    assert words[:2] == ["exec", "$TRTEXEC"], line
    return words[2:]


def seed_prepared_onnx(deferred_root: Path, cache_root: Path) -> None:
    """Give a test's cache the deferred builds' prepared ONNX stages, so its builds skip the export."""
    shared, mine = (BuildCache(root).entry("any", "onnx").parent for root in (deferred_root / "cache", cache_root))
    if shared.is_dir():
        shutil.copytree(shared, mine, dirs_exist_ok=True)


def request_for(precision: str = "fp16", **options) -> BuildRequest:
    return BuildRequest(NARROW_SOURCE, "tensorrt", precision=precision, options=TargetOptions().with_own(options))


def own(request: BuildRequest) -> TensorRTOptions:
    """The request's tensorrt options, as the build plan hands them to the target."""
    return TensorRTOptions(**request.options.own_values())


def qdq_conv_model(path: Path, float_bias: bool = False) -> Path:
    """A Conv in ONNX Runtime's Q/DQ layout: int8 input and weights, and its bias as float (what the pipeline
    writes) or as int32 behind a DequantizeLinear (the quantizer's default, which TensorRT's parser refuses)."""
    rng = np.random.default_rng(0)
    constants = [
        numpy_helper.from_array(np.float32(0.05), "x_scale"), numpy_helper.from_array(np.int8(0), "x_zero"),
        numpy_helper.from_array(rng.integers(-127, 128, (4, 3, 3, 3)).astype(np.int8), "w_q"),
        numpy_helper.from_array(rng.uniform(0.01, 0.02, 4).astype(np.float32), "w_scale"),
        numpy_helper.from_array(np.zeros(4, np.int8), "w_zero"),
        numpy_helper.from_array(rng.integers(-5000, 5000, 4).astype(np.int32), "b_q"),
        numpy_helper.from_array(rng.uniform(1e-4, 1e-3, 4).astype(np.float32), "b_scale"),
        numpy_helper.from_array(np.zeros(4, np.int32), "b_zero"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["input", "x_scale", "x_zero"], ["x_q"]),
        helper.make_node("DequantizeLinear", ["x_q", "x_scale", "x_zero"], ["x_dq"]),
        helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zero"], ["w"], name="weight_dq", axis=0),
        helper.make_node("DequantizeLinear", ["b_q", "b_scale", "b_zero"], ["b"], name="bias_dq", axis=0),
        helper.make_node("Conv", ["x_dq", "w", "b"], ["logits"], pads=[1, 1, 1, 1]),
    ]
    if float_bias:
        constants = [c for c in constants if c.name not in ("b_q", "b_scale", "b_zero")]
        constants.append(numpy_helper.from_array(rng.uniform(-1, 1, 4).astype(np.float32), "b"))
        nodes = [n for n in nodes if n.name != "bias_dq"]
    graph = helper.make_graph(nodes, "qdq", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 4, 8, 8])], constants)
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)]), str(path))
    return path


# ---------------------------------------------------------------------------- (c) deferred bundles, real CLI


@pytest.fixture(scope="module")
def deferred(tmp_path_factory) -> tuple[Path, dict[str, CliRun]]:
    """The deferred bundles, built once through the CLI where CUDA finds no GPU (deferred on any machine)."""
    root = tmp_path_factory.mktemp("deferred")
    runs = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("VNCOMPILE_CACHE_DIR", str(root / "cache"))
        install(patch, TRT10, gpus=())
        for name, extra in DEFERRED_BUILDS.items():
            runs[name] = narrow_build(root / name, *extra)
    return root, runs


def test_fp16_bundle_is_deferred_with_a_notice_and_fp16_weights(deferred):
    run = deferred[1]["fp16"]
    assert run.code == 0, run.err
    assert "notice:" in run.err and "no NVIDIA GPU here" in run.err and "build_engine.sh" in run.err
    manifest = run.manifest
    assert manifest["status"] == "deferred" and "deferred" in run.err.splitlines()[-1]
    assert manifest["notice"].startswith("no NVIDIA GPU here (CUDA finds none: cudaErrorNoDevice): deferred the engine")
    assert "no NVIDIA GPU here" in manifest["target"]["facts"]["deferred_because"]
    assert {a["role"] for a in manifest["artifacts"]} == {"onnx", "trtexec-script"}
    assert not (run.out_dir / "model.engine").exists()
    model = onnx.load(str(run.out_dir / "model.onnx"))
    float_types = {TensorProto.DataType.Name(i.data_type) for i in model.graph.initializer
                   if i.data_type in (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE)}
    assert float_types == {"FLOAT16"}
    assert model.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT  # fp32 I/O, Cast inside
    assert [n.op_type for n in model.graph.node].count("Cast") == 2
    verification = manifest["verification"]
    assert verification["passed"] and verification["tolerance"]["fp16"] == {"rel": 2e-2}
    assert [s["stage"] for s in verification["stages"]] == ["torch fused", "onnx exported", "onnx simplified"]


def test_build_script_holds_the_trtexec_command(deferred):
    static, dynamic = deferred[1]["fp16"].out_dir, deferred[1]["dynamic"].out_dir
    script = (static / "build_engine.sh").read_text()
    assert os.access(static / "build_engine.sh", os.X_OK) and script.startswith("#!/bin/sh\n")
    arguments = trtexec_arguments(script)
    assert arguments == ["--onnx=model.onnx", "--saveEngine=model.engine", "--stronglyTyped", "--skipInference",
                         "--timingCacheFile=$TIMING_CACHE"]
    assert not {"--fp16", "--int8", "--best", "--bf16"} & set(arguments)  # TensorRT 11 has none of them
    assert "# A timing cache holds one GPU model's timings for one TensorRT version" in script
    dynamic_arguments = trtexec_arguments((dynamic / "build_engine.sh").read_text())
    assert dynamic_arguments == ["--onnx=model.onnx", "--saveEngine=model.engine", "--stronglyTyped", "--noTF32",
                                 "--memPoolSize=workspace:256", "--minShapes=input:1x3x160x160",
                                 "--optShapes=input:1x3x224x224", "--maxShapes=input:1x3x320x320", "--skipInference",
                                 "--timingCacheFile=$TIMING_CACHE"]
    target = deferred[1]["dynamic"].manifest["target"]["facts"]
    assert target["profile"] == {"min": [1, 3, 160, 160], "opt": [1, 3, 224, 224], "max": [1, 3, 320, 320]}
    assert target["workspace_mb"] == 256 and target["trtexec"].startswith("trtexec --onnx=model.onnx")


def verified_at(profile_sizes: tuple[int, ...] = PROFILE_SIZES) -> set[str]:
    """The ' @size' suffixes of a --dynamic build's verification stages (the pipeline picks two sizes)."""
    request = BuildRequest(NARROW_SOURCE, "tensorrt", dynamic=True,
                           options=TargetOptions().with_own({"profile_sizes": profile_sizes}))
    labels = {f" @{s.size_label}" for s in request.verify_shapes(profile_sizes)}
    assert len(labels) == 2
    return labels


def test_dynamic_bundle_verifies_two_sizes_and_default_profile_spans_half_to_double(deferred):
    manifest = deferred[1]["dynamic"].manifest
    assert manifest["status"] == "deferred" and manifest["dynamic"] and manifest["verification"]["passed"]
    stages = {s["stage"] for s in manifest["verification"]["stages"]}
    assert {f"onnx simplified{at}" for at in verified_at()} <= stages
    request = BuildRequest(NARROW_SOURCE, "tensorrt", shape=InputShape(2, 3, 224, 192), dynamic=True)
    profile = shape_profile(request, own(request))
    assert profile.as_dict() == {"min": [1, 3, 112, 96], "opt": [2, 3, 224, 192], "max": [2, 3, 448, 384]}


def test_int8_bundle_has_qdq_nodes_tensorrt_can_parse_and_passes_onnx_verification(deferred):
    run = deferred[1]["int8"]
    assert run.code == 0, run.err
    model = onnx.load(str(run.out_dir / "model.onnx"))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuantizeLinear") > 5 and ops.count("DequantizeLinear") > 10
    int32 = {i.name for i in model.graph.initializer if i.data_type == TensorProto.INT32}
    assert not [n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in int32]
    verification = run.manifest["verification"]
    assert verification["passed"] and run.manifest["status"] == "deferred"
    assert any(s["stage"] == "onnx int8 qdq" and s["passed"] for s in verification["stages"])


def test_build_script_runs_the_devices_trtexec(deferred, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(deferred[1]["dynamic"].out_dir, bundle)
    trtexec = tmp_path / "trtexec"
    trtexec.write_text('#!/bin/sh\nprintf "%s\\n" "$@" > "$ARGS_FILE"\nfor a in "$@"; do case "$a" in\n'
                       '  --saveEngine=*) echo plan > "${a#--saveEngine=}";;\n'
                       '  --timingCacheFile=*) echo cache > "${a#--timingCacheFile=}";;\nesac; done\n')
    trtexec.chmod(0o755)
    env = {**os.environ, "TRTEXEC": str(trtexec), "TIMING_CACHE": str(tmp_path / "shared.cache"),
           "ARGS_FILE": str(tmp_path / "args")}
    subprocess.run(["sh", str(bundle / "build_engine.sh")], env=env, check=True, cwd=tmp_path)
    expected = trtexec_arguments((bundle / "build_engine.sh").read_text())
    expected[-1] = f"--timingCacheFile={tmp_path / 'shared.cache'}"
    assert (tmp_path / "args").read_text().splitlines() == expected
    assert (bundle / "model.engine").read_text() == "plan\n" and (tmp_path / "shared.cache").exists()
    missing = subprocess.run(["sh", str(bundle / "build_engine.sh")], env={**env, "TRTEXEC": "no-such-trtexec"},
                             capture_output=True, text=True)
    assert missing.returncode == 127 and "no-such-trtexec not found" in missing.stderr


@pytest.mark.parametrize("args,message", [
    (["--precision", "bf16"], "tensorrt builds fp32, fp16, int8, not bf16"),
    (["--precision", "int16"], "tensorrt builds fp32, fp16, int8, not int16"),
    (["--device", "CPU"], "tensorrt runs on the GPU (--device GPU), not CPU"),
    (["--workspace", "0"], "'--workspace': must be a positive integer (MiB), got '0'"),
    (["--profile-sizes", "160,224,320"], "--profile-sizes shapes a --dynamic build's optimization profile"),
    (["--dynamic", "--profile-sizes", "320,224,160"], "--profile-sizes takes min,opt,max in increasing order"),
    (["--dynamic", "--profile-sizes", "224,320"], "--profile-sizes takes min,opt,max in increasing order"),
    (["--dynamic", "--profile-sizes", "256,320,384"], "--profile-sizes 256,320,384 must cover 224x224"),
])
def test_bad_tensorrt_options_are_one_line_errors(tmp_path, run_cli, args, message):
    out = tmp_path / "b"
    result = run_cli("build", "--model", "vanillanet_5", "--width", W, "--target", "tensorrt", "-o", out, *args)
    assert result.code == 2 and message in one_line_error(result)
    assert not out.exists()


def test_availability_reports_deferred_mode_and_the_version(monkeypatch):
    with monkeypatch.context() as patch:
        patch.setattr(trt_toolchain, "import_cudart", lambda: None)
        patch.setattr(trt_target, "import_tensorrt", lambda: "TensorRT is not installed (pip install tensorrt)")
        here = get_target("tensorrt").availability()
    assert here.available and here.version is None and here.devices == ()
    assert here.reason.startswith("deferred: cuda-python is not installed (pip install 'vncompile[tensorrt-cu12]'")
    assert "TensorRT is not installed" in here.reason and "build_engine.sh" in here.reason
    fake = install(monkeypatch, TRT11, gpus=())
    no_gpu = get_target("tensorrt").availability()
    assert no_gpu.available and no_gpu.version == TRT11 and "no NVIDIA GPU here" in no_gpu.reason
    fake = install(monkeypatch, TRT10)
    assert get_target("tensorrt").availability() == Availability(True, TRT10, "", ("GPU",))
    assert fake.machine.trt_objects_created == 0


def test_loading_a_deferred_bundle_is_a_one_line_error(deferred):
    run = deferred[1]["fp16"]
    with pytest.raises(TargetUnavailable, match="deferred TensorRT bundle without an engine: run its build_engine"):
        get_target("tensorrt").load(run.out_dir, run.manifest)


# ---------------------------------------------------------------------------- (a) the strict fake, TensorRT 10 and 11


@pytest.fixture
def seeded(deferred, isolated_cache) -> None:
    seed_prepared_onnx(deferred[0], isolated_cache)


@pytest.mark.parametrize("version,build", [(TRT10, "fp16"), (TRT11, "int8"), (TRT10, "dynamic"), (TRT11, "dynamic")])
def test_engine_build_through_the_cli(seeded, tmp_path, monkeypatch, version, build):
    fake = install(monkeypatch, version)
    run = narrow_build(tmp_path / "b", *DEFERRED_BUILDS[build])
    assert run.code == 0, run.err
    manifest = run.manifest
    assert manifest["status"] == "ok" and manifest["notice"] is None
    target = manifest["target"]["facts"]
    assert (target["gpu"], target["compute_capability"], target["tensorrt_version"]) == (A100.name, "8.0", version)
    assert manifest["target"]["version"] == version and target["hardware_compatibility_level"] == "NONE"
    int8_report = {"int8-layers"} if build == "int8" else set()  # the Q/DQ graph's per-layer report
    assert {a["role"] for a in manifest["artifacts"]} == {"onnx", "engine", "trtexec-script"} | int8_report
    verification = manifest["verification"]
    final = [s for s in verification["stages"] if s["stage"].startswith("tensorrt GPU")]
    assert verification["passed"] and final and all(s["passed"] for s in final)
    # the calls, per version: strongly typed on 10 by its flag, on 11 by default; precision only in the ONNX
    strongly_typed = 1 << int(fake.trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    assert fake.records.networks == [strongly_typed if version == TRT10 else 0]
    assert fake.records.deprecated == []
    built = fake.records.builds[-1]
    assert built["strongly_typed"] and built["timing_cache"] is False
    assert built["flags"] == ([] if build == "dynamic" else ["TF32"])  # fp32 clears TF32
    engine = (run.out_dir / "model.engine").read_bytes()
    assert engine.startswith(PLAN_MAGIC) and json.loads(engine.split(b"\n")[1])["version"] == version
    if build == "dynamic":
        assert built["pools"] == {"WORKSPACE": 256 << 20}
        assert built["profiles"] == [{"input": [[1, 3, 160, 160], [1, 3, 224, 224], [1, 3, 320, 320]]}]
        assert {f"tensorrt GPU{at}" for at in verified_at()} <= {s["stage"] for s in final}
    else:
        assert built["pools"] == {} and built["profiles"] == []


@pytest.mark.parametrize("version", [TRT10, TRT11])
def test_timing_cache_is_reused_and_a_bad_one_rebuilt(deferred, tmp_path, monkeypatch, version):
    onnx_path = deferred[1]["fp16"].out_dir / "model.onnx"
    cache = tmp_path / "caches" / "timing.cache"
    request = request_for(timing_cache=cache)
    fake = install(monkeypatch, version)
    toolchain = probe_toolchain()
    assert build_engine(toolchain, onnx_path, request, own(request), None).warning == ""
    first_misses = fake.records.timing_misses
    assert cache.read_bytes().startswith(CACHE_MAGIC) and first_misses > 0 and fake.records.timing_hits == 0
    assert build_engine(toolchain, onnx_path, request, own(request), None).warning == ""
    assert fake.records.timing_hits == first_misses and fake.records.timing_misses == first_misses
    cache.write_bytes(b"not a timing cache")
    assert "was corrupt or from another GPU or TensorRT version; rebuilt it" in build_engine(
        toolchain, onnx_path, request, own(request), None).warning
    assert cache.read_bytes().startswith(CACHE_MAGIC)
    install(monkeypatch, version, gpus=(H100,))  # the cache is another GPU's
    assert "rebuilt it" in build_engine(probe_toolchain(), onnx_path, request, own(request), None).warning
    assert json.loads(cache.read_bytes()[len(CACHE_MAGIC):])["gpu"][0] == H100.name
    other = TRT11 if version == TRT10 else TRT10
    install(monkeypatch, other, gpus=(H100,))  # the cache is another TensorRT version's
    assert "rebuilt it" in build_engine(probe_toolchain(), onnx_path, request, own(request), None).warning
    assert json.loads(cache.read_bytes()[len(CACHE_MAGIC):])["version"] == other
    assert sorted(p.name for p in cache.parent.iterdir()) == ["timing.cache", "timing.cache.lock"]  # atomic writes


def test_concurrent_builds_merge_their_timing_caches(deferred, tmp_path, monkeypatch):
    """Two builds share one --timing-cache (ci --jobs 2): the second saves while the first builds, and the
    first's save keeps the second's timings instead of overwriting them."""
    cache = tmp_path / "timing.cache"
    request = request_for(timing_cache=cache)
    fake = install(monkeypatch, TRT10)
    toolchain = probe_toolchain()
    fp16, int8 = (deferred[1][name].out_dir / "model.onnx" for name in ("fp16", "int8"))
    save = builder_module.save_timing_cache

    def save_after_another_build(config, path):
        monkeypatch.setattr(builder_module, "save_timing_cache", save)
        build_engine(toolchain, int8, request, own(request), None)  # attached the cache as it was: empty
        save(config, path)

    monkeypatch.setattr(builder_module, "save_timing_cache", save_after_another_build)
    build_engine(toolchain, fp16, request, own(request), None)
    both = fake.records.timing_misses
    assert fake.records.timing_hits == 0  # each began with the empty file
    for onnx_path in (fp16, int8):
        build_engine(toolchain, onnx_path, request, own(request), None)
    assert fake.records.timing_misses == both  # every timing of both builds came from the file: none was lost


def test_a_timing_cache_notice_reaches_the_user(seeded, tmp_path, monkeypatch):
    install(monkeypatch, TRT11)
    cache = tmp_path / "timing.cache"
    cache.write_bytes(b"\x00corrupt")
    run = narrow_build(tmp_path / "b", "--precision", "fp16", "--timing-cache", cache)
    assert run.code == 0 and run.manifest["status"] == "ok"
    assert "rebuilt it" in run.manifest["notice"] and "notice:" in run.err
    assert cache.read_bytes().startswith(CACHE_MAGIC)


@pytest.mark.parametrize("version", [TRT10, TRT11])
def test_load_refuses_another_gpu_or_version_before_deserializing(seeded, tmp_path, monkeypatch, version):
    install(monkeypatch, version)
    run = narrow_build(tmp_path / "b", "--precision", "fp16")
    assert run.code == 0, run.err
    manifest = run.manifest
    for other_version, gpu, message in [(version, H100, f"was built on {A100.name} (compute capability 8.0) and "
                                                        f"this GPU is {H100.name} (9.0)"),
                                        (TRT11 if version == TRT10 else TRT10, A100, f"built with TensorRT {version}")]:
        fake = install(monkeypatch, other_version, gpus=(gpu,))
        with pytest.raises(TargetUnavailable) as error:
            get_target("tensorrt").load(run.out_dir, manifest)
        assert message in str(error.value) and "rebuild it here" in str(error.value)
        assert "\n" not in str(error.value) and fake.records.runtimes == 0  # no Runtime, nothing deserialized
    fake = install(monkeypatch, version)
    session = get_target("tensorrt").load(run.out_dir, manifest)
    assert fake.records.deserialized == 1 and session.run(np.zeros((1, 3, 224, 224), np.float32))[0].shape == (1, 1000)


TRT10_0, TRT10_8, TRT10_14 = "10.0.1.6", "10.8.0.43", "10.14.1.48"
WEIGHTS_STATISTIC = {TRT10: "ICudaEngine.get_engine_stat(TOTAL_WEIGHTS_SIZE)", TRT11: "ICudaEngine.get_engine_stat(",
                     TRT10_0: "model.engine size (an upper bound: no weights statistic before TensorRT 10.14)",
                     TRT10_8: "model.engine size (an upper bound: no weights statistic before TensorRT 10.14)",
                     TRT10_14: "model.engine size (an upper bound: get_engine_stat(TOTAL_WEIGHTS_SIZE) failed in these "
                               "bindings: TypeError: cannot create weak reference to 'int' object)"}


@pytest.mark.parametrize("version", [TRT10, TRT10_0, TRT10_8, TRT10_14, TRT11])
def test_latency_and_memory_hooks(deferred, monkeypatch, version):
    onnx_path = deferred[1]["fp16"].out_dir / "model.onnx"
    fake = install(monkeypatch, version)
    toolchain = probe_toolchain()
    plan = build_engine(toolchain, onnx_path, request_for(), own(request_for()), None).plan
    session = TensorRTSession(toolchain, plan)
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224), dtype=np.float32)
    latency = session.time_runs(x, warmup=3, runs=7)
    assert latency.source == "measured" and latency.samples_ms == pytest.approx([FAKE_COMPUTE_MS] * 7)
    for part in ("after 3 warm-up runs", "GPU compute (the samples) median 0.750", "host-to-device copy",
                 "device-to-host copies", "end to end"):
        assert part in latency.detail
    header = json.loads(plan.split(b"\n")[1])
    memory = session.device_memory()
    io_bytes = x.nbytes + 1000 * 4
    assert memory.source == "measured" and memory.activations_kb == header["activations"] / 1024
    statistic = version in (TRT10, TRT11)  # none before 10.14; 10.14's raises
    weights = header["weights"] if statistic else len(plan)
    assert memory.weights_kb == weights / 1024
    delta = header["weights"] + header["activations"] + io_bytes  # what the fake device lost
    assert memory.max_kb == max(delta, header["activations"] + weights + io_bytes) / 1024
    activations = "(ICudaEngine.device_memory_size)" if version == TRT10_0 else "(ICudaEngine.device_memory_size_v2)"
    for label in ("cudaMemGetInfo", activations, "cudaMalloc", WEIGHTS_STATISTIC[version]):
        assert label in memory.detail
    assert fake.records.deprecated == []  # 10.0's device_memory_size is deprecated only from 10.1
    session.close()
    assert fake.machine.allocations == {} and fake.machine.streams == {} and fake.machine.reserved == {}
    with pytest.raises(VncompileError, match="session is closed"):
        session.run(x)


def test_dynamic_session_takes_any_size_in_its_profile(deferred, monkeypatch):
    onnx_path = deferred[1]["dynamic"].out_dir / "model.onnx"
    install(monkeypatch, TRT11)
    request = BuildRequest(NARROW_SOURCE, "tensorrt", dynamic=True,
                           options=TargetOptions().with_own({"profile_sizes": (160, 224, 320)}))
    toolchain = probe_toolchain()
    session = TensorRTSession(toolchain, build_engine(toolchain, onnx_path, request, own(request),
                                                      shape_profile(request, own(request))).plan)
    for size in (160, 320, 224):  # buffers grow, then are reused
        assert session.run(np.ones((1, 3, size, size), np.float32))[0].shape == (1, 1000)
    with pytest.raises(VncompileError, match="does not take an input of 1x3x352x352"):
        session.run(np.ones((1, 3, 352, 352), np.float32))


def test_parser_errors_are_one_line(tmp_path, monkeypatch):
    install(monkeypatch, TRT10)
    unfolded = qdq_conv_model(tmp_path / "model.onnx")
    with pytest.raises(VncompileError) as error:
        build_engine(probe_toolchain(), unfolded, request_for("int8"), own(request_for("int8")), None)
    assert str(error.value) == ("TensorRT could not parse model.onnx at node 'bias_dq' (DequantizeLinear): bias_dq: "
                                "only activation types allowed as input to this layer.")


def test_no_tensorrt_object_without_a_usable_gpu(seeded, tmp_path, monkeypatch):
    fake = install(monkeypatch, TRT10, gpus=())
    run = narrow_build(tmp_path / "b", "--precision", "fp16")
    assert run.code == 0 and run.manifest["status"] == "deferred"
    assert run.manifest["target"]["version"] == TRT10 and "no NVIDIA GPU here" in run.manifest["notice"]
    assert fake.cudart.cudaGetDeviceCount() == (fake.cudart.cudaError_t.cudaErrorNoDevice, None)  # cuda-python's
    assert fake.machine.trt_objects_created == 0


def test_a_driver_older_than_cuda_pythons_runtime_names_the_fix(seeded, tmp_path, monkeypatch):
    """cuda-python 13 (a CUDA 13 runtime) on a CUDA 12 driver: the notice says which cuda-python to install."""
    fake = install(monkeypatch, TRT10, runtime=13000, driver=12040)
    run = narrow_build(tmp_path / "b", "--precision", "fp16")
    assert run.code == 0 and run.manifest["status"] == "deferred"
    assert run.manifest["notice"].startswith(
        "CUDA runtime 13.0 needs a newer driver than 12.4: cudaErrorInsufficientDriver; install cuda-python<13 "
        "(pip install 'vncompile[tensorrt-cu12]'): deferred the engine")
    with pytest.raises(VncompileError, match="^CUDA cudaMalloc failed: cudaErrorInsufficientDriver$"):
        CudaRuntime(fake.cudart)("cudaMalloc", 16)  # a failed call's (error, None), as one line
    install(monkeypatch, TRT10, runtime=12090, driver=11080)  # no extra for CUDA 11
    assert probe_toolchain() == ("CUDA runtime 12.9 needs a newer driver than 11.8: cudaErrorInsufficientDriver; "
                                 "update the NVIDIA driver")
    install(monkeypatch, TRT10, driver=0)  # CUDA's answer on a machine without a driver
    assert probe_toolchain() == "no NVIDIA GPU here (no NVIDIA driver: cudaErrorInsufficientDriver)"
    assert fake.machine.trt_objects_created == 0


def test_the_gpu_probe_needs_no_nvidia_smi(monkeypatch):
    """JetPack 5 has no nvidia-smi: CUDA alone confirms the GPU."""
    monkeypatch.setattr(host, "nvidia_gpus", lambda: ())
    monkeypatch.setattr(host.shutil, "which", lambda name: None)
    install(monkeypatch, TRT10, gpus=(ORIN,))
    toolchain = probe_toolchain()
    assert not isinstance(toolchain, str) and toolchain.gpu == GpuFacts(ORIN.name, "8.7")
    assert get_target("tensorrt").availability().devices == ("GPU",)


@pytest.mark.parametrize("version,flags", [
    (TRT10_8, {"EXPLICIT_BATCH": 0, "STRONGLY_TYPED": 1}),
    (TRT10, {"EXPLICIT_BATCH": 0, "STRONGLY_TYPED": 1, "PREFER_JIT_PYTHON_PLUGINS": 2, "PREFER_AOT_PYTHON_PLUGINS": 3}),
    (TRT11, {"STRONGLY_TYPED": 0, "PREFER_JIT_PYTHON_PLUGINS": 1, "PREFER_AOT_PYTHON_PLUGINS": 2}),
])
def test_network_flags_follow_nvinfer(monkeypatch, version, flags):
    """include/NvInfer.h's NetworkDefinitionCreationFlag: 10.9 added the plugin flags, 11 renumbered."""
    trt = install(monkeypatch, version).trt
    assert {flag.name: int(flag) for flag in trt.NetworkDefinitionCreationFlag} == flags
    assert network_flags(trt) == (0 if version == TRT11 else 1 << 1)  # 11: always typed, the flag deprecated


@pytest.mark.parametrize("version", [TRT10, TRT11])
def test_the_fake_refuses_what_tensorrt_refuses(tmp_path, monkeypatch, version):
    fake = install(monkeypatch, version)
    trt, cudart = fake.trt, fake.cudart
    logger = trt.Logger()
    builder = trt.Builder(logger)
    config = builder.create_builder_config()
    if version == TRT11:  # removed in 11: precision flags, EXPLICIT_BATCH, the calibrator
        for missing in (lambda: trt.BuilderFlag.FP16, lambda: trt.BuilderFlag.INT8,
                        lambda: trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH):
            with pytest.raises(AttributeError):
                missing()
        with pytest.raises(AttributeError):
            config.int8_calibrator = object()
    else:  # 10: a precision flag on a strongly typed network fails the build
        model = qdq_conv_model(tmp_path / "m.onnx", float_bias=True)
        network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
        assert trt.OnnxParser(network, logger).parse_from_file(str(model))
        config.set_flag(trt.BuilderFlag.FP16)
        assert builder.build_serialized_network(network, config) is None
    parser = trt.OnnxParser(builder.create_network(0), logger)
    with pytest.raises(TypeError):
        parser.parse_from_file(tmp_path / "m.onnx")  # a Path is not a std::string
    with pytest.raises(TypeError):
        config.set_timing_cache(config.create_timing_cache(b""), 0)  # ignore_mismatch is a bool
    with pytest.raises(TypeError):
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, -1)
    with pytest.raises(RuntimeError, match="Shape provided for min is inconsistent"):
        builder.create_optimization_profile().set_shape("input", (1, 3, 64, 64), (1, 3, 32, 32), (1, 3, 99, 99))
    with pytest.raises(AttributeError):
        builder.unknown_attribute = 1

    class Unfinished(trt.ILogger):
        def __init__(self) -> None:  # forgets trt.ILogger.__init__(self)
            pass

    with pytest.raises(TypeError, match="must be called"):
        trt.Runtime(Unfinished())
    _, start = cudart.cudaEventCreate()
    _, end = cudart.cudaEventCreate()
    _, stream = cudart.cudaStreamCreate()
    cudart.cudaEventRecord(start, stream)
    cudart.cudaEventRecord(end, stream)
    assert cudart.cudaEventElapsedTime(start, end)[0] == cudart.cudaError_t.cudaErrorNotReady  # not synchronized
    with pytest.raises(FakeCudaCrash):
        install(monkeypatch, version, gpus=()).trt.Builder(logger)


# ---------------------------------------------------------------------------- (b) real TensorRT on a GPU


@pytest.fixture(scope="module")
def real_toolchain():
    toolchain = probe_toolchain()
    if isinstance(toolchain, str):
        pytest.skip(f"needs TensorRT, cuda-python and an NVIDIA GPU: {toolchain}")
    return toolchain


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_real_engine_builds_runs_and_verifies(real_toolchain, tmp_path, precision):
    run = narrow_build(tmp_path / "b", "--precision", precision)
    assert run.code == 0, run.err
    manifest = run.manifest
    assert manifest["status"] == "ok" and manifest["verification"]["passed"]
    assert manifest["verification"]["stages"][-1]["stage"] == "tensorrt GPU"
    target = manifest["target"]["facts"]
    assert target["gpu"] == real_toolchain.gpu.name and target["tensorrt_version"] == real_toolchain.version
    session = get_target("tensorrt").load(run.out_dir, manifest)
    assert session.run(np.zeros((1, 3, 224, 224), np.float32))[0].shape == (1, 1000)


@pytest.mark.gpu
def test_real_dynamic_profile(real_toolchain, tmp_path):
    run = narrow_build(tmp_path / "b", "--dynamic", "--precision", "fp16")
    assert run.code == 0, run.err
    stages = {s["stage"] for s in run.manifest["verification"]["stages"]}
    assert len([s for s in stages if s.startswith("tensorrt GPU @")]) == 2 and run.manifest["verification"]["passed"]
    session = get_target("tensorrt").load(run.out_dir, run.manifest)
    assert session.run(np.zeros((1, 3, 448, 448), np.float32))[0].shape == (1, 1000)  # the profile's max
    with pytest.raises(VncompileError, match="does not take an input of 1x3x480x480"):
        session.run(np.zeros((1, 3, 480, 480), np.float32))


@pytest.mark.gpu
def test_real_timing_cache_reuse(real_toolchain, tmp_path):
    cache = tmp_path / "timing.cache"
    first = narrow_build(tmp_path / "a", "--precision", "fp16", "--timing-cache", cache)
    assert first.code == 0 and first.manifest["notice"] is None and cache.stat().st_size > 0
    again = narrow_build(tmp_path / "b", "--precision", "fp16", "--timing-cache", cache, "--no-verify")
    assert again.code == 0 and again.manifest["notice"] is None
    cache.write_bytes(b"corrupt")
    rebuilt = narrow_build(tmp_path / "c", "--precision", "fp16", "--timing-cache", cache, "--opset", "19")
    assert rebuilt.code == 0 and "rebuilt it" in rebuilt.manifest["notice"] and cache.read_bytes() != b"corrupt"


@pytest.mark.gpu
def test_real_latency_and_memory_hooks(real_toolchain, tmp_path):
    run = narrow_build(tmp_path / "b", "--precision", "fp16")
    assert run.code == 0, run.err
    target = get_target("tensorrt")
    session = target.load(run.out_dir, run.manifest)
    latency = session.time_runs(np.zeros((1, 3, 224, 224), np.float32), warmup=5, runs=20)
    assert len(latency.samples_ms) == 20 and min(latency.samples_ms) > 0 and "host-to-device" in latency.detail
    memory = session.device_memory()
    assert memory.max_kb >= memory.weights_kb > 0 and memory.activations_kb >= 0
    assert "cudaMemGetInfo" in memory.detail


@pytest.mark.gpu
def test_real_load_checks_the_version_before_deserializing(real_toolchain, tmp_path):
    run = narrow_build(tmp_path / "b", "--precision", "fp16")
    manifest = run.manifest
    manifest["target"]["facts"]["tensorrt_version"] = "9.0.0.1"
    with pytest.raises(TargetUnavailable, match="built with TensorRT 9.0.0.1"):
        get_target("tensorrt").load(run.out_dir, manifest)
