"""Faults a user causes end as one line and a non-zero exit, with nothing half-written.

Bad checkpoints (a NaN weight, a tensor of the wrong shape) are input errors (exit 2);
an output or a cache that cannot be written (no such directory, a file in the way,
a full disk) is a failed build (exit 1) that leaves no temporary siblings and no
half-written cache entry, so the same command succeeds once the fault is gone.
"""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import NARROW, one_line_error, random_network
from vncompile.core.errors import OutputError
from vncompile.core.io import atomic_directory

W = str(NARROW)
SMALL = ["--target", "onnxruntime", "--size", "64"]


def checkpoint_with(tmp_path: Path, change) -> Path:
    """A narrow vanillanet_5 state_dict, changed by ``change`` (in place), saved as ckpt.pth."""
    state_dict = random_network().state_dict()
    change(state_dict)
    path = tmp_path / "ckpt.pth"
    torch.save(state_dict, path)
    return path


def leftovers(directory: Path) -> list[str]:
    """Temporary siblings a failed atomic write would leave (``.name.tmp-...``, ``.name.old-...``)."""
    return sorted(str(p.relative_to(directory)) for p in directory.rglob(".*") if ".tmp-" in p.name
                  or ".old-" in p.name)


def cache_entries(cache: Path) -> list[str]:
    return sorted(str(p.relative_to(cache)) for kind in ("builds", "onnx") if (cache / kind).is_dir()
                  for p in (cache / kind).iterdir())


# ---------------------------------------------------------------- checkpoints


def nan_in_first_conv(sd):
    sd["stages.0.conv1.0.weight"].view(-1)[0] = math.nan


def non_finite_in_five(sd):
    for i, key in enumerate(["stem1.0.weight", "stem2.0.weight", "stages.0.conv1.0.weight",
                             "stages.1.conv1.0.weight", "stages.2.conv1.0.weight"]):
        sd[key].view(-1)[: i + 1] = math.inf if i % 2 else math.nan


@pytest.mark.parametrize("command", [
    ["build", "-o", "{out}", *SMALL],
    ["inspect"],
    ["deploy", "-o", "{out}.safetensors"],
])
def test_a_nan_weight_is_named_by_every_command_that_loads(tmp_path, run_cli, command):
    ckpt = checkpoint_with(tmp_path, nan_in_first_conv)
    args = [a.format(out=tmp_path / "out") for a in command]
    result = run_cli(args[0], ckpt, *args[1:])
    assert result.code == 2
    assert one_line_error(result) == f"error: {ckpt}: stages.0.conv1.0.weight has 1 NaN value(s)"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pth"]


def test_several_non_finite_tensors_name_the_first_few_and_how_many(tmp_path, run_cli):
    ckpt = checkpoint_with(tmp_path, non_finite_in_five)
    result = run_cli("inspect", ckpt)
    assert result.code == 2
    assert one_line_error(result) == (
        f"error: {ckpt}: 5 tensors hold non-finite values: stem1.0.weight has 1 NaN value(s), "
        "stem2.0.weight has 2 Inf value(s), stages.0.conv1.0.weight has 3 NaN value(s) and 2 more")


def test_a_tensor_of_the_wrong_shape_is_named_with_both_shapes(tmp_path, run_cli):
    expected = "x".join(map(str, random_network().state_dict()["stages.1.conv2.0.weight"].shape))

    def wrong_shape(sd):
        sd["stages.1.conv2.0.weight"] = torch.zeros(3, 3, 1, 1)

    ckpt = checkpoint_with(tmp_path, wrong_shape)
    for command in (["build", "-o", tmp_path / "out", *SMALL], ["inspect"]):
        result = run_cli(command[0], ckpt, *command[1:])
        assert result.code == 2
        line = one_line_error(result)
        assert f"stages.1.conv2.0.weight is 3x3x1x1, expected {expected}" in line, line
        assert line.startswith(f"error: {ckpt}: does not match vanillanet_5")
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- outputs that cannot be written


@pytest.fixture
def a_file(tmp_path) -> Path:
    path = tmp_path / "file"
    path.write_text("not a directory\n")
    return path


