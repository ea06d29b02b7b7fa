"""HTTP/1.1 client messages, sans-IO: the bytes of a request, and a reply parser.

The SOAP backend posts one envelope at a time on each persistent connection and reads one
reply, so this is all of HTTP/1.1 it needs: a request head computed once per backend (only
the per-call headers and Content-Length are added per call), and a reply parser fed the bytes
as they arrive, in any split, that reads a body delimited by Content-Length, by chunked
transfer coding or by the close of the connection, with a bound on the body and on the head.
It knows nothing of sockets or timers (backends/http_pool.py moves the bytes): replacing
Twisted's `Agent` and its response parser by this was the largest saving on JSON → SOAP
(docs/performance.md, "The SOAP path").

Anything the parser cannot read with certainty raises HttpError: the connection is then in
an unknown state and must be closed, never reused.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

#: Bound on a reply's status line plus headers (and on a chunked body's trailers).
MAX_HEAD = 64 * 1024
#: Bound on one chunk-size line (size and extensions).
MAX_CHUNK_LINE = 1024

_HEAD, _LENGTH, _CHUNK_SIZE, _CHUNK_DATA, _TRAILERS, _CLOSE, _DONE = range(7)
_HEX = frozenset(b"0123456789abcdefABCDEF")


class HttpError(Exception):
    """The reply cannot be read: the connection's state is unknown."""


class ReplyTooLarge(HttpError):
    """The reply's body exceeds the bound (or its head exceeds MAX_HEAD)."""


@dataclass(slots=True)
class Reply:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    """In order, names lowercased."""
    body: bytes
    keep_alive: bool
    """The server keeps the connection open for another request."""

    def header(self, name: str) -> str | None:
        """The last value of a header (`name` lowercase), or None."""
        for key, value in reversed(self.headers):
            if key == name:
                return value
        return None


def _check(text: str, what: str) -> str:
    if "\r" in text or "\n" in text or "\0" in text:
        raise ValueError(f"{what} {text[:40]!r} holds a line break or NUL")
    return text


def request_prefix(method: str, target: str, host: str,
                   headers: Iterable[tuple[str, str]] = ()) -> bytes:
    """The fixed start of every request of one backend: request line, Host, fixed headers.
    Raises ValueError for a value that would break the head (a line break)."""
    lines = [f"{_check(method, 'method')} {_check(target, 'target')} HTTP/1.1",
             f"Host: {_check(host, 'host')}"]
    lines += [f"{_check(k, 'header')}: {_check(v, 'header value')}" for k, v in headers]
    return ("\r\n".join(lines) + "\r\n").encode("latin-1")


def request_bytes(prefix: bytes, headers: Iterable[tuple[str, str]], body: bytes) -> bytes:
    """One whole request: the prefix, this call's headers, Content-Length and the body.
    Raises ValueError for a header that would break the head."""
    extra = "".join(f"{_check(k, 'header')}: {_check(v, 'header value')}\r\n"
                    for k, v in headers)
    return b"".join((prefix, extra.encode("latin-1"), b"Content-Length: %d\r\n\r\n" % len(body),
                     body))


