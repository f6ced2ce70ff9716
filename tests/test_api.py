"""The layer contracts below the pipeline: options declared once, tolerances, per-output verification,
the target contract's manifest sections, units."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import NARROW
from vncompile.api.options import TargetOptions
from vncompile.api.request import BuildRequest, InputShape, ModelSource
from vncompile.api.target import Artifact, CompileResult, LatencyFigure
from vncompile.api.tolerance import Tolerance, parse_tolerance, tolerances
from vncompile.core.errors import InputError, VncompileError
from vncompile.core.schema import settings_of
from vncompile.core.units import kb, parse_memory_size
from vncompile.devices import DeviceConfig
from vncompile.pipeline.verify import compare, summarize


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# ---------------------------------------------------------------------------- one options model


def test_every_option_is_declared_once_with_its_flag_help_and_scope():
    from vncompile.core.schema import AFFECTS
    from vncompile.targets import get_target, target_names

    declared = settings_of(TargetOptions)
    not_settings = {"calibration_sha256", "eval_sha256", "own"}  # hashes filled in from the sets; targets' values
    assert set(declared) == {f.name for f in dataclasses.fields(TargetOptions)} - not_settings
    for cls in [TargetOptions, *(get_target(n).own_options for n in target_names())]:
        for _, spec in settings_of(cls).values():
            assert spec.flag and spec.help and spec.affects in AFFECTS


def test_each_target_declares_its_own_options_and_two_declarations_of_a_name_agree():
    from vncompile.targets import get_target, own_option_declarations, target_names

    owned = {name: set(settings_of(get_target(name).own_options)) for name in target_names()}
    assert owned["qnn"] == {"soc"} and "platform" in owned["rknn"] and "accelerator" in owned["ethos-u"]
    assert owned["onnxruntime"] == owned["openvino"] == owned["analytic"] == set()
    assert not set(settings_of(TargetOptions)) & set().union(*owned.values())  # common or a target's, not both
    flags = [spec.flag for spec in own_option_declarations().values()]
    assert len(flags) == len(set(flags))


def test_one_registry_of_built_in_targets():
    """Built-ins are listed in one place; the package's entry points are for third parties only."""
    import tomllib

    from vncompile.targets import BUILTIN_TARGETS

    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    assert not set(project["project"].get("entry-points", {}).get("vncompile.targets", {})) & set(BUILTIN_TARGETS)
    modules = {p.stem if p.suffix == ".py" else p.name for p in (Path(vncompile_root()) / "targets").iterdir()
               if p.name not in ("__init__.py", "__pycache__")}
    assert {path.split(":")[0].rsplit(".", 1)[1] for path in BUILTIN_TARGETS.values()} <= modules
    assert set(BUILTIN_TARGETS) >= {"onnxruntime", "openvino", "tensorrt", "rknn", "qnn", "ethos-u", "analytic"}


def vncompile_root() -> Path:
    import vncompile

    return Path(vncompile.__file__).parent


# The second value of every declared option, for the key test below: a new option without one fails it.
OTHER_VALUES = {
    "device": "CPU", "calibration": "synthetic", "calibration_size": 64, "keep_fp32": ("auto",),
    "eval_data": Path("eval"), "max_top1_drop": 2.0, "max_map_drop": 2.0, "conf": 0.25, "iou": 0.5, "max_det": 100,
    "preprocess": "letterbox", "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5),
    "crop_pct": 1.0, "io_dtype": "fp16", "fit_memory": 4096.0, "runtime_profile": "latency",
    "graph_passes": ("relu-before-maxpool",),
    "platform": "rk3576", "quant_algorithm": "mmse", "board": "abc123", "soc": "SM8750",
    "accelerator": "ethos-u85-256", "system_config": "Ethos_U65_Mid_End", "memory_mode": "Dedicated_Sram_384KB",
    "allow_cpu_ops": ("all",), "workspace_mb": 64, "profile_sizes": (64, 96, 128), "timing_cache": Path("t.cache"),
    "detect_head": "host", "input_layout": "nchw", "threads": 2, "minimum_deployment_target": "iOS17",
    "compute_units": "CPU_AND_NE",
}
# A request each option is valid for: the target that reads it, and what else it needs.
OWNERS = {"soc": ("qnn", "int8"), "platform": ("rknn", "int8"), "quant_algorithm": ("rknn", "int8"),
          "board": ("rknn", "int8"), "accelerator": ("ethos-u", "int8"), "system_config": ("ethos-u", "int8"),
          "memory_mode": ("ethos-u", "int8"), "allow_cpu_ops": ("ethos-u", "int8"),
          "workspace_mb": ("tensorrt", "fp16"), "profile_sizes": ("tensorrt", "fp16"),
          "timing_cache": ("tensorrt", "fp16"), "keep_fp32": ("onnxruntime", "int8"), "io_dtype": ("tensorrt", "fp16"),
          "runtime_profile": ("onnxruntime", "fp32"), "calibration": ("onnxruntime", "int8"),
          "calibration_size": ("onnxruntime", "int8"), "input_layout": ("litert", "fp32"),
          "threads": ("litert", "fp32"), "minimum_deployment_target": ("coreml", "fp16"),
          "compute_units": ("coreml", "fp16")}


