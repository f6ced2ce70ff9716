"""How one output compares with the reference: the numbers verification judges. numpy only.

vncompile's verification (``pipeline.verify``) computes them here, and a bundle that verifies on the device
(coreml's ``verify_coreml.py``) carries this file byte for byte as ``output_metrics.py``, so that the device's
table is computed as vncompile's is.
"""

from __future__ import annotations

import numpy as np


def top1(batches: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([np.argmax(b.reshape(b.shape[0], -1), axis=1) for b in batches])


def output_metrics(reference: list[np.ndarray], outputs: list[np.ndarray], classifier: bool) -> dict[str, object]:
    """One output over every batch: ``finite``, ``max_abs``, ``rel`` (max abs error / max |reference|),
    ``cosine`` and, for a classifier's logits, ``top1_agreement`` (else None)."""
    ref = np.concatenate([np.asarray(r, dtype=np.float64).ravel() for r in reference])
    out = np.concatenate([np.asarray(o, dtype=np.float64).ravel() for o in outputs])
    max_abs = float(np.max(np.abs(out - ref))) if ref.size else 0.0
    scale = float(np.max(np.abs(ref))) or 1.0
    denom = float(np.linalg.norm(ref) * np.linalg.norm(out))
    return {"finite": bool(np.all(np.isfinite(out))), "max_abs": max_abs, "rel": max_abs / scale,
            "cosine": float(np.dot(ref, out) / denom) if denom else (1.0 if max_abs == 0 else 0.0),
            "top1_agreement": float(np.mean(top1(reference) == top1(outputs))) if classifier else None}
