"""The Detect head on rknn int8: one concatenated output vs boxes and scores apart (issue 22, item 5).

    python benchmarks/detector_head_split.py [--platform rk3588] [--calibration-size 48] [--quant-algorithm normal]

For the committed test detector (``tests/data/detector``: VanillaNet-5 backbone, YOLO-style head, output
``[1, 4 + 3, 336]``), deploy-fused as a build fuses it: the graph as is (the head's boxes, up to 128 pixels, and
sigmoid scores, 0..1, leave in one Concat) and with the head split by ``onnxtools.detect_head.split_detect_head``
(two outputs, each quantized with its own scale), and cut where the head leaves the feature maps
(``onnxtools.detect_head.cut_host_tail``: each level's box and class maps apart, the rest run on the host).
Each is converted to rknn int8 by rknn-toolkit2 (in its own
environment, through vncompile's worker; calibrated on the set's letterboxed images), run on the toolkit's x86
simulator over the letterboxed validation set, decoded as Ultralytics val does and scored by pycocotools. ONNX
Runtime fp32 of the same graph is the reference. Prints mAP50-95 and mAP50 (percent, measured) side by side,
and how many anchors' best class score int8 rounds to exactly zero: in one output sharing the boxes' scale (a step
of about 0.5) nearly every score does; apart (a step of about 1/255) only the background's, below half a step.

The calibration images are the evaluation images (the set is 48 images): both heads see the same ones, so the
comparison is fair, though the absolute int8 figures are optimistic for unseen images.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx

from vncompile.api.options import TargetOptions
from vncompile.api.request import InputShape
from vncompile.data.calibration import calibration_samples
from vncompile.data.preprocess import Letterbox
from vncompile.onnxtools.deploy_fusion import fuse_for_deploy
from vncompile.onnxtools.detect_head import cut_host_tail, run_with_tail, split_detect_head
from vncompile.onnxtools.run import run_onnx
from vncompile.pipeline.detection_accuracy import load_detection_eval, map_of
from vncompile.targets.rknn.simulator import RknnSimulatorSession
from vncompile.targets.rknn.toolkit import RknnSettings, compile_onnx, request, write_dataset
from vncompile.toolchains import start_worker

DETECTOR = Path(__file__).parents[1] / "tests" / "data" / "detector"
SHAPE = InputShape(1, 3, 128, 128)
log = logging.getLogger("vncompile")


def _same(outputs: list[np.ndarray]) -> list[np.ndarray]:
    return outputs


def graphs(directory: Path) -> dict[str, tuple[Path, list[str], Callable]]:
    """The deploy-fused detector, concatenated, split, and cut for the host tail: each file, its output names and
    what makes a run's outputs the whole graph's (the tail on ONNX Runtime, float32, for the last)."""
    model = onnx.load(str(DETECTOR / "detector_train_form.onnx"))
    fuse_for_deploy(model)
    concatenated = directory / "concatenated.onnx"
    onnx.save(model, str(concatenated))
    device, tail = directory / "device.onnx", directory / "tail.onnx"
    cut = cut_host_tail(concatenated, device, tail)
    assert cut is not None, "the test detector's head leaves its maps through reshapes"
    names = split_detect_head(model)
    assert names is not None, "the test detector ends in the Detect Concat"
    split = directory / "split.onnx"
    onnx.save(model, str(split))
    return {"concatenated": (concatenated, ["output"], _same), "split": (split, list(names), _same),
            "host tail": (device, ["output"], run_with_tail(tail))}


def rknn_int8_run(onnx_path: Path, settings: RknnSettings, calibration: np.ndarray,
                  batches: np.ndarray) -> list[list[np.ndarray]]:
    """``onnx_path`` built to rknn int8 on ``calibration`` and run on the toolkit's simulator over ``batches``."""
    session = RknnSimulatorSession(start_worker("rknn", log))
    try:
        dataset = write_dataset(calibration, SHAPE.batch, session._scratch)
        compile_onnx(session._worker, onnx_path, settings, dataset, export=None)
        request(session._worker, "init_runtime", {"target": None})  # None: the simulator
        return [session.run(batch) for batch in batches]
    finally:
        session.close()


def zero_scores(runs: list[list[np.ndarray]]) -> float:
    """Percent of anchors whose best class score came out exactly 0 (ultralytics issue 13566's symptom)."""
    best = np.concatenate([(outputs[0][:, 4:] if len(outputs) == 1 else outputs[1]).max(axis=1).ravel()
                           for outputs in runs])
    return float(100.0 * np.mean(best == 0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--platform", default="rk3588")
    parser.add_argument("--quant-algorithm", default="normal")
    parser.add_argument("--calibration-size", type=int, default=48)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    evaluation = load_detection_eval(TargetOptions(eval_data=DETECTOR / "val", preprocess="letterbox"), SHAPE,
                                     num_classes=3)
    assert evaluation is not None
    batches = np.stack(evaluation.batches(SHAPE.batch))
    calibration = calibration_samples(DETECTOR / "val", SHAPE, args.calibration_size, preprocessing=Letterbox())
    settings = RknnSettings(args.platform, "int8", args.quant_algorithm)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for head, (path, names, whole) in graphs(Path(tmp)).items():
            reference = [whole(outputs) for outputs in run_onnx(path, batches)]
            rows.append((head, "onnxruntime fp32", map_of(evaluation, reference, names), zero_scores(reference), 0.0))
            started = time.perf_counter()
            runs = [whole(outputs) for outputs in rknn_int8_run(path, settings, calibration, batches)]
            rows.append((head, f"rknn int8 {args.platform} (simulator)", map_of(evaluation, runs, names),
                         zero_scores(runs), time.perf_counter() - started))
    print(f"test detector, {len(evaluation.dataset.paths)} images ({evaluation.dataset.objects} objects), letterboxed "
          f"to {SHAPE.height}x{SHAPE.width}; calibration: {len(calibration)} letterboxed images, "
          f"{args.quant_algorithm}; mAP measured (pycocotools), percent")
    print(f"{'head':<14}{'runtime':<36}{'mAP50-95':>10}{'mAP50':>9}{'zero best score':>17}{'seconds':>9}")
    for head, runtime, found, zeros, seconds in rows:
        print(f"{head:<14}{runtime:<36}{found['map50_95']:>10.2f}{found['map50']:>9.2f}{zeros:>16.1f}%"
              f"{seconds:>9.1f}")


if __name__ == "__main__":
    main()