def test_changing_each_declared_option_moves_exactly_the_keys_it_declares():
    """Every option, in turn: the reference, ONNX and build keys move as its declaration (``affects``) says, so an
    option left out of a key cannot silently serve a stale entry."""
    from vncompile.pipeline.plan import resolve
    from vncompile.targets import get_target, own_option_declarations, target_names

    declared = {name: spec for name, (_f, spec) in settings_of(TargetOptions).items()}
    declared.update(own_option_declarations())
    assert set(declared) <= set(OTHER_VALUES), "give the new option a second value in OTHER_VALUES"
    own_names = {n for t in target_names() for n in settings_of(get_target(t).own_options)}
    moved_by_scope = {"reference": {"reference", "onnx", "build"}, "onnx": {"onnx", "build"}, "build": {"build"},
                      "nothing": set()}
    source = ModelSource(model_name="vanillanet_5", width=NARROW)

    detector = ModelSource(checkpoint=Path(__file__).parent / "data" / "detector" / "detector_train_form.onnx")

    def keys(target, precision, options, dynamic):
        # --detect-head applies to ONNX detectors: the committed test detector, at its own size
        model, size = (detector, 128) if options.detect_head or name == "detect_head" else (source, 64)
        plan = resolve(BuildRequest(model, target, precision, shape=InputShape(1, 3, size, size), dynamic=dynamic,
                                    options=options))
        return {"reference": plan.reference_key, "onnx": plan.onnx_key, "build": plan.build_key}

    for name, spec in declared.items():
        target, precision = OWNERS.get(name, ("onnxruntime", "fp32"))
        dynamic = name == "profile_sizes"
        base = TargetOptions()
        value = OTHER_VALUES[name]
        if name in own_names:
            changed = base.with_own({name: value})
        else:
            hashes = {"calibration_sha256": "synthetic"} if name == "calibration" else (
                {"eval_sha256": "0" * 64} if name == "eval_data" else {})
            changed = dataclasses.replace(base, **{name: value}, **hashes)
        before, after = keys(target, precision, base, dynamic), keys(target, precision, changed, dynamic)
        moved = {k for k in before if before[k] != after[k]}
        assert moved == moved_by_scope[spec.affects], (name, spec.affects, moved)


@pytest.mark.parametrize("target,flags,message", [
    ("ethos-u", ["--soc", "SM8650"], "--soc does not apply to --target ethos-u (its own: --accelerator, "
                                     "--system-config, --memory-mode, --allow-cpu-ops)"),
    ("openvino", ["--platform", "rk3588", "--quant-algorithm", "mmse"],
     "--platform, --quant-algorithm do not apply to --target openvino"),
    ("rknn", ["--keep-fp32", "auto", "--precision", "int8"],
     "--keep-fp32 does not apply to --target rknn: it quantizes the float graph itself"),
    ("analytic", ["--workspace", "64"], "--workspace does not apply to --target analytic"),
])
def test_another_targets_option_is_refused_not_ignored(tmp_path, run_cli, target, flags, message):
    from tests.conftest import one_line_error

    out = tmp_path / "b"
    result = run_cli("build", "--model", "vanillanet_5", "--width", NARROW, "--size", "64", "--target", target,
                     *flags, "-o", out)
    assert result.code == 2 and one_line_error(result) == f"error: {message}"
    assert not out.exists()


