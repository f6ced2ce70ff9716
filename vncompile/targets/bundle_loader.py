"""The bundle's loading code: ``load_model.py``, this package's ``load_model`` module copied byte for byte."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from ..api.target import Artifact

LOADER = "load_model.py"


def loader_artifact(build_dir: Path) -> Artifact:
    """Write the standalone loader into the bundle (the module's own bytes, so identical builds stay identical)."""
    (build_dir / LOADER).write_bytes(files(__package__).joinpath(LOADER).read_bytes())
    return Artifact(LOADER, "loader")
