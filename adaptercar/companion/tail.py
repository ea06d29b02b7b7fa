"""`companion.logs`: follow a legacy app's log file and re-emit its lines as our JSON lines.

Three layers, so each can be tested alone:

- `LineSplitter` (sans-IO): bytes in any chunking → whole lines. A partial line waits for its
  newline; a line longer than `max_line_bytes` is emitted cut (flagged) as soon as it is known to
  be too long and the rest of it is dropped up to its newline, so memory stays bounded.
- `FileFollower` (blocking file IO, no reactor): one `poll()` reads what was appended since the
  last one and follows rotation. Polling (not inotify) because it also works on network and
  overlay filesystems and its cost is one `stat` per file per poll.
- `LogTail` (Twisted): polls every `interval` and writes each line on our stdout through the
  same logger as everything else (`event: "legacy_log"`), so the platform needs one parser.

Rotation by rename: the path's inode changes. The old file is read to its end first, and kept
until a poll finds nothing more in it (the app may write a last line before it reopens), then the
new file is read from its start. Rotation by truncation (copytruncate): the file is shorter than
what was read; reading restarts at 0. What was appended between the last poll and a truncation
is gone with the truncation itself: no tailer can read it.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable, Mapping
from typing import Any

from .. import metrics
from ..logs import log

Line = tuple[bytes, bool]  # (the line without its newline, whether it was cut)

READ_CHUNK = 1 << 16


class LineSplitter:
    """Bytes → lines, independent of how the bytes were chunked."""

    __slots__ = ("max_line_bytes", "buf", "skipping")

    def __init__(self, max_line_bytes: int) -> None:
        if max_line_bytes < 1:
            raise ValueError("max_line_bytes must be at least 1")
        self.max_line_bytes = max_line_bytes
        self.buf = bytearray()
        self.skipping = False  # inside the dropped rest of a cut line

    @property
    def pending(self) -> int:
        """Bytes of a partial line waiting for its newline."""
        return len(self.buf)

    def feed(self, data: bytes) -> list[Line]:
        out: list[Line] = []
        start, n = 0, len(data)
        while start < n:
            nl = data.find(b"\n", start)
            if self.skipping:
                if nl < 0:
                    return out
                self.skipping = False
                start = nl + 1
                continue
            end = n if nl < 0 else nl
            room = self.max_line_bytes - len(self.buf)
            if end - start > room:
                out.append((bytes(self.buf) + data[start:start + room], True))
                self.buf.clear()
                self.skipping = True
                start += room
                continue
            if nl < 0:
                self.buf += data[start:]
                return out
            out.append((bytes(self.buf) + data[start:nl], False))
            self.buf.clear()
            start = nl + 1
        return out

    def flush(self) -> list[Line]:
        """The partial line as a line: its file ended for good (rotated away or truncated)."""
        self.skipping = False
        if not self.buf:
            return []
        line = bytes(self.buf)
        self.buf.clear()
        return [(line, False)]


class FileFollower:
    """Reads what a file gained since the last `poll()`, across rotations."""

    def __init__(self, path: str, max_line_bytes: int, from_start: bool = False) -> None:
        self.path = path
        self.splitter = LineSplitter(max_line_bytes)
        self.fd: int | None = None
        self.ino: tuple[int, int] | None = None
        self.offset = 0
        self.from_start = from_start
        self.opened_once = False
        self.old: int | None = None  # a rotated-away file still being drained
        # the file there now is where "the end" is; a file that appears later is read whole
        self._open()
        self.opened_once = True

    def _open(self) -> bool:
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError:
            return False
        st = os.fstat(fd)
        self.fd, self.ino = fd, (st.st_dev, st.st_ino)
        # the file that was there at start: from its end (unless asked); any later file is new
        self.offset = st.st_size if not self.opened_once and not self.from_start else 0
        self.opened_once = True
        return True

    def _read(self, fd: int, at: int) -> tuple[bytes, int]:
        parts = []
        while True:
            chunk = os.pread(fd, READ_CHUNK, at)
            if not chunk:
                break
            parts.append(chunk)
            at += len(chunk)
        return b"".join(parts), at

    def poll(self) -> list[Line]:
        lines: list[Line] = []
        if self.old is not None:
            data, self.offset = self._read(self.old, self.offset)
            if data:
                return self.splitter.feed(data)  # still being written: stay on it one more poll
            os.close(self.old)
            self.old = None
            lines.extend(self.splitter.flush())
            self.opened_once = True
            if not self._open():
                return lines
        if self.fd is None and not self._open():
            return lines
        assert self.fd is not None
        try:
            st = os.stat(self.path)
            now: tuple[int, int] | None = (st.st_dev, st.st_ino)
        except OSError:
            now = None  # renamed away, the new one not there yet: drain the old one
        if now is not None and now != self.ino:
            data, self.offset = self._read(self.fd, self.offset)
            lines.extend(self.splitter.feed(data))
            self.old, self.fd = self.fd, None
            return lines
        if os.fstat(self.fd).st_size < self.offset:  # truncated (copytruncate)
            lines.extend(self.splitter.flush())
            self.offset = 0
        data, self.offset = self._read(self.fd, self.offset)
        lines.extend(self.splitter.feed(data))
        return lines

    def close(self) -> None:
        for fd in (self.fd, self.old):
            if fd is not None:
                os.close(fd)
        self.fd = self.old = None


# Keys our logger owns: a parsed group with one of these names is kept under `legacy_<name>`.
_RESERVED = frozenset({"ts", "event"})


class LogEmitter:
    """One source's lines → JSON log lines and counters: a tailed file, or the stderr of a
    process backend's children (`source` is then the backend's name)."""

    def __init__(self, source: str, parse: re.Pattern[str] | None, fields: Mapping[str, Any],
                 stream: Any = None, encoding: str = "utf-8") -> None:
        self.source = source
        self.parse = parse
        self.fields = dict(fields)
        self.stream = stream
        self.encoding = encoding

    def emit(self, lines: list[Line], extra: Mapping[str, Any] | None = None) -> None:
        """`extra`: fields of these lines only (the pid of the child that wrote them)."""
        if not lines:
            return
        counts: dict[str, int] = {}
        out = []
        constant = log.constant
        t = time.time()
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z"
        fields = {**self.fields, **extra} if extra else self.fields
        for raw, cut in lines:
            text = raw.decode(self.encoding, "replace")
            if text.endswith("\r"):
                text = text[:-1]
            rec: dict[str, Any] = {"ts": ts, "level": "info", "event": "legacy_log", **constant,
                                   **fields}
            outcome = "raw"
            if self.parse is not None:
                m = self.parse.search(text)
                if m is None:
                    outcome = "unparsed"
                    rec["msg"] = text
                else:
                    outcome = "parsed"
                    for k, v in m.groupdict(default="").items():
                        rec["legacy_" + k if k in _RESERVED else k] = v
                    rec.setdefault("msg", text)
            else:
                rec["msg"] = text
            if cut:
                rec["cut"] = True
                counts["cut"] = counts.get("cut", 0) + 1
            counts[outcome] = counts.get(outcome, 0) + 1
            out.append(json.dumps(rec, default=str, ensure_ascii=False))
        stream = self.stream or log.stream
        try:
            stream.write("\n".join(out) + "\n")
            stream.flush()
        except (OSError, ValueError):
            pass  # stdout gone at shutdown
        for outcome, n in counts.items():
            metrics.companion_log_lines_total.labels(self.source, outcome).inc(n)


class LogTail:
    """A FileFollower polled by the reactor, its lines handed to a LogEmitter."""

    def __init__(self, follower: FileFollower, emit: Callable[[list[Line]], None], reactor: Any,
                 interval: float = 0.25) -> None:
        self.follower = follower
        self.emit = emit
        self.reactor = reactor
        self.interval = interval
        self.call: Any = None
        self.running = False

    def start(self) -> None:
        self.running = True
        self._tick()

    def _tick(self) -> None:
        self.call = None
        if not self.running:
            return
        try:
            self.emit(self.follower.poll())
        except OSError as e:
            log.warning("companion_log_error", path=self.follower.path, error=str(e))
        self.call = self.reactor.callLater(self.interval, self._tick)

    def stop(self) -> None:
        self.running = False
        if self.call is not None and self.call.active():
            self.call.cancel()
        self.call = None
        try:
            self.emit(self.follower.poll())  # what was written up to the stop
        except OSError:
            pass
        self.follower.close()
