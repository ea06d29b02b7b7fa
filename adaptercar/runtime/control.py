"""The control channel between the supervisor and its workers: JSON lines.

Supervisor → worker on the worker's stdin (`{"cmd": "reload"}`, `{"cmd": "drain"}`,
`{"cmd": "restart", "backend": NAME}`); worker → supervisor on fd 3 (`{"type": "state", ...}`,
`{"type": "restart", "backend": NAME}`). Lines, not a framework: both ends are ours, and a
human can read them with strace when something is wrong.

Restarting a backend (`companion.config` `on_change: {restart: NAME}`) goes through here
because the pools live in other processes: the companion worker asks the supervisor, which
tells every worker; in each, the parts that own pools registered a handler with `on_restart`.
In --single-process mode everything is in one process and the handlers run at once.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

from twisted.internet import stdio
from twisted.protocols.basic import LineOnlyReceiver

REPORT_FD = 3
MAX_LINE = 1 << 20
_restart_handlers: list[Callable[[str], None]] = []


def on_restart(handler: Callable[[str], None]) -> Callable[[], None]:
    """Register `handler(backend)` for restart commands; returns the function that removes it."""
    _restart_handlers.append(handler)

    def remove() -> None:
        if handler in _restart_handlers:
            _restart_handlers.remove(handler)

    return remove


def restart_here(backend: str) -> None:
    """Restart `backend` in this process: every registered owner restarts its pool of that name."""
    for handler in list(_restart_handlers):
        handler(backend)


def request_restart(backend: str) -> None:
    """Restart `backend` wherever it runs: via the supervisor from a worker (a process that has
    a Reporter), else right here (--single-process)."""
    if Reporter.current is not None:
        Reporter.current.send({"type": "restart", "backend": backend})
    else:
        restart_here(backend)


def encode(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), default=str).encode() + b"\n"


class LineSplitter:
    """Splits a byte stream into JSON objects; a malformed line is skipped, never fatal."""

    def __init__(self, on_message: Callable[[dict[str, Any]], None]) -> None:
        self.buf = b""
        self.on_message = on_message

    def feed(self, data: bytes) -> None:
        self.buf += data
        if len(self.buf) > MAX_LINE and b"\n" not in self.buf:
            self.buf = b""
            return
        *lines, self.buf = self.buf.split(b"\n")
        for line in lines:
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if isinstance(obj, dict):
                self.on_message(obj)


class Reporter:
    """Worker side: writes reports to fd 3 (blocking writes of small lines are fine).
    Only a worker makes one: `Reporter.current` is how other parts know they are in a worker."""

    current: Reporter | None = None

    def __init__(self, fd: int = REPORT_FD) -> None:
        self.fd = fd
        self.ok = True
        Reporter.current = self

    def send(self, obj: dict[str, Any]) -> None:
        if not self.ok:
            return
        try:
            os.write(self.fd, encode(obj))
        except OSError:
            self.ok = False  # supervisor gone: the worker will get SIGTERM or EOF on stdin


class _CommandProtocol(LineOnlyReceiver):
    delimiter = b"\n"
    MAX_LENGTH = MAX_LINE

    def __init__(self, on_command: Callable[[dict[str, Any]], None], on_eof: Callable[[], None]) -> None:
        self.on_command = on_command
        self.on_eof = on_eof

    def lineReceived(self, line: bytes) -> None:
        try:
            obj = json.loads(line)
        except ValueError:
            return
        if isinstance(obj, dict):
            self.on_command(obj)

    def connectionLost(self, reason: Any = None) -> None:
        self.on_eof()


def listen_commands(on_command: Callable[[dict[str, Any]], None], on_eof: Callable[[], None]) -> Any:
    """Worker side: read supervisor commands from stdin; EOF means the supervisor died.
    `restart` is answered here (by the registered owners of pools), the rest by `on_command`."""

    def dispatch(cmd: dict[str, Any]) -> None:
        if cmd.get("cmd") == "restart":
            if isinstance(cmd.get("backend"), str):
                restart_here(cmd["backend"])
        else:
            on_command(cmd)

    return stdio.StandardIO(_CommandProtocol(dispatch, on_eof))
