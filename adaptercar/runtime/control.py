"""The control channel between the supervisor and its workers: JSON lines.

Supervisor → worker on the worker's stdin (`{"cmd": "reload"}`, `{"cmd": "drain"}`);
worker → supervisor on fd 3 (`{"type": "state", ...}`). Lines, not a framework: both ends are
ours, and a human can read them with strace when something is wrong.
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
    """Worker side: writes reports to fd 3 (blocking writes of small lines are fine)."""

    def __init__(self, fd: int = REPORT_FD) -> None:
        self.fd = fd
        self.ok = True

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
    """Worker side: read supervisor commands from stdin; EOF means the supervisor died."""
    return stdio.StandardIO(_CommandProtocol(on_command, on_eof))
