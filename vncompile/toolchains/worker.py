"""The parent side of the worker protocol (see ``workers/vncompile_worker_protocol.py``).

A ``Worker`` runs a worker process (a toolchain environment's python running a
worker script, or vncompile's own build worker), sends it JSON requests and waits
for the replies with a timeout. Everything the toolchain
prints goes, line by line, into the log (a build's ``build.log``) and comes back
with the reply it belongs to, for the caller to parse. Each way a worker can fail
is one line: not installed, crashed (exit code or signal, and its last words),
timed out (it is stopped), or answered something that is not a reply.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import re
import shutil
import signal
import subprocess
import threading
import weakref
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.errors import TargetUnavailable, VncompileError
from .canonical import canonical_command, canonical_environ, canonical_scratch
from .installed import InstalledToolchain, locate
from .spec import get_spec

END_OF_OUTPUT = "\x1evncompile-worker end of request "  # the protocol module's marker, without the id
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
OUTPUT_SYNC_SECONDS = 10.0  # after a reply, how long its output may still be on the way
STOP_SECONDS = 10.0


def describe_exit(code: int) -> str:
    """How a process ended, in words (a signal by name)."""
    if code < 0:
        name = signal.Signals(-code).name
        return f"killed by {name}" + (" (out of memory?)" if name == "SIGKILL" else "")
    return f"exited with status {code}"


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:300] if lines else "no output"


class ToolchainMissing(TargetUnavailable):
    """The toolchain's environment is not installed (or is stale): the message names the install command."""


class ToolchainError(VncompileError):
    """A toolchain worker crashed, timed out, or sent something that is not a reply."""


class WorkerCrashed(ToolchainError):
    pass


class WorkerTimeout(ToolchainError):
    pass


class MalformedReply(ToolchainError):
    pass


class WorkerRequestFailed(VncompileError):
    """The worker is fine, but the toolchain refused or failed the request (e.g. a compile error)."""

    def __init__(self, name: str, op: str, error: str, error_type: str, output: list[str]) -> None:
        super().__init__(f"the {name} toolchain failed to {op}: {error}")
        self.op, self.error, self.error_type, self.output = op, error, error_type, output


@dataclass(frozen=True)
class WorkerReply:
    result: dict[str, Any]
    output: list[str]  # what the toolchain printed while answering, ANSI colours removed


def missing_message(installed: InstalledToolchain) -> str:
    if installed.stale:
        return (f"the {installed.name} toolchain in {installed.path} was installed for another vncompile version; "
                f"run `{installed.fix}`")
    return f"the {installed.name} toolchain is not installed (looked in {installed.path}); run `{installed.fix}`"


def start_worker(name: str, log: logging.Logger, *, root: Path | None = None, inherit: tuple[str, ...] = (),
                 start_timeout: float = 180.0) -> Worker:
    """A started worker for the installed toolchain ``name``, or ``ToolchainMissing``.

    The worker runs in a directory of its own, ``worker.scratch`` (removed when it is closed), from
    the same paths and environment for every user (``canonical``): the files the caller hands the
    toolchain belong there. ``inherit`` names variables of the user's environment the worker needs
    beyond the canonical one (e.g. ``PATH`` to find a board's adb; nothing it writes is an artifact).
    """
    installed = locate(name, root)
    if not installed.installed or installed.python is None:
        raise ToolchainMissing(missing_message(installed))
    spec = get_spec(name)
    scratch = canonical_scratch(name)
    try:
        command = canonical_command(scratch, installed.python, spec)
        env = {**canonical_environ(scratch), **{k: os.environ[k] for k in inherit if k in os.environ}}
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    worker = Worker(name, command, log, env=env, cwd=scratch, scratch=scratch, label=f"the {name} toolchain worker")
    try:
        worker.start(start_timeout)
    except BaseException:
        worker.close()
        raise
    return worker