def test_profile_gives_each_target_its_own_options_and_refuses_one_none_reads():
    from vncompile.profiling.profile import ProfileRequest
    from vncompile.targets import get_target

    source = ModelSource(model_name="vanillanet_5", width=NARROW)
    options = TargetOptions(keep_fp32=("auto",)).with_own({"soc": "SM8750", "platform": "rk3576"})
    targets = [get_target(t) for t in ("qnn", "rknn", "openvino")]
    profile = ProfileRequest(models=(source,), targets=tuple(t.name for t in targets), options=options)
    profile.check_options(targets)
    qnn, rknn, openvino = (profile.build_request(source, t, 64, "int8").options for t in targets)
    assert qnn.own_values() == {"soc": "SM8750"} and rknn.own_values() == {"platform": "rk3576"}
    assert openvino.own_values() == {} and openvino.keep_fp32 == ("auto",)
    unread = ProfileRequest(models=(source,), targets=("onnxruntime", "openvino"), options=options)
    with pytest.raises(InputError, match=r"^--platform, --soc apply to none of the profiled targets "
                                         r"\(onnxruntime, openvino\)$"):
        unread.check_options([get_target("onnxruntime"), get_target("openvino")])


def test_options_round_trip_through_a_worker_payload():
    options = TargetOptions(device="CPU", calibration=Path("cal"), fit_memory=15850.5, keep_fp32=("a", "b"),
                            mean=(0.5, 0.5, 0.5)).with_own({"profile_sizes": (256, 384, 512), "workspace_mb": 64,
                                                             "timing_cache": Path("t.cache")})
    request = BuildRequest(ModelSource(model_name="vanillanet_5", width=NARROW), "tensorrt", options=options,
                           tolerance=(parse_tolerance("fp16=rel:3e-2"),))
    again = BuildRequest.from_json(request.to_json())
    assert again.options.own_values() == {"profile_sizes": (256, 384, 512), "workspace_mb": 64,
                                          "timing_cache": "t.cache"}  # as JSON gives them: the plan converts
    assert dataclasses.replace(again, options=options) == request


@pytest.mark.parametrize("document,message", [
    ("target: onnxruntime\nprecision: fp32\nsizes: [224]\nrunner: x\nbogus: 1\n", "unknown key 'bogus'"),
    ("target: onnxruntime\nprecision: fp32\nsizes: [224]\n", "missing field 'runner'"),
    ("target: onnxruntime\nprecision: fp64\nsizes: [224]\nrunner: x\n", "'precision' must be one of fp32"),
    ("target: onnxruntime\nprecision: fp32\nsizes: [224, 0]\nrunner: x\n", "'sizes' must be a non-empty list"),
    ("target: onnxruntime\nprecision: fp32\nsizes: [224]\nrunner: x\nmemory_limit: lots\n",
     "'memory_limit' must be a memory size"),
    ("target: tensorrt\nprecision: fp32\nsizes: [224]\nrunner: x\noptions: {workspace_mb: -1}\n",
     "options: 'workspace_mb' must be a positive integer"),
    ("target: onnxruntime\nprecision: fp32\nsizes: [224]\nrunner: x\noptions: {workspace_mb: 64}\n",
     "options: unknown key 'workspace_mb'"),  # another target's option: named, not ignored
    ("target: onnxruntime\nprecision: fp32\nsizes: [224]\nrunner: x\ntolerance: [fp16=abs:1]\n",
     "'tolerance' must be a list of tolerances"),
    ("target: nope\nprecision: fp32\nsizes: [224]\nrunner: x\n", "'target' must be one of"),
])
def test_device_config_errors_name_the_file_and_the_field(tmp_path, document, message):
    from vncompile.devices import load_device_config

    path = write(tmp_path / "dev.yaml", document)
    with pytest.raises(InputError, match=message) as info:
        load_device_config(path)
    assert str(info.value).startswith(str(path))


def test_a_device_config_is_one_build_request_for_build_profile_and_ci(tmp_path):
    from vncompile.devices import load_device_config

    path = write(tmp_path / "gpu.yaml", "target: tensorrt\nprecision: fp16\nsizes: [256, 384, 512]\nrunner: jetson\n"
                                        "dynamic: true\nbatch: 2\nmemory_limit: 1GB\ntolerance: [fp16=rel:3e-2]\n"
                                        "options: {workspace_mb: 512}\n")
    config = load_device_config(path)
    assert isinstance(config, DeviceConfig) and config.memory_limit == 1024**2
    source = ModelSource(model_name="vanillanet_5", width=NARROW)
    request = config.build_request(source, 384)
    assert request.dynamic and request.shape.as_tuple() == (2, 3, 384, 384)
    assert request.options.own_values() == {"profile_sizes": (256, 384, 512), "workspace_mb": 512}
    assert request.tolerances()["fp16"] == Tolerance(rel=3e-2)
    typed = config.build_request(source, 256, precision="fp32", options=TargetOptions().with_own({"workspace_mb": 64}))
    assert typed.precision == "fp32" and typed.options.own_values()["workspace_mb"] == 64
    assert typed.options.own_values()["profile_sizes"]