@pytest.mark.parametrize("output,reason", [
    ("/proc/vncompile-out", "no such file or directory"),
    ("{file}/out", "{file} is a file, not a directory"),
    ("{file}/sub/out", "{file} is a file, not a directory"),
])
def test_build_to_an_unwritable_output_is_one_line(tmp_path, run_cli, a_file, output, reason):
    out = output.format(file=a_file)
    result = run_cli("build", "--model", "vanillanet_5", "--width", W, *SMALL, "-o", out)
    assert result.code == 1
    assert one_line_error(result) == f"error: cannot write output {out}: {reason.format(file=a_file)}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]
    assert a_file.read_text() == "not a directory\n"


@pytest.mark.parametrize("command", [
    ["deploy", "{ckpt}", "-o", "{file}/deploy.safetensors"],
    ["deploy", "{ckpt}", "-o", "{file}/deploy.pth"],
    ["profile", "--models", "vanillanet_5", "--width", W, "--targets", "analytic", "--sizes", "64", "--runs", "1",
     "--warmup", "0", "-o", "{file}/profile"],
])
def test_deploy_and_profile_to_an_unwritable_output_are_one_line(tmp_path, run_cli, a_file, command):
    ckpt = checkpoint_with(tmp_path, lambda sd: None)
    args = [a.format(ckpt=ckpt, file=a_file) for a in command]
    result = run_cli(*args)
    assert result.code == 1
    assert one_line_error(result) == f"error: cannot write output {args[-1]}: {a_file} is a file, not a directory"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pth", "file"]


def test_ci_to_an_unwritable_output_is_one_line(tmp_path, run_cli, a_file):
    from tests.test_ci import write_matrix

    matrix = write_matrix(tmp_path, ["x86-onnxruntime-fp32"])
    result = run_cli("ci", matrix, "-o", a_file / "dist")
    assert result.code == 1
    out = a_file / "dist"
    assert one_line_error(result) == f"error: cannot write output {out}: {a_file} is a file, not a directory"


def test_an_unwritable_cache_is_one_line(tmp_path, run_cli, a_file, monkeypatch):
    monkeypatch.setenv("VNCOMPILE_CACHE_DIR", str(a_file / "cache"))
    result = run_cli("build", "--model", "vanillanet_5", "--width", W, *SMALL, "-o", tmp_path / "out")
    assert result.code == 1
    assert one_line_error(result).startswith(f"error: cannot write build cache lock {a_file / 'cache'}/locks/")
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- a full disk


@pytest.fixture
def small_disk(tmp_path):
    """A real 16 MB tmpfs: room for a narrow build and its cache entries, until ``fill`` takes it.

    Mounting needs root (or CAP_SYS_ADMIN): the test is skipped where it is not allowed.
    """
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount_point)],
                             capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    yield mount_point
    subprocess.run(["umount", str(mount_point)], check=True)


def fill(disk: Path, leave: int) -> Path:
    """Fill ``disk`` but ``leave`` bytes (less than a build's artifacts need); remove the file for space."""
    filler = disk / "filler"
    free = shutil.disk_usage(disk).free
    with open(filler, "wb") as f:
        f.write(b"\0" * max(0, free - leave))
    return filler


def build_to(run_cli, out: Path):
    return run_cli("build", "--model", "vanillanet_5", "--width", W, *SMALL, "-o", out)


def test_a_full_output_disk_leaves_nothing_and_the_retry_succeeds(small_disk, run_cli, isolated_cache):
    filler = fill(small_disk, leave=32 * 1024)
    out = small_disk / "bundle"
    result = build_to(run_cli, out)
    assert result.code == 1
    assert one_line_error(result) == f"error: cannot write output {out}: no space left on device"
    assert sorted(os.listdir(small_disk)) == ["filler"]
    filler.unlink()
    retry = build_to(run_cli, out)
    assert retry.code == 0, retry.err
    assert (out / "manifest.json").is_file() and leftovers(small_disk) == []