class ReplyParser:
    """Reads one reply from the bytes fed to it (`feed`, then `closed` if the peer closes).

    `feed` returns the Reply once it is complete; bytes after it are kept in `leftover` (a
    client that sends one request at a time never expects any: the connection is then not
    reusable). `started` tells whether any byte arrived, which decides whether a request lost
    on a stale connection may be sent again. Interim 1xx replies are skipped."""

    __slots__ = ("buf", "max_body", "state", "started", "leftover", "_status", "_reason",
                 "_headers", "_keep_alive", "_remaining", "_body", "_size")

    def __init__(self, max_body: int) -> None:
        self.max_body = max_body
        self.reset()

    def reset(self) -> None:
        self.buf = bytearray()
        self.state = _HEAD
        self.started = False
        self.leftover = b""
        self._status = 0
        self._reason = ""
        self._headers: list[tuple[str, str]] = []
        self._keep_alive = True
        self._remaining = 0
        self._body: list[bytes] = []
        self._size = 0

    def feed(self, data: bytes) -> Reply | None:
        if self.state == _DONE:
            self.leftover += data
            return None
        if data:
            self.started = True
        buf = self.buf
        buf += data
        while True:
            state = self.state
            if state == _HEAD:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    if len(buf) > MAX_HEAD:
                        raise ReplyTooLarge(f"reply head exceeds {MAX_HEAD} bytes")
                    return None
                if end > MAX_HEAD:
                    raise ReplyTooLarge(f"reply head exceeds {MAX_HEAD} bytes")
                head = bytes(buf[:end])
                del buf[:end + 4]
                self._head(head)
            elif state == _LENGTH:
                n = self._remaining
                if len(buf) < n:
                    return None
                self._body.append(bytes(buf[:n]))
                del buf[:n]
                return self._done()
            elif state == _CHUNK_SIZE:
                end = buf.find(b"\r\n")
                if end < 0:
                    if len(buf) > MAX_CHUNK_LINE:
                        raise HttpError("chunk size line too long")
                    return None
                size = _chunk_size(bytes(buf[:end]))
                del buf[:end + 2]
                if size == 0:
                    self.state = _TRAILERS
                    self._remaining = 0  # trailer bytes read so far
                    continue
                self._size += size
                if self._size > self.max_body:
                    raise ReplyTooLarge(f"reply body exceeds {self.max_body} bytes")
                self._remaining = size
                self.state = _CHUNK_DATA
            elif state == _CHUNK_DATA:
                n = self._remaining
                if len(buf) < n + 2:
                    return None
                if buf[n:n + 2] != b"\r\n":
                    raise HttpError("chunk data not followed by CRLF")
                self._body.append(bytes(buf[:n]))
                del buf[:n + 2]
                self.state = _CHUNK_SIZE
            elif state == _TRAILERS:
                end = buf.find(b"\r\n")
                if end < 0:
                    if self._remaining + len(buf) > MAX_HEAD:
                        raise ReplyTooLarge(f"reply trailers exceed {MAX_HEAD} bytes")
                    return None
                self._remaining += end + 2
                if self._remaining > MAX_HEAD:
                    raise ReplyTooLarge(f"reply trailers exceed {MAX_HEAD} bytes")
                del buf[:end + 2]
                if end == 0:
                    return self._done()
            elif state == _CLOSE:
                self._size += len(buf)
                if self._size > self.max_body:
                    raise ReplyTooLarge(f"reply body exceeds {self.max_body} bytes")
                self._body.append(bytes(buf))
                del buf[:]
                return None
            else:  # pragma: no cover - _DONE is handled above
                return None

    def closed(self) -> Reply:
        """The peer closed the connection: the reply, if its body ran to the close.
        Raises HttpError when the reply was cut short (or none came)."""
        if self.state == _CLOSE:
            return self._done()
        if self.state == _HEAD and not self.buf:
            raise HttpError("connection closed before a reply")
        raise HttpError("connection closed in the middle of the reply")

    def _head(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        version, _, rest = lines[0].partition(b" ")
        code, _, reason = rest.partition(b" ")
        if version not in (b"HTTP/1.1", b"HTTP/1.0") or len(code) != 3 or not code.isdigit():
            raise HttpError(f"not an HTTP/1.x status line: {lines[0][:60]!r}")
        status = int(code)
        headers: list[tuple[str, str]] = []
        length: int | None = None
        chunked = False
        coded = False
        connection = ""
        for line in lines[1:]:
            name, colon, value = line.partition(b":")
            if not colon or not name or name != name.strip() or line[:1] in (b" ", b"\t"):
                raise HttpError(f"malformed header line: {line[:60]!r}")
            key = name.decode("latin-1").lower()
            text = value.strip(b" \t").decode("latin-1")
            headers.append((key, text))
            if key == "content-length":
                if not text.isdigit() or not text.isascii() or (length is not None
                                                                and int(text) != length):
                    raise HttpError(f"bad Content-Length: {text[:40]!r}")
                length = int(text)
            elif key == "transfer-encoding":
                coded = True
                chunked = text.rsplit(",", 1)[-1].strip().lower() == "chunked"
            elif key == "connection":
                connection += "," + text.lower()
        if 100 <= status < 200:
            if status == 101:
                raise HttpError("unexpected 101 Switching Protocols")
            return  # interim reply: the real one follows
        tokens = {t.strip() for t in connection.split(",")}
        if version == b"HTTP/1.1":
            self._keep_alive = "close" not in tokens
        else:
            self._keep_alive = "keep-alive" in tokens and "close" not in tokens
        self._status = status
        self._reason = reason.decode("latin-1")
        self._headers = headers
        if status in (204, 304):
            self.state = _LENGTH
            self._remaining = 0
        elif coded:
            if length is not None:
                self._keep_alive = False  # both: Transfer-Encoding wins, the peer is suspect
            if chunked:
                self.state = _CHUNK_SIZE
            else:
                self.state = _CLOSE
                self._keep_alive = False
        elif length is not None:
            if length > self.max_body:
                raise ReplyTooLarge(f"reply body exceeds {self.max_body} bytes")
            self.state = _LENGTH
            self._remaining = length
        else:
            self.state = _CLOSE
            self._keep_alive = False

    def _done(self) -> Reply:
        self.state = _DONE
        body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        self.leftover = bytes(self.buf)
        self.buf = bytearray()
        return Reply(self._status, self._reason, self._headers, body, self._keep_alive)


def _chunk_size(line: bytes) -> int:
    digits = line.split(b";", 1)[0].strip(b" \t")
    if not digits or len(digits) > 16 or not _HEX.issuperset(digits):
        raise HttpError(f"bad chunk size: {line[:40]!r}")
    return int(digits, 16)
