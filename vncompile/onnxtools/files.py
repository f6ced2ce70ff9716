"""Writing ONNX files.

A graph is written by a rename, never through an existing file: the build cache stores one graph under
two names as a hard link (``simplified.onnx`` and ``exported.onnx`` when nothing simplified it), and
``onnx.save_model`` opening the path for writing would change both, and with them the graph a rewrite
is checked against.
"""

from __future__ import annotations

from pathlib import Path

import onnx

from ..core.io import atomic_file


def save_onnx(model: onnx.ModelProto, path: Path) -> Path:
    """Write ``model`` to ``path`` (replacing it by a rename)."""
    with atomic_file(Path(path), force=True, what="ONNX graph") as tmp:
        onnx.save_model(model, str(tmp))
    return Path(path)
