"""The worker side of vncompile's toolchain protocol. Standard library only.

A worker script runs in a vendor toolchain's own environment, so it can import
neither vncompile nor its packages. It calls ``serve(start)``:

- the real stdout becomes the reply channel; file descriptor 1 is pointed at stderr,
  so whatever the SDK prints (Python or C) cannot corrupt a reply and ends up in
  the build log instead;
- ``start()`` then imports the SDK and returns ``(handlers, facts)``; the first line
  on the channel says the worker is ready (with the facts), or why it is not;
- then one JSON request per line on stdin, ``{"id", "op", "args"}``, one JSON reply
  per line, ``{"id", "ok", "result"}`` or ``{"id", "ok": false, "error", "type"}``;
- after each request every output buffer is flushed and an end-of-output line is
  written to stderr, so the parent knows which output belongs to which request;
- stdin closing (or ``{"op": "exit"}``) ends the worker.
"""

import contextlib
import ctypes
import json
import os
import sys
import traceback

END_OF_OUTPUT = "\x1evncompile-worker end of request {id}"


def serve(start):
    channel = _reply_channel()
    try:
        handlers, facts = start()
    except Exception as exc:
        traceback.print_exc()
        _send(channel, {"ok": False, "ready": False, "error": one_line(exc), "type": type(exc).__name__})
        sys.exit(1)
    _send(channel, dict(facts, ok=True, ready=True, pid=os.getpid()))
    for line in sys.stdin:
        if not line.strip():
            continue
        request = _parse(line)
        if request.get("op") == "exit":
            break
        reply = _handle(handlers, request)
        _flush_output()
        sys.stderr.write(END_OF_OUTPUT.format(id=request.get("id")) + "\n")
        sys.stderr.flush()
        _send(channel, reply)


def one_line(exc):
    """The last non-empty line of an exception's message (SDKs wrap whole tracebacks in theirs)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


def _reply_channel():
    sys.stdout.flush()
    channel = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    return channel


def _parse(line):
    try:
        request = json.loads(line)
    except ValueError:
        request = None
    return request if isinstance(request, dict) else {"op": None, "bad_request": line[:80]}


def _handle(handlers, request):
    ident, op = request.get("id"), request.get("op")
    try:
        if op not in handlers:
            raise KeyError(f"unknown request {op!r}; this worker does {', '.join(sorted(handlers))}")
        return {"id": ident, "ok": True, "result": handlers[op](request.get("args") or {})}
    except Exception as exc:  # every failure becomes a reply; the traceback goes to the log
        traceback.print_exc()
        return {"id": ident, "ok": False, "error": one_line(exc), "type": type(exc).__name__}


def _flush_output():
    sys.stdout.flush()
    sys.stderr.flush()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).fflush(None)  # C stdio buffers (a vendor library's printf) too


def _send(channel, document):
    channel.write(json.dumps(document, default=str) + "\n")
    channel.flush()
