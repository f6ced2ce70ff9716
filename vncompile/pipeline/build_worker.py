"""The build worker process: ``python -m vncompile.pipeline.build_worker`` (see ``workers.BuildWorker``).

Speaks the worker protocol (the toolchains' own, ``vncompile_worker_protocol``): one
``build`` request per cell, answered with the manifest and the build's cache
directory, or the one-line error. Everything a library prints goes to the log side.
"""

from __future__ import annotations

from typing import Any

from .. import __version__
from ..errors import VncompileError
from ..toolchains.workers.vncompile_worker_protocol import serve


def start() -> tuple[dict[str, Any], dict[str, Any]]:
    from .build import cached_build
    from .request import BuildRequest

    def build(args: dict[str, Any]) -> dict[str, Any]:
        try:
            manifest, directory, _ = cached_build(BuildRequest.from_json(args))
        except VncompileError:
            raise
        except Exception as exc:  # a bug in one cell is that cell's failure, named as a bug
            raise RuntimeError(f"internal error: {type(exc).__name__}: {exc}") from exc
        return {"manifest": manifest, "directory": str(directory)}

    return {"build": build}, {"vncompile": __version__}


if __name__ == "__main__":
    serve(start)
