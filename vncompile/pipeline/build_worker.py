"""A build worker process: ``python -m vncompile.pipeline.build_worker`` (see ``workers.BuildWorker``).

Reads one JSON build request per line on stdin and answers one JSON line: the
manifest and the build's cache directory, or the one-line error. Everything else a
library prints goes to stderr, so the reply channel carries only replies.
"""

from __future__ import annotations

import json
import os
import sys

from ..errors import VncompileError
from .build import cached_build
from .request import BuildRequest


def main() -> None:
    replies = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # stray prints, including native libraries', land on stderr
    sys.stdout = sys.stderr
    for line in sys.stdin:
        try:
            manifest, directory, _ = cached_build(BuildRequest.from_json(json.loads(line)))
            reply = {"manifest": manifest, "directory": str(directory)}
        except VncompileError as exc:
            reply = {"error": f"build failed: {exc}"}
        except Exception as exc:  # a bug in one cell is that cell's failure, not the worker's end
            reply = {"error": f"build failed: internal error: {type(exc).__name__}: {exc}"}
        replies.write(json.dumps(reply) + "\n")


if __name__ == "__main__":
    main()
