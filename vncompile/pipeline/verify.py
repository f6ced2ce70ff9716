"""Verification: the same inputs through every stage, each output compared with one reference.

The reference is the network as trained (training form when the checkpoint has one)
in float64. Every named output of a stage is compared with the reference's on its
own, as Polygraphy compares (a 1/4-resolution feature map and a 1/32 one have very
different scales): max abs error, relative error (max abs / max |reference|), cosine
similarity and, on a classifier's logits only, top-1 agreement. A stage passes when
every output is within its precision's tolerance (``api.tolerance``, settable with
``--tolerance``); a failed output records the tolerance that would have passed it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ..api.tolerance import Tolerance
from ..core.errors import VerificationError
from ..core.host import cpu_features, cpu_name
from ..core.output_metrics import output_metrics

Outputs = list[list[np.ndarray]]  # per input batch, per network output


@dataclass(frozen=True)
class OutputError:
    name: str
    max_abs: float
    rel: float
    cosine: float
    top1_agreement: float | None  # classifier logits only
    passed: bool
    would_pass: str | None = None  # failed: the --tolerance value that would have accepted it


@dataclass(frozen=True)
class StageError:
    stage: str
    precision: str
    outputs: tuple[OutputError, ...]

    @property
    def passed(self) -> bool:
        return all(o.passed for o in self.outputs)

    @property
    def worst(self) -> OutputError:
        """The output furthest from passing: a failed one first, then the largest relative error."""
        return max(self.outputs, key=lambda o: (not o.passed, o.rel))

    def as_dict(self) -> dict[str, Any]:
        worst = self.worst
        top1 = [o.top1_agreement for o in self.outputs if o.top1_agreement is not None]
        return {"stage": self.stage, "precision": self.precision, "passed": self.passed,
                "max_abs": max(o.max_abs for o in self.outputs), "rel": worst.rel,
                "cosine": min(o.cosine for o in self.outputs), "top1_agreement": top1[0] if top1 else None,
                "outputs": [asdict(o) for o in self.outputs]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StageError:
        return cls(data["stage"], data["precision"], tuple(OutputError(**o) for o in data["outputs"]))


def compare_output(name: str, reference: list[np.ndarray], outputs: list[np.ndarray], tolerance: Tolerance,
                   classifier: bool) -> OutputError:
    """One named output over every batch."""
    shapes = {tuple(np.shape(o)) for o in outputs}, {tuple(np.shape(r)) for r in reference}
    if shapes[0] != shapes[1]:  # a target that returns another layout or size has not built the network
        got, want = (", ".join("x".join(map(str, s)) for s in sorted(side)) for side in shapes)
        raise ShapeMismatch(f"output '{name}' has shape {got}, the reference {want}")
    metrics = output_metrics(reference, outputs, classifier)
    finite, rel, cosine = metrics["finite"], metrics["rel"], metrics["cosine"]
    passed = finite and tolerance.accepts(rel, cosine)
    would_pass = None if passed or not finite else tolerance.that_passes(rel, cosine)
    return OutputError(name, metrics["max_abs"], rel, cosine, metrics["top1_agreement"], passed, would_pass)


def compare(stage: str, precision: str, reference: Outputs, outputs: Outputs, names: list[str],
            tolerance: Tolerance, classifier: bool) -> StageError:
    """Every output of a stage against the reference; ``classifier``: the single output is logits."""
    if len(outputs[0]) != len(names) or len(reference[0]) != len(names):
        raise VerificationError(f"verification failed at '{stage}': {len(outputs[0])} outputs, the reference "
                                f"{len(reference[0])} ({', '.join(names)})")
    try:
        return StageError(stage, precision, tuple(
            compare_output(name, [b[i] for b in reference], [b[i] for b in outputs], tolerance,
                           classifier and len(names) == 1)
            for i, name in enumerate(names)))
    except ShapeMismatch as exc:
        raise VerificationError(f"verification failed at '{stage}': {exc}") from None


class ShapeMismatch(ValueError):
    """An output whose shape is not the reference's (``compare`` names the stage)."""


@dataclass(frozen=True)
class Verification:
    passed: bool
    tolerance: dict[str, dict[str, float]]
    stages: list[StageError]

    def as_dict(self) -> dict[str, object]:
        # The CPU the stages ran on: an int8 or reduced-precision result depends on its instruction set.
        host = {"cpu": cpu_name(), "cpu_features": cpu_features()}
        return {"passed": self.passed, "tolerance": self.tolerance, "stages": [s.as_dict() for s in self.stages],
                "host": host}

    def failure_line(self) -> str:
        """One line naming the first failed stage and output, the tolerance, and the tolerance that would
        have passed every failed output of that precision."""
        stage = next(s for s in self.stages if not s.passed)
        output = stage.worst
        what = f"'{stage.stage}'" + (f" output '{output.name}'" if len(stage.outputs) > 1 else "")
        tolerance = Tolerance(**self.tolerance[stage.precision])
        failed = [o for s in self.stages if s.precision == stage.precision for o in s.outputs if not o.passed]
        if all(o.would_pass for o in failed):
            passes = tolerance.that_passes(max(o.rel for o in failed), min(o.cosine for o in failed))
            fix = f"--tolerance {stage.precision}={passes} would pass it"
        else:
            fix = "it has non-finite values"
        return (f"verification failed at {what} ({stage.precision}): rel error {output.rel:.3g}, cosine "
                f"{output.cosine:.5f}, needs {tolerance.describe()}; {fix}, or --no-verify keeps the artifact anyway")


def summarize(stages: list[StageError], tolerances: dict[str, Tolerance]) -> Verification:
    precisions = sorted({s.precision for s in stages})
    return Verification(passed=all(s.passed for s in stages),
                        tolerance={p: tolerances[p].as_dict() for p in precisions}, stages=stages)
