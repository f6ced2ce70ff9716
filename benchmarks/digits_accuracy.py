"""Top-1 on the held-out digits of every target and precision, int8 calibrated on noise vs real images.

The network is tests/data/digits' narrow VanillaNet-5, trained on real handwritten digits; the 300
held-out images were never trained on. Each cell is a real build whose accuracy comes from
--eval-data; verification and the top-1 check are off so that every cell reports its top-1 (the last
column says whether a default build, verified, would have passed).

    python benchmarks/digits_accuracy.py [--targets onnxruntime,openvino,rknn,litert]
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
from pathlib import Path

from vncompile.api.options import SYNTHETIC, TargetOptions
from vncompile.api.request import BuildRequest, InputShape, ModelSource
from vncompile.core.errors import VncompileError
from vncompile.data.calibration import with_data_hashes
from vncompile.pipeline.build import cached_build
from vncompile.pipeline.cache import BuildCache
from vncompile.pipeline.plan import resolve
from vncompile.targets import get_target

DIGITS = Path(__file__).resolve().parent.parent / "tests" / "data" / "digits"
CELLS = [("fp32", None), ("int8", SYNTHETIC), ("int8", DIGITS / "calibration")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", default="onnxruntime,openvino,rknn,litert", help="comma-separated targets")
    targets = parser.parse_args().targets.split(",")
    source = ModelSource(checkpoint=DIGITS / "vanillanet5_digits.pth")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cache = BuildCache(Path(tmp) / "cache")
        for target in targets:
            if not get_target(target).availability().available:
                continue
            for precision, calibration in CELLS:
                if target == "rknn" and precision == "fp32":
                    precision = "fp16"  # the NPU's float precision
                options = with_data_hashes(TargetOptions(calibration=calibration, eval_data=DIGITS / "heldout",
                                                         max_top1_drop=100.0))
                request = BuildRequest(source, target, precision, InputShape(1, 3, 64, 64), options=options,
                                       verify=False)
                checked = dataclasses.replace(request, verify=True, options=dataclasses.replace(
                    options, max_top1_drop=1.0))
                label = "real images" if calibration not in (None, SYNTHETIC) else (calibration or "-")
                accuracy = cached_build(resolve(request), cache)[0]["accuracy"]
                try:
                    cached_build(resolve(checked), cache)
                    verdict = "passes"
                except VncompileError as exc:
                    verdict = "refused: " + str(exc).split(";")[0][:70]
                rows.append((target, precision, label, accuracy["reference"]["top1"], accuracy["target"]["top1"],
                             accuracy["target"]["agreement"], verdict))
    print("| target | precision | calibration | reference top-1 | target top-1 | agreement | default build |")
    print("|---|---|---|---:|---:|---:|---|")
    for target, precision, label, ref, top1, agree, note in rows:
        cells = ["-" if v is None else f"{v:.2f}%" for v in (ref, top1, agree)]
        print(f"| {target} | {precision} | {label} | {' | '.join(cells)} | {note} |")


if __name__ == "__main__":
    main()
