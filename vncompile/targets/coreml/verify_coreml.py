"""Verify a vncompile Core ML bundle on a Mac: run its seeded inputs through ``model.mlpackage`` with coremltools
and compare every output with the float64 reference vncompile computed, as vncompile's own verification does.

vncompile writes this file into every coreml bundle as ``verify_coreml.py``, beside ``output_metrics.py`` (the
metrics: vncompile's own module, byte for byte), ``verify_data.npz`` (the inputs and the reference's outputs) and
``manifest.json`` (input and output names, the tolerance, the compute units). It needs macOS, coremltools and
numpy, never vncompile:

    python verify_coreml.py [--compute-units ALL|CPU_ONLY|CPU_AND_GPU|CPU_AND_NE] [--json]

Exit status: 0 when every output is within the tolerance, 1 when one is not, 2 when it cannot run here.
The metrics, per output over every judged batch: max abs error, relative error (max abs / max |reference|),
cosine similarity and, for a classifier's logits, top-1 agreement with the reference.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
from output_metrics import output_metrics  # vncompile's own, carried beside this file

HERE = Path(__file__).resolve().parent
DATA, PACKAGE = "verify_data.npz", "model.mlpackage"


def compare(reference: list[np.ndarray], outputs: list[np.ndarray], tolerance: dict[str, float],
            classifier: bool) -> dict[str, Any]:
    """One output over every batch: vncompile's verification metrics (``output_metrics.py``) and verdict."""
    metrics = output_metrics(reference, outputs, classifier)
    finite = metrics.pop("finite")
    passed = finite and ("rel" not in tolerance or metrics["rel"] <= tolerance["rel"]) and (
        "cosine" not in tolerance or metrics["cosine"] >= tolerance["cosine"])
    return {**metrics, "passed": passed}


def load_data(directory: Path = HERE) -> tuple[np.ndarray, list[list[np.ndarray]]]:
    with np.load(directory / DATA) as npz:
        inputs = npz["inputs"]
        outputs = [[npz[f"expected/{b}/{o}"] for o in range(int(npz["outputs"]))] for b in range(len(inputs))]
    return inputs, outputs


def verify(directory: Path = HERE, compute_units: str | None = None) -> dict[str, Any]:
    import coremltools as ct

    manifest = json.loads((directory / "manifest.json").read_text())
    facts = manifest["target"]["facts"]
    check = facts["verification_bundle"]
    units = compute_units or facts["compute_units"]
    model = ct.models.MLModel(str(directory / PACKAGE), compute_units=getattr(ct.ComputeUnit, units))
    inputs, expected = load_data(directory)
    judged = range(check["judged_from"], len(inputs))
    got = []
    for b in judged:
        prediction = model.predict({facts["input"]["name"]: inputs[b].astype(np.float32)})
        got.append([np.asarray(prediction[name]) for name in check["names"]])
    outputs = []
    for i, name in enumerate(check["names"]):
        reference = [expected[b][i] for b in judged]
        produced = [g[i] for g in got]
        if {tuple(np.shape(p)) for p in produced} != {tuple(np.shape(r)) for r in reference}:
            raise SystemExit(f"error: output '{name}' has shape {np.shape(produced[0])}, the reference "
                             f"{np.shape(reference[0])}")
        outputs.append({"name": name, **compare(reference, produced, check["tolerance"], check["classifier"])})
    return {"stage": f"coreml {units}", "precision": manifest["target"]["precision"],
            "tolerance": check["tolerance"], "passed": all(o["passed"] for o in outputs), "outputs": outputs}


def print_table(result: dict[str, Any]) -> None:
    print("verification against the float64 reference")
    header = ("stage", "output", "precision", "max abs", "rel", "cosine", "top-1 agree", "")
    rows = [header]
    for i, o in enumerate(result["outputs"]):
        top1 = "-" if o["top1_agreement"] is None else f"{o['top1_agreement']:.0%}"
        rows.append((result["stage"] if i == 0 else "", o["name"], result["precision"], f"{o['max_abs']:.2e}",
                     f"{o['rel']:.2e}", f"{o['cosine']:.6f}", top1, "ok" if o["passed"] else "FAIL"))
    widths = [max(len(row[c]) for row in rows) for c in range(len(header))]
    for row in rows:
        cells = zip(row, widths, strict=True)
        print("  ".join(cell.ljust(w) if c < 3 else cell.rjust(w) for c, (cell, w) in enumerate(cells)))
    tolerance = ", ".join(f"{k} {v:g}" for k, v in result["tolerance"].items())
    print(f"tolerance: {result['precision']} {tolerance}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Verify this Core ML bundle against vncompile's float64 reference.")
    parser.add_argument("--compute-units", choices=("ALL", "CPU_ONLY", "CPU_AND_GPU", "CPU_AND_NE"),
                        help="override the compute units the manifest records")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    if sys.platform != "darwin":
        print(f"error: Core ML runs only on macOS (this is {sys.platform}); run verify_coreml.py on a Mac with "
              "coremltools", file=sys.stderr)
        return 2
    result = verify(HERE, args.compute_units)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_table(result)
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