def test_profile_honours_a_device_configs_batch_and_dynamic(tmp_path):
    from vncompile.devices import load_device_config
    from vncompile.profiling.profile import ProfileRequest
    from vncompile.targets import get_target

    config = load_device_config(write(tmp_path / "d.yaml", "target: onnxruntime\nprecision: fp32\nsizes: [64, 96]\n"
                                                           "runner: x\ndynamic: true\nbatch: 2\n"))
    profile = ProfileRequest(models=(ModelSource(model_name="vanillanet_5", width=NARROW),), targets=("onnxruntime",),
                             sizes=(64, 96), device=config)
    request = profile.build_request(profile.models[0], get_target("onnxruntime"), 64, "fp32")
    assert request.dynamic and request.shape.batch == 2 and profile.batch_size == 2
    assert request.options.own_values() == {}  # an optimization profile is tensorrt's alone


# ---------------------------------------------------------------------------- tolerances and per-output comparison


@pytest.mark.parametrize("text,expected", [
    ("fp16=rel:3e-2", ("fp16", Tolerance(rel=3e-2))),
    ("int8=cosine:0.98", ("int8", Tolerance(cosine=0.98))),
    ("fp32=rel:1e-3,cosine:0.999", ("fp32", Tolerance(rel=1e-3, cosine=0.999))),
])
def test_tolerance_parsing(text, expected):
    assert parse_tolerance(text) == expected
    assert tolerances((expected,))[expected[0]] == expected[1]


@pytest.mark.parametrize("text", ["fp16", "fp64=rel:1", "fp16=rel:", "fp16=abs:1", "int8=cosine:2", "fp16=rel:-1"])
def test_bad_tolerances_are_refused(text):
    with pytest.raises(InputError, match="--tolerance must look like"):
        parse_tolerance(text)


def test_each_output_is_compared_on_its_own_scale():
    """A 1/4-resolution map in the hundreds and a 1/32 one near 1: an error that is small against the
    first would hide in one concatenated vector; compared on its own, the small output fails."""
    rng = np.random.default_rng(0)
    big, small = rng.normal(0, 100, (1, 8, 16, 16)), rng.normal(0, 1, (1, 8, 2, 2))
    reference = [[big, small]]
    outputs = [[big, small + 0.05]]
    stage = compare("onnx", "fp32", reference, outputs, ["stage0", "stage3"], Tolerance(rel=1e-3), classifier=False)
    assert [o.passed for o in stage.outputs] == [True, False] and not stage.passed
    assert stage.worst.name == "stage3" and stage.outputs[0].top1_agreement is None
    verification = summarize([stage], tolerances())
    line = verification.failure_line()
    assert "output 'stage3'" in line and "needs rel <= 0.0001" in line
    _, suggested = parse_tolerance(line.split("--tolerance ")[1].split(" would")[0])
    assert suggested.accepts(stage.worst.rel, stage.worst.cosine)


def test_top1_only_on_a_classifiers_logits():
    logits = [[np.array([[0.1, 2.0, 0.3]])]]
    stage = compare("t", "fp32", logits, logits, ["logits"], Tolerance(rel=1e-4), classifier=True)
    assert stage.outputs[0].top1_agreement == 1.0
    assert stage.as_dict()["top1_agreement"] == 1.0 and stage.as_dict()["outputs"][0]["name"] == "logits"


def test_non_finite_outputs_fail_whatever_the_tolerance():
    stage = compare("t", "fp32", [[np.ones((1, 4))]], [[np.array([[1, np.nan, 1, 1]])]], ["x"], Tolerance(rel=1e9),
                    classifier=False)
    assert not stage.passed and stage.outputs[0].would_pass is None


# ---------------------------------------------------------------------------- the target contract


def test_exactly_one_primary_artifact():
    assert CompileResult([Artifact("a", "x", primary=True), Artifact("b", "y")]).primary.path == "a"
    for artifacts in ([Artifact("a", "x")], [Artifact("a", "x", primary=True), Artifact("b", "y", primary=True)]):
        with pytest.raises(VncompileError, match="exactly one artifact primary"):
            CompileResult(artifacts)


def test_latency_section_statistics():
    section = LatencyFigure([3.0, 1.0, 2.0], "estimated", "cycles").as_dict()
    assert (section["min_ms"], section["median_ms"], section["max_ms"], section["runs"]) == (1.0, 2.0, 3.0, 3)
    assert section["source"] == "estimated"