def test_a_full_cache_disk_leaves_no_half_written_entry(small_disk, run_cli, monkeypatch, tmp_path):
    cache = small_disk / "cache"
    monkeypatch.setenv("VNCOMPILE_CACHE_DIR", str(cache))
    filler = fill(small_disk, leave=32 * 1024)
    out = tmp_path / "bundle"
    result = build_to(run_cli, out)
    assert result.code == 1
    line = one_line_error(result)
    assert line.startswith(f"error: cannot write build cache entry {cache}/") and line.endswith(
        ": no space left on device"), line
    assert cache_entries(cache) == [] and leftovers(cache) == []
    assert not out.exists()
    filler.unlink()
    retry = build_to(run_cli, out)
    assert retry.code == 0, retry.err
    assert (out / "manifest.json").is_file() and len(cache_entries(cache)) == 2


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_deploy_to_a_full_disk_leaves_nothing(small_disk, run_cli, tmp_path, suffix):
    ckpt = checkpoint_with(tmp_path, lambda sd: None)
    fill(small_disk, leave=16 * 1024)
    out = small_disk / f"deploy{suffix}"
    result = run_cli("deploy", ckpt, "-o", out)
    assert result.code == 1
    assert one_line_error(result) == f"error: cannot write output {out}: no space left on device"
    assert sorted(os.listdir(small_disk)) == ["filler"]


def test_a_full_disk_under_profile_leaves_nothing(small_disk, run_cli):
    fill(small_disk, leave=4 * 1024)
    out = small_disk / "profile"
    result = run_cli("profile", "--models", "vanillanet_5", "--width", W, "--targets", "analytic", "--sizes", "64",
                     "--runs", "1", "--warmup", "0", "-o", out)
    assert result.code == 1
    assert one_line_error(result) == f"error: cannot write output {out}: no space left on device"
    assert sorted(os.listdir(small_disk)) == ["filler"]


@pytest.mark.parametrize("code,words", [
    (errno.EACCES, "permission denied"),  # what a non-root user gets for a directory it may not write
    (errno.EPERM, "permission denied"),
    (errno.EROFS, "read-only file system"),
    (errno.EDQUOT, "disk quota exceeded"),
])
def test_the_os_reasons_root_cannot_provoke_here_are_worded(tmp_path, code, words):
    # Tests run as root, which may write anywhere: the refusal is raised where the OS would raise it.
    out = tmp_path / "out"
    with pytest.raises(OutputError) as raised, atomic_directory(out, lambda _: False) as tmp:
        raise OSError(code, os.strerror(code), str(tmp / "model.onnx"))
    assert str(raised.value) == f"cannot write output {out}: {words}"
    assert os.listdir(tmp_path) == []


def test_a_full_disk_under_ci_leaves_nothing(small_disk, run_cli, tmp_path):
    from tests.test_ci import write_matrix

    matrix = write_matrix(tmp_path, ["x86-onnxruntime-fp32"])
    fill(small_disk, leave=32 * 1024)
    out = small_disk / "dist"
    result = run_cli("ci", matrix, "-o", out)
    assert result.code == 1
    assert one_line_error(result) == f"error: cannot write output {out}: no space left on device"
    assert sorted(os.listdir(small_disk)) == ["filler"]


# ---------------------------------------------------------------- files a user hands over


def analytic_build(run_cli, out: Path, *extra):
    """The cheapest build that reads an evaluation set's images (the analytic planner runs nothing)."""
    return run_cli("build", "--model", "vanillanet_5", "--width", W, "--target", "analytic", "--size", "64",
                   "-o", out, *extra)


def eval_set(tmp_path: Path, labels: str | bytes, names=("a.png", "b.png")) -> Path:
    directory = tmp_path / "eval"
    directory.mkdir()
    for name in names:
        Image.new("RGB", (8, 8), (200, 30, 30)).save(directory / name)
    (directory / "labels.txt").write_bytes(labels if isinstance(labels, bytes) else labels.encode())
    return directory