class Worker:
    """A persistent worker process speaking the protocol: ``request(op, args) -> WorkerReply``."""

    def __init__(self, name: str, command: list[str], log: logging.Logger, *, env: dict[str, str] | None = None,
                 cwd: Path | None = None, scratch: Path | None = None, label: str | None = None) -> None:
        self.name, self.command, self.env, self.cwd = name, command, env, cwd
        self.scratch = scratch  # the worker's own directory: removed when it is closed
        self.label = label or f"the {name} worker"  # how messages name it
        self._log = log
        self._proc: subprocess.Popen[str] | None = None
        self._replies: queue.Queue[str | None] = queue.Queue()
        self._output: list[str] = []
        self._tail: deque[str] = deque(maxlen=20)
        self._ended: set[str] = set()
        self._stderr_closed = False
        self._condition = threading.Condition()
        self._next_id = 0
        self.facts: dict[str, Any] = {}

    # ------------------------------------------------------------------ lifecycle

    def start(self, timeout: float = 180.0) -> dict[str, Any]:
        """Start the worker and wait for its ready line; returns what it said about itself."""
        try:
            self._proc = subprocess.Popen(self.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, text=True, encoding="utf-8", errors="replace",
                                          bufsize=1, cwd=self.cwd, env=self.env)
        except OSError as exc:
            raise WorkerCrashed(f"{self.label} could not start: {exc}") from None
        # ``close`` ends the worker; this is the safety net for a caller that never called it
        self._finalizer = weakref.finalize(self, _release, self._proc, self.scratch)
        for stream, read in ((self._proc.stdout, self._read_replies), (self._proc.stderr, self._read_output)):
            threading.Thread(target=read, args=(stream,), daemon=True, name=f"{self.name}-worker-io").start()
        ready = self._await_line("start", timeout)
        if not ready.get("ready"):
            self.close()
            raise WorkerCrashed(f"{self.label} could not start: "
                                f"{ready.get('error') or 'it did not say it was ready'}")
        self.facts = ready
        return ready

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def close(self) -> None:
        """Ask the worker to exit (stop it if it does not) and remove its directory."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            try:
                assert proc.stdin is not None
                proc.stdin.write('{"op": "exit"}\n')
                proc.stdin.close()
            except OSError:
                pass
            with contextlib.suppress(subprocess.TimeoutExpired):  # then it is stopped below
                proc.wait(STOP_SECONDS)
        if proc is None:
            _release(None, self.scratch)
        else:
            self._finalizer()

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------ requests

    def request(self, op: str, args: dict[str, Any] | None = None, timeout: float = 600.0) -> WorkerReply:
        """Send one request and wait up to ``timeout`` seconds for its reply."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            raise self._crashed(op)
        self._next_id += 1
        ident = str(self._next_id)
        with self._condition:
            self._output = []
        try:
            assert proc.stdin is not None
            proc.stdin.write(json.dumps({"id": ident, "op": op, "args": args or {}}) + "\n")
            proc.stdin.flush()
        except OSError:
            raise self._crashed(op) from None
        reply = self._await_line(op, timeout)
        if reply.get("id") != ident:
            _stop(proc)
            raise MalformedReply(f"{self.label} answered request {reply.get('id')!r} "
                                 f"when asked '{op}' (request {ident})")
        output = self._output_of(ident)
        if not reply["ok"]:
            raise WorkerRequestFailed(self.name, op, str(reply.get("error") or "no reason given"),
                                      str(reply.get("type") or ""), output)
        result = reply.get("result")
        return WorkerReply(result if isinstance(result, dict) else {}, output)

    def _await_line(self, op: str, timeout: float) -> dict[str, Any]:
        assert self._proc is not None
        try:
            line = self._replies.get(timeout=timeout)
        except queue.Empty:
            _stop(self._proc)
            what = "start" if op == "start" else f"answer '{op}'"
            raise WorkerTimeout(f"{self.label} did not {what} within {timeout:g} s; "
                                "it was stopped") from None
        if line is None:
            raise self._crashed(op)
        try:
            reply = json.loads(line)
        except ValueError:
            reply = None
        if not isinstance(reply, dict) or not isinstance(reply.get("ok"), bool):
            _stop(self._proc)
            raise MalformedReply(f"{self.label} sent a malformed reply to '{op}': "
                                 f"{line.strip()[:80]!r}")
        return reply

    def _crashed(self, op: str) -> WorkerCrashed:
        assert self._proc is not None
        try:
            code = self._proc.wait(STOP_SECONDS)
        except subprocess.TimeoutExpired:
            _stop(self._proc)
            code = self._proc.wait()
        self._wait_for_output(lambda: self._stderr_closed)
        when = "while starting" if op == "start" else f"while answering '{op}'"
        last = f" (last output: {self._tail[-1][:160]})" if self._tail else ""
        return WorkerCrashed(f"{self.label} {describe_exit(code)} {when}{last}")

    # ------------------------------------------------------------------ the two pipes

    def _read_replies(self, stream: Any) -> None:
        for line in stream:
            self._replies.put(line)
        self._replies.put(None)

    def _read_output(self, stream: Any) -> None:
        for raw in stream:
            line = ANSI_ESCAPE.sub("", raw).rstrip().split("\r")[-1]  # a progress bar: its final state
            with self._condition:
                if line.startswith(END_OF_OUTPUT):
                    self._ended.add(line[len(END_OF_OUTPUT):].strip())
                    self._condition.notify_all()
                    continue
                self._output.append(line)
                if line.strip():
                    self._tail.append(line.strip())
            self._log.debug("%s: %s", self.name, line)
        with self._condition:
            self._stderr_closed = True
            self._condition.notify_all()

    def _output_of(self, ident: str) -> list[str]:
        """The request's output: everything printed before its end-of-output line."""
        self._wait_for_output(lambda: ident in self._ended or self._stderr_closed)
        with self._condition:
            self._ended.discard(ident)
            return list(self._output)

    def _wait_for_output(self, done: Any) -> None:
        with self._condition:
            self._condition.wait_for(done, timeout=OUTPUT_SYNC_SECONDS)


def _release(proc: subprocess.Popen[str] | None, scratch: Path | None) -> None:
    if proc is not None:
        _stop(proc)
    if scratch is not None:
        shutil.rmtree(scratch, ignore_errors=True)


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):  # a process that survives SIGKILL: give up
            proc.wait(STOP_SECONDS)
