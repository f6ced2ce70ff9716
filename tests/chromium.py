"""Headless Chromium driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``): stdlib only.

The browser reads commands from its file descriptor 3 and writes replies and events to 4, each
message JSON ended by a NUL byte. ``load`` opens a page in a fresh tab and returns what a test
checks: the console's errors, every URL the page requested, the rendered DOM and a screenshot.
Host names resolve to nothing, so a page that tries to reach outside fails here instead of fetching.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from typing import Any

TIMEOUT_S = 60.0  # a cold start on a busy two-core machine takes seconds, not a minute


def executable() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@dataclass
class Page:
    errors: list[str]  # console errors, uncaught exceptions and the browser's error log entries (CSP violations)
    requests: list[str]  # every URL the page asked for, the page's own first
    dom: str  # the rendered document, as the browser holds it after loading
    screenshot: bytes  # PNG of the whole page


class Chromium:
    def __init__(self, width: int = 1280, height: int = 900) -> None:
        path = executable()
        if path is None:
            raise FileNotFoundError("chromium is not installed")
        self._size = (width, height)
        self._profile = tempfile.TemporaryDirectory(prefix="vncompile-chromium-")
        commands_read, self._commands = os.pipe()
        self._replies, replies_write = os.pipe()

        def onto_3_and_4() -> None:  # in the child, before exec: the descriptors the browser talks on
            os.dup2(commands_read, 3)
            os.dup2(replies_write, 4)

        self._process = subprocess.Popen(
            [path, "--headless", "--remote-debugging-pipe", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--no-default-browser-check", "--disable-extensions", "--disable-background-networking",
             "--host-resolver-rules=MAP * ~NOTFOUND", f"--user-data-dir={self._profile.name}", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=onto_3_and_4, pass_fds=(3, 4))
        os.close(commands_read)
        os.close(replies_write)
        self._buffer = b""
        self._next_id = 0
        self._events: list[dict[str, Any]] = []

    def __enter__(self) -> Chromium:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with contextlib.suppress(OSError, RuntimeError, TimeoutError):  # already gone: nothing to close
            self._send("Browser.close")
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        os.close(self._commands)
        os.close(self._replies)
        self._profile.cleanup()

    def _read_message(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._replies], [], [], left)[0]:
                raise TimeoutError("chromium did not answer in time")
            chunk = os.read(self._replies, 1 << 16)
            if not chunk:
                raise RuntimeError(f"chromium closed its pipe (exit {self._process.poll()})")
            self._buffer += chunk
        message, _, self._buffer = self._buffer.partition(b"\0")
        return json.loads(message)

    def _send(self, method: str, params: dict[str, Any] | None = None, session: str | None = None) -> dict[str, Any]:
        """One command; its result. Events that arrive meanwhile are kept for ``_wait``."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        os.write(self._commands, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + TIMEOUT_S
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self._events.append(reply)

    def _wait(self, method: str, session: str) -> None:
        deadline = time.monotonic() + TIMEOUT_S
        while not any(e.get("method") == method and e.get("sessionId") == session for e in self._events):
            self._events.append(self._read_message(deadline))

    def load(self, url: str) -> Page:
        """``url`` in a fresh tab, once loaded: its errors, its requests, its DOM and a screenshot of all of it."""
        target = self._send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self._send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self._send(f"{domain}.enable", session=session)
        width, height = self._size
        self._send("Emulation.setDeviceMetricsOverride",
                   {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}, session)
        self._send("Page.navigate", {"url": url}, session)
        self._wait("Page.loadEventFired", session)
        dom = self._send("Runtime.evaluate", {"expression": "document.documentElement.outerHTML",
                                              "returnByValue": True}, session)["result"]["value"]
        content = self._send("Page.getLayoutMetrics", session=session)["cssContentSize"]
        clip = {"x": 0, "y": 0, "width": content["width"], "height": content["height"], "scale": 1}
        shot = self._send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True, "clip": clip},
                          session)
        self._send("Target.closeTarget", {"targetId": target})
        events = [e for e in self._events if e.get("sessionId") == session]
        return Page(errors=_errors(events), requests=[e["params"]["request"]["url"] for e in events
                                                      if e.get("method") == "Network.requestWillBeSent"],
                    dom=dom, screenshot=base64.b64decode(shot["data"]))


def _errors(events: list[dict[str, Any]]) -> list[str]:
    found = []
    for event in events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            found.append("console: " + " ".join(str(a.get("value", a.get("description"))) for a in params["args"]))
        elif method == "Runtime.exceptionThrown":
            found.append("exception: " + params["exceptionDetails"].get("text", ""))
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
            found.append(f"log ({params['entry']['source']}): {params['entry']['text']}")
    return found
