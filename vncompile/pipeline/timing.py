"""Stage timing and progress: each stage is timed, logged to build.log and shown as progress."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

log = logging.getLogger("vncompile")


class StageReporter(Protocol):
    """Where stage progress goes: a rich display in the CLI, nothing in tests and workers."""

    def start(self, title: str, stages: list[str]) -> None: ...
    def stage(self, name: str) -> contextlib.AbstractContextManager[None]: ...
    def finish(self) -> None: ...


class SilentReporter:
    def start(self, title: str, stages: list[str]) -> None:
        pass

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        yield

    def finish(self) -> None:
        pass


@dataclass
class StageTimings:
    reporter: StageReporter = field(default_factory=SilentReporter)
    records: list[dict[str, Any]] = field(default_factory=list)

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        log.info("stage %s: start", name)
        with self.reporter.stage(name):
            yield
        seconds = time.perf_counter() - start
        self.records.append({"name": name, "seconds": round(seconds, 3)})
        log.info("stage %s: %.2f s", name, seconds)
