"""JSON-lines logging to stdout: one object per line, so the platform's collector needs one parser.

Deliberately tiny: the access log is on the hot path, so a line is one dict and one
`json.dumps`, with the constant fields (log.fields, hostname, worker role) merged once.
"""

from __future__ import annotations

import json
import socket
import sys
import time
from typing import Any, TextIO

LEVELS = {"debug": 10, "info": 20, "warning": 30, "warn": 30, "error": 40}
INFO = LEVELS["info"]


class JsonLogger:
    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stdout
        self.level = 20
        self.constant: dict[str, Any] = {"hostname": socket.gethostname()}

    def configure(self, level: str = "info", fields: dict[str, Any] | None = None, **extra: Any) -> None:
        self.level = LEVELS.get(level.lower(), 20)
        self.constant = {"hostname": socket.gethostname(), **(fields or {}), **extra}

    def log(self, level: str, event: str, **fields: Any) -> None:
        lv = LEVELS.get(level, 20)
        if lv < self.level:
            return
        t = time.time()
        rec = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z",
            "level": level,
            "event": event,
            **self.constant,
            **fields,
        }
        try:
            self.stream.write(json.dumps(rec, default=str, ensure_ascii=False) + "\n")
            self.stream.flush()
        except (OSError, ValueError):
            pass  # stdout gone (pipe closed at shutdown): logging must never crash a call

    def debug(self, event: str, **f: Any) -> None:
        self.log("debug", event, **f)

    def info(self, event: str, **f: Any) -> None:
        self.log("info", event, **f)

    def warning(self, event: str, **f: Any) -> None:
        self.log("warning", event, **f)

    def error(self, event: str, **f: Any) -> None:
        self.log("error", event, **f)


log = JsonLogger()