@pytest.mark.parametrize("labels,message", [
    ("a.png 0\nb.png 1\na.png 0\n", "labels.txt:3: a.png is listed twice (lines 1 and 3)"),
    ("a.png 0\nb.png 1\n./a.png 2\n", "labels.txt:3: a.png is labelled 0 and 2 (lines 1 and 3)"),
    ("a.png 0\n/etc/passwd 1\n", "labels.txt:2: /etc/passwd is outside"),
    ("a.png 0\n../eval/b.png 1\n", "labels.txt:2: ../eval/b.png is outside"),
    ("a.png 0\nsub/../../x.png 1\n", "labels.txt:2: sub/../../x.png is outside"),
    (b"a.png 0\nb\xe9.png 1\n", "labels.txt:2: not UTF-8 text (byte 0xe9)"),
    (b"\xff\xfea\x00", "labels.txt:1: not UTF-8 text (byte 0xff)"),  # UTF-16
])
def test_a_bad_label_file_is_one_line_naming_its_line(tmp_path, run_cli, labels, message):
    directory = eval_set(tmp_path, labels)
    result = analytic_build(run_cli, tmp_path / "b", "--eval-data", directory)
    assert result.code == 2
    assert one_line_error(result).startswith(f"error: {directory / message.split(':')[0]}:"), result.err
    assert message in one_line_error(result)
    assert not (tmp_path / "b").exists()


def test_a_label_file_with_a_bom_and_a_csv_with_an_unclosed_quote(tmp_path, run_cli):
    from vncompile.data.images import labelled_images

    directory = eval_set(tmp_path, "\ufefffile label\na.png 1\nb.png 0\n".encode())  # Windows Notepad's UTF-8
    assert labelled_images(directory).labels == (1, 0)
    (directory / "labels.txt").unlink()
    (directory / "labels.csv").write_bytes(b'a.png,0\n"b.png,1\n')
    result = analytic_build(run_cli, tmp_path / "b", "--eval-data", directory)
    assert result.code == 2 and f"{directory / 'labels.csv'}:2: not CSV" in one_line_error(result)


def save_png16(path: Path, value: int) -> None:
    Image.fromarray(np.full((16, 16), value, np.uint16)).save(path)  # a 16-bit grayscale PNG (mode I;16)


def test_images_of_any_mode_and_bit_depth_are_scaled_to_8_bits(tmp_path):
    from vncompile.data.preprocess import read_rgb

    save_png16(tmp_path / "g16.png", 65535)
    save_png16(tmp_path / "mid16.png", 32896)  # 128 * 257
    assert np.asarray(Image.open(tmp_path / "g16.png")).dtype == np.uint16
    assert np.asarray(read_rgb(tmp_path / "g16.png")).max() == 255
    assert set(np.asarray(read_rgb(tmp_path / "mid16.png")).ravel()) == {128}  # not clipped to 255
    for mode, fill in [("1", 1), ("L", 90), ("LA", (90, 10)), ("P", 3), ("RGBA", (1, 2, 3, 0)), ("CMYK", (0, 0, 0, 0)),
                       ("I;16", 1000)]:
        Image.new(mode, (8, 8), fill).save(tmp_path / f"{mode.replace(';', '')}.png" if mode != "CMYK" else
                                           tmp_path / "cmyk.jpg")
    for path in tmp_path.iterdir():
        image = read_rgb(path)
        assert image.mode == "RGB" and image.size in ((8, 8), (16, 16)), path


@pytest.mark.parametrize("make,message", [
    (lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20), "not a readable image"),
    (lambda p: p.write_bytes(Path(p).with_name("ok.png").read_bytes()[:60]), "not a readable image"),
    (lambda p: p.write_bytes(png_declaring(100_000, 100_000)), "declares more than 67,108,864 pixels"),
    (lambda p: p.write_bytes(png_declaring(9000, 8000)), "declares more than 67,108,864 pixels"),
])
def test_an_unreadable_or_gigantic_image_is_one_line(tmp_path, run_cli, make, message):
    directory = tmp_path / "eval" / "0"
    directory.mkdir(parents=True)
    Image.new("RGB", (32, 32), (1, 2, 3)).save(directory / "ok.png")
    make(directory / "bad.png")
    result = analytic_build(run_cli, tmp_path / "b", "--eval-data", directory.parent)
    assert result.code == 2
    assert one_line_error(result).startswith(f"error: {directory / 'bad.png'}: {message}"), result.err
    assert not (tmp_path / "b").exists()


