"""Verification: the same seeded inputs through every stage, compared with one reference.

The reference is the network as trained (training form when the checkpoint has one)
in float64. Each stage's outputs are compared with it: max abs error, relative error
(max abs / max |reference|), cosine similarity and top-1 agreement. A stage passes
when it is within the tolerance of its precision.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Tolerance:
    rel: float | None = None  # max abs error / max |reference|
    cosine: float | None = None  # minimum cosine similarity

    def accepts(self, rel: float, cosine: float) -> bool:
        if self.rel is not None and not rel <= self.rel:
            return False
        return not (self.cosine is not None and not cosine >= self.cosine)

    def as_dict(self) -> dict[str, float]:
        return {k: v for k, v in asdict(self).items() if v is not None}


TOLERANCES: dict[str, Tolerance] = {
    "fp32": Tolerance(rel=1e-4),
    "fp16": Tolerance(rel=2e-2),
    "bf16": Tolerance(rel=2e-2),
    "int8": Tolerance(cosine=0.99),
}


@dataclass(frozen=True)
class StageError:
    stage: str
    precision: str
    max_abs: float
    rel: float
    cosine: float
    top1_agreement: float | None  # None for feature outputs (no classes)
    passed: bool

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


Outputs = list[list[np.ndarray]]  # per input batch, per network output


def _flatten(outputs: Outputs) -> np.ndarray:
    return np.concatenate([np.asarray(o, dtype=np.float64).ravel() for batch in outputs for o in batch])


def _top1(outputs: Outputs) -> np.ndarray:
    return np.concatenate([np.argmax(batch[0].reshape(batch[0].shape[0], -1), axis=1) for batch in outputs])


def compare(stage: str, precision: str, reference: Outputs, outputs: Outputs, classifier: bool) -> StageError:
    ref, out = _flatten(reference), _flatten(outputs)
    if ref.shape != out.shape:
        raise ValueError(f"{stage}: output shape differs from the reference ({out.shape} vs {ref.shape})")
    max_abs = float(np.max(np.abs(out - ref))) if ref.size else 0.0
    scale = float(np.max(np.abs(ref))) or 1.0
    denom = float(np.linalg.norm(ref) * np.linalg.norm(out))
    cosine = float(np.dot(ref, out) / denom) if denom else (1.0 if max_abs == 0 else 0.0)
    top1 = float(np.mean(_top1(reference) == _top1(outputs))) if classifier else None
    rel = max_abs / scale
    passed = bool(np.all(np.isfinite(out))) and TOLERANCES[precision].accepts(rel, cosine)
    return StageError(stage, precision, max_abs, rel, cosine, top1, passed)


@dataclass(frozen=True)
class Verification:
    passed: bool
    tolerance: dict[str, dict[str, float]]
    stages: list[StageError]

    def as_dict(self) -> dict[str, object]:
        return {
            "passed": self.passed,
            "tolerance": self.tolerance,
            "stages": [s.as_dict() for s in self.stages],
        }


def summarize(stages: list[StageError]) -> Verification:
    precisions = sorted({s.precision for s in stages})
    return Verification(
        passed=all(s.passed for s in stages),
        tolerance={p: TOLERANCES[p].as_dict() for p in precisions},
        stages=stages,
    )