def test_analytic_build_has_the_same_memory_section_as_its_profile_row(tmp_path, run_cli):
    import json

    out = tmp_path / "b"
    assert run_cli("build", "--model", "vanillanet_5", "--width", NARROW, "--target", "analytic", "--size", "64",
                   "-o", out).code == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["memory"]["source"] == "estimated" and manifest["latency"] is None
    assert [a["role"] for a in manifest["artifacts"] if a["primary"]] == ["memory-plan"]
    row = run_cli("profile", "--models", "vanillanet_5", "--width", NARROW, "--targets", "analytic", "--sizes", "64",
                  "--format", "json").json()["rows"][0]
    assert row["memory"] == manifest["memory"]
    assert row["artifact_sha256"] == manifest["artifacts"][1]["sha256"]


# ---------------------------------------------------------------------------- units


def test_one_kb_is_1024_bytes_everywhere():
    assert kb(2048) == 2.0
    assert parse_memory_size("64MB") == parse_memory_size("64MiB") == 64 * 1024
    with pytest.raises(ValueError, match="1 KB = 1024 bytes"):
        parse_memory_size("64 parsecs")


def test_a_device_config_can_name_the_backbone_outputs_it_runs(tmp_path):
    from vncompile.devices import load_device_config

    config = load_device_config(write(tmp_path / "det.yaml", "target: onnxruntime\nprecision: fp32\nsizes: [640]\n"
                                                             "runner: x\nfeatures: [0, 1, 2, 3]\n"))
    assert config.build_request(ModelSource(model_name="vanillanet_5", width=NARROW)).source.features == "0,1,2,3"
    own = ModelSource(model_name="vanillanet_5", width=NARROW, features="all")
    assert config.build_request(own).source.features == "all"  # the model's own choice wins
    with pytest.raises(InputError, match="'features' must be 'all', 'stem' and/or stage indices"):
        load_device_config(write(tmp_path / "bad.yaml", "target: onnxruntime\nprecision: fp32\nsizes: [640]\n"
                                                        "runner: x\nfeatures: banana\n"))


def test_image_set_hashes_never_outlive_the_set_they_hash(tmp_path):
    from vncompile.pipeline.plan import resolve

    """--calibration synthetic over a config's real set must not keep the real set's hash (it keys the ONNX)."""
    from PIL import Image

    from vncompile.data.calibration import with_data_hashes

    (tmp_path / "cal").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "cal" / "a.png")
    real = with_data_hashes(TargetOptions(calibration=tmp_path / "cal"))
    assert real.calibration_sha256
    synthetic = with_data_hashes(dataclasses.replace(real, calibration="synthetic"))
    assert synthetic.calibration_sha256 is None
    source = ModelSource(model_name="vanillanet_5", width=NARROW)
    keys = {resolve(BuildRequest(source, "onnxruntime", "int8", options=o)).onnx_key for o in (real, synthetic)}
    assert len(keys) == 2


def test_real_verification_images_key_the_onnx_stages_of_self_quantizing_targets(tmp_path):
    from PIL import Image

    from vncompile.data.calibration import with_data_hashes
    from vncompile.pipeline.plan import resolve

    (tmp_path / "cal").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "cal" / "a.png")
    source = ModelSource(model_name="vanillanet_5", width=NARROW)
    real = with_data_hashes(TargetOptions(calibration=tmp_path / "cal"))
    int8 = resolve(BuildRequest(source, "rknn", "int8", options=real))  # rknn: the fp32 graph
    fp16 = resolve(BuildRequest(source, "rknn", "fp16"))
    assert int8.onnx_key != fp16.onnx_key  # the int8 build's reference holds real images too
    assert int8.reference_key != fp16.reference_key
    int16 = resolve(BuildRequest(source, "qnn", "int16", options=real))  # qnn quantizes itself
    assert int16.reference_key != resolve(BuildRequest(source, "qnn", "int16")).reference_key  # verified on them too
    # without real images, every target and precision shares one reference
    shared = {resolve(BuildRequest(source, t, p)).reference_key
              for t, p in (("onnxruntime", "fp32"), ("tensorrt", "fp16"), ("rknn", "fp16"), ("qnn", "int8"))}
    assert len(shared) == 1


@pytest.mark.parametrize("value", ["nan", "inf", "-1"])
def test_numbers_are_finite_and_in_range(run_cli, value):
    from tests.conftest import one_line_error

    result = run_cli("build", "--model", "vanillanet_5", "--target", "onnxruntime", "--max-top1-drop", value)
    assert result.code == 2 and "'--max-top1-drop': must be a number of points >= 0" in one_line_error(result)