def png_declaring(width: int, height: int) -> bytes:
    """A PNG header declaring ``width`` x ``height`` pixels, without their data (a decompression bomb's first bytes)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)) + \
        chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def npy_with(array) -> bytes:
    import io

    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=True)
    return buffer.getvalue()


GOOD = np.zeros((3, 64, 64), np.float32)


@pytest.mark.parametrize("data,message", [
    (npy_with(np.array([{"a": 1}] * 3, dtype=object)), "a calibration array holds numbers, not object values"),
    (npy_with(GOOD)[:-100], "not a readable .npy array"),
    (npy_with(GOOD)[:8], "not a readable .npy array"),
    (b"not an array at all", "not a readable .npy array"),
    (npy_with(np.where(np.arange(GOOD.size).reshape(GOOD.shape) == 5, np.nan, GOOD)),
     "calibration array has 1 NaN or infinite value(s)"),
    (npy_with(np.full_like(GOOD, np.inf)), "calibration array has 12,288 NaN or infinite value(s)"),
    (npy_with(np.zeros((3, 32, 32), np.float32)), "calibration array has shape (3, 32, 32), expected (3, 64, 64)"),
    (npy_with(np.zeros((3, 64, 64), np.complex64)), "a calibration array holds numbers, not complex64 values"),
])
def test_a_bad_calibration_array_is_one_line(tmp_path, run_cli, data, message):
    calibration = tmp_path / "calib"
    calibration.mkdir()
    np.save(calibration / "good.npy", GOOD + 0.5)
    (calibration / "bad.npy").write_bytes(data)
    result = run_cli("build", "--model", "vanillanet_5", "--width", W, *SMALL, "--precision", "int8",
                     "--calibration", calibration, "-o", tmp_path / "b")
    assert result.code == 2
    assert one_line_error(result).startswith(f"error: {calibration / 'bad.npy'}: {message}"), result.err
    assert not (tmp_path / "b").exists()


BOMB = ("target: onnxruntime\nprecision: fp32\nsizes: [64]\nrunner: x\nx0: &a0 [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\n"
        + "".join(f"x{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]\n" for i in range(1, 9)) + "description: *a8\n")


@pytest.mark.parametrize("text,message", [
    (BOMB, "device.yaml:9: more than 100,000 values with its aliases expanded"),
    ("target: onnxruntime\nprecision: fp32\nsizes: [64]\nrunner: x\noptions: " + "[" * 3000 + "]" * 3000 + "\n",
     "device.yaml:5: nested deeper than 32 levels"),
    ("target: onnxruntime\nprecision: fp32\nsizes: [64]\nrunner: x\ndescription: " + "{a: " * 40 + "1" + "}" * 40,
     "device.yaml:5: nested deeper than 32 levels"),
    ("description: caf\xe9\ntarget: onnxruntime\n".encode("latin-1"), "device.yaml:1: not UTF-8 text (byte 0xe9)"),
    ("target: onnxruntime\nprecision: fp32\nsizes: [64]\nrunner: x\ndescription: *nowhere\n",
     "device.yaml: not valid YAML"),
])
def test_a_hostile_device_config_fails_fast_in_one_line(tmp_path, run_cli, text, message):
    import time

    config = tmp_path / "device.yaml"
    config.write_bytes(text if isinstance(text, bytes) else text.encode())
    start = time.perf_counter()
    result = run_cli("build", "--model", "vanillanet_5", "--width", W, "--device", config, "-o", tmp_path / "b")
    assert result.code == 2 and time.perf_counter() - start < 10
    assert one_line_error(result).startswith(f"error: {tmp_path / message}"), result.err


def test_a_ci_matrix_not_in_utf8_and_an_aliased_one(tmp_path, run_cli):
    matrix = tmp_path / "ci.yaml"
    matrix.write_bytes("models: [vanillanet_5]\n# r\xe9sum\xe9\ndevices: [x86-onnxruntime-fp32]\n".encode("cp1252"))
    result = run_cli("ci", matrix, "-o", tmp_path / "dist")
    assert result.code == 2 and one_line_error(result) == f"error: {matrix}:2: not UTF-8 text (byte 0xe9); save it " \
                                                          "as UTF-8"
    # aliases within the bound are YAML as usual
    from tests.test_ci import REPO

    matrix.write_text(f"devices_dir: {REPO / 'configs' / 'devices'}\nmodels: &m [vanillanet_5]\n"
                      "devices: [x86-onnxruntime-fp32]\noverrides: [{model: vanillanet_5, skip: true}]\n")
    from vncompile.ci.matrix import load_ci_config

    assert load_ci_config(matrix).cells == []


@pytest.mark.parametrize("dtype", [torch.int8, torch.int32, torch.uint8, torch.bool, torch.complex64])
def test_weights_that_are_not_floating_point_are_refused(tmp_path, run_cli, dtype):
    def quantized(sd):
        for key in list(sd)[:5]:
            if sd[key].is_floating_point():
                sd[key] = sd[key].to(dtype)

    ckpt = checkpoint_with(tmp_path, quantized)
    result = run_cli("build", ckpt, "-o", tmp_path / "out", *SMALL)
    assert result.code == 2
    line = one_line_error(result)
    kind = str(dtype).removeprefix("torch.")
    assert line.startswith(f"error: {ckpt}: weights must be floating point") and f"stem1.0.weight ({kind})" in line
    assert not (tmp_path / "out").exists()


def test_float64_and_bfloat16_weights_are_accepted(tmp_path, run_cli):
    for dtype in (torch.float64, torch.bfloat16):
        ckpt = checkpoint_with(tmp_path, lambda sd, d=dtype: sd.update({k: v.to(d) for k, v in sd.items()
                                                                          if v.is_floating_point()}))
        result = run_cli("inspect", ckpt)
        assert result.code == 0, result.err


# ---------------------------------------------------------------- numbers that are not finite, JSON that is strict


@pytest.mark.parametrize("args,message", [
    (["--fit-memory", "1e400"], "'--fit-memory': must be a memory size such as 1.2GB, 900MB or 512KB, got '1e400'"),
    (["--fit-memory", "1e400KB"], "'--fit-memory': must be a memory size such as 1.2GB"),
    (["--fit-memory", "nan"], "'--fit-memory': must be a memory size such as 1.2GB"),
    (["--tolerance", "fp32=rel:1e400"], "--tolerance must look like"),
    (["--tolerance", "fp32=rel:nan"], "--tolerance must look like"),
    (["--tolerance", "int8=cosine:inf"], "--tolerance must look like"),
    (["--mean", "nan,0,0"], "'--mean': must be three numbers"),
    (["--std", "inf,1,1"], "'--std': must be three positive numbers"),
    (["--max-top1-drop", "inf"], "'--max-top1-drop': must be a number of points >= 0, got 'inf'"),
    (["--width", "nan"], "width must be in (0, 4], got nan"),
    (["--act-learn", "nan"], "--act-learn must be in [0, 1], got nan"),
])
def test_numbers_that_are_not_finite_are_refused_where_parsed(tmp_path, run_cli, args, message):
    result = run_cli("build", "--model", "vanillanet_5", "--target", "analytic", "--size", "64", "-o",
                     tmp_path / "b", *args)
    assert result.code == 2 and message in one_line_error(result), result.err
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("command", [["profile", "--timeout", "nan"], ["profile", "--timeout", "-1"],
                                     ["ci", "configs/ci.yaml", "--timeout", "inf"]])
def test_timeouts_that_are_not_finite_are_refused(tmp_path, run_cli, command, monkeypatch):
    monkeypatch.chdir(Path(__file__).parents[1])
    result = run_cli(*command, "-o", tmp_path / "out")
    assert result.code == 2 and "'--timeout': must be a positive number of seconds" in one_line_error(result)


def test_a_cache_bound_that_is_not_finite_is_refused(tmp_path, run_cli, monkeypatch):
    monkeypatch.setenv("VNCOMPILE_CACHE_MAX_SIZE", "1e400GB")
    result = run_cli("build", "--model", "vanillanet_5", "--width", W, *SMALL, "-o", tmp_path / "b")
    assert result.code == 2 and "$VNCOMPILE_CACHE_MAX_SIZE must be a memory size" in one_line_error(result)


def strict_json(text: str):
    def refuse(constant):
        raise AssertionError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def test_every_json_written_is_strict(tmp_path, run_cli):
    """What a build and a profile write, and print with --json / --format json, parses without NaN or Infinity."""
    build = run_cli("build", "--model", "vanillanet_5", "--width", W, *SMALL, "--json",
                    "-o", tmp_path / "b")
    assert build.code == 0, build.err
    strict_json(build.out)
    profile = run_cli("profile", "--models", "vanillanet_5", "--width", W, "--targets", "analytic",
                      "--sizes", "64", "--runs", "1", "--warmup", "0", "--format", "json", "-o", tmp_path / "p")
    assert profile.code == 0, profile.err
    strict_json(profile.out)
    written = sorted(tmp_path.rglob("*.json"))
    assert {p.name for p in written} >= {"manifest.json", "profile.json"}
    for path in written:
        strict_json(path.read_text())


# ---------------------------------------------------------------- --force replaces only what vncompile wrote


def users_directory(tmp_path: Path, manifest: str | None = None) -> Path:
    directory = tmp_path / "mine"
    directory.mkdir()
    (directory / "thesis.tex").write_text("years of work\n")
    if manifest is not None:
        (directory / "manifest.json").write_text(manifest)
    return directory


@pytest.mark.parametrize("manifest", [None, '{"name": "my app", "version": 3}', "not json", '["schema"]'])
@pytest.mark.parametrize("force", [[], ["--force"]])
def test_force_never_replaces_a_directory_vncompile_did_not_write(tmp_path, run_cli, manifest, force):
    directory = users_directory(tmp_path, manifest)
    before = sorted(p.name for p in directory.iterdir())
    result = run_cli("build", "--model", "vanillanet_5", "--width", W, *SMALL, "-o", directory, *force)
    assert result.code == 2
    assert one_line_error(result) == (f"error: {directory} is a directory vncompile did not write; an output replaces "
                                      "only an empty directory or one vncompile wrote: choose another output, or "
                                      "remove it yourself")
    assert sorted(p.name for p in directory.iterdir()) == before and leftovers(tmp_path) == []


@pytest.mark.parametrize("kind", ["file", "symlink"])
def test_force_never_replaces_a_file_or_a_link(tmp_path, run_cli, kind, a_file):
    target = users_directory(tmp_path)
    out = a_file if kind == "file" else tmp_path / "link"
    if kind == "symlink":
        out.symlink_to(target)
    result = run_cli("build", "--model", "vanillanet_5", "--width", W, *SMALL, "-o", out, "--force")
    assert result.code == 2
    assert one_line_error(result).startswith(f"error: {out} is a {'file' if kind == 'file' else 'symbolic link'};")
    assert a_file.read_text() == "not a directory\n" and (target / "thesis.tex").is_file()


def test_force_replaces_an_empty_directory_and_a_build(tmp_path, run_cli):
    out = tmp_path / "empty"
    out.mkdir()
    build = ["build", "--model", "vanillanet_5", "--width", W, "--target", "analytic", "--size", "64", "-o", out]
    assert "pass --force" in one_line_error(run_cli(*build))
    assert run_cli(*build, "--force").code == 0
    assert run_cli(*build, "--size", "96", "--force").code == 0  # another build replaces it
    assert json.loads((out / "manifest.json").read_text())["input_shape"][-1] == 96


@pytest.mark.parametrize("command", [
    ["profile", "--models", "vanillanet_5", "--width", W, "--targets", "analytic", "--sizes", "64", "--runs", "1",
     "--warmup", "0"],
    ["ci", "{matrix}"],
    ["ci", "--merge", "{shard}"],
])
def test_force_never_replaces_a_users_directory_with_a_profile_or_a_ci_run(tmp_path, run_cli, command):
    from tests.test_ci import write_matrix

    matrix = write_matrix(tmp_path, ["x86-onnxruntime-fp32"])
    shard = tmp_path / "shard"
    shard.mkdir()
    (shard / "index.json").write_text('{"schema": 1, "bundles": []}')
    directory = users_directory(tmp_path, '{"schema": 2, "rows": [], "bundles": []}')  # a document, not its own
    (directory / "manifest.json").rename(directory / "notes.json")
    args = [a.format(matrix=matrix, shard=shard) for a in command]
    result = run_cli(*args, "-o", directory, "--force")
    assert result.code == 2 and "is a directory vncompile did not write" in one_line_error(result)
    assert (directory / "thesis.tex").read_text() == "years of work\n"


# ---------------------------------------------------------------- a killed build, a read-only cache


def test_a_killed_builds_work_directory_is_removed_by_the_next_run(tmp_path, run_cli, monkeypatch, isolated_cache):
    """SIGKILL skips every cleanup: the partial graphs stay until a later run finds their lock free."""
    import signal
    import sys
    import tempfile
    import time

    from vncompile.core.io import ABANDONED_AFTER_S, work_root

    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    root = work_root()
    command = [sys.executable, "-m", "vncompile", "build", "--model", "vanillanet_5", "--width", W, *SMALL,
               "-o", str(tmp_path / "killed")]
    child = subprocess.Popen(command, env={**os.environ, "TMPDIR": str(tmp_path / "tmp"),
                                           "PYTHONPATH": str(Path(__file__).parents[1])},
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list(root.glob("build-*/prepared/*.onnx")) and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.wait()
    left = [p for p in root.iterdir() if p.is_dir()]
    assert left and list(left[0].rglob("*.onnx")), "the build was not caught mid-way"
    lock = left[0].with_name(left[0].name + ".lock")  # spared while younger: its run may not have taken it yet
    os.utime(lock, (time.time() - ABANDONED_AFTER_S - 1,) * 2)
    result = run_cli("build", "--model", "vanillanet_5", "--width", W, *SMALL, "-o", tmp_path / "b")
    assert result.code == 0, result.err
    assert list(root.iterdir()) == []


@pytest.fixture
def read_only(tmp_path):
    """``mount --bind -o ro``: a read-only view of a directory that even root cannot write (root ignores modes)."""
    made = []

    def view(directory: Path) -> Path:
        mount_point = tmp_path / f"{directory.name}-ro"
        mount_point.mkdir()
        bound = subprocess.run(["mount", "--bind", "-o", "ro", str(directory), str(mount_point)], capture_output=True)
        if bound.returncode != 0:
            pytest.skip(f"cannot bind-mount read-only here: {bound.stderr.decode().strip()}")
        made.append(mount_point)
        return mount_point

    yield view
    for mount_point in made:
        subprocess.run(["umount", str(mount_point)], check=True)


def test_a_read_only_cache_still_serves_its_builds(tmp_path, run_cli, monkeypatch, isolated_cache, read_only):
    build = ["build", "--model", "vanillanet_5", "--width", W, *SMALL]
    assert run_cli(*build, "-o", tmp_path / "a").code == 0
    cache = read_only(isolated_cache)
    with pytest.raises(OSError):
        (cache / "probe").write_text("x")
    monkeypatch.setenv("VNCOMPILE_CACHE_DIR", str(cache))
    hit = run_cli(*build, "--json", "-o", tmp_path / "b")
    assert hit.code == 0, hit.err
    assert (tmp_path / "a" / "model.onnx").read_bytes() == (tmp_path / "b" / "model.onnx").read_bytes()
    miss = run_cli(*build, "--size", "96", "-o", tmp_path / "c")  # what it does not hold cannot be stored there
    assert miss.code == 1 and one_line_error(miss).startswith(f"error: cannot write build cache entry {cache}/")
    assert not (tmp_path / "c").exists()
