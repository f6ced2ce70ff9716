"""Exporters and optimizers print progress and warnings: they belong in build.log, not the terminal."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator

log = logging.getLogger("vncompile")


@contextlib.contextmanager
def quiet(logger: logging.Logger = log) -> Iterator[None]:
    stream = io.StringIO()
    torch_onnx_log = logging.getLogger("torch.onnx")
    level = torch_onnx_log.level
    torch_onnx_log.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(stream), contextlib.redirect_stderr(stream), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        torch_onnx_log.setLevel(level)
        for line in stream.getvalue().splitlines():
            if line.strip():
                logger.debug("onnx tools: %s", line)
