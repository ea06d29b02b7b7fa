"""Hostile or slow HTTP clients, refused early: read timeout, header limits, oversized bodies.

twisted.web's idle timer restarts on every byte, so a client sending its headers a byte a
second (slowloris) would hold a connection for ever. Here a request must arrive whole (request
line, headers and body) within `http.read_timeout` of its first byte, else the connection gets
408 and is closed; a connection that sends nothing is closed after `http.idle_timeout`.
Headers over `max_headers` or `max_header_bytes` get 431, and a body whose Content-Length is
over `max_body_bytes` gets 413 before a byte of it is read; either way the connection closes.

`GuardMixin` goes in front of the front's channel class (see `http_front.make_site`); it adds
no timer per request: one per connection looks at a timestamp, as the idle timer does.
"""

from __future__ import annotations

import json
import time
from typing import Any

from .. import metrics
from ..logs import INFO, log
from ..mapping.errors import Code

_monotonic = time.monotonic

_REASONS = {408: b"Request Timeout", 413: b"Content Too Large",
            431: b"Request Header Fields Too Large"}


def refusal(status: int, code: Code, message: str) -> bytes:
    """A whole HTTP/1.1 response that closes the connection, body as the front's errors."""
    body = json.dumps({"code": int(code), "message": message, "details": []}).encode()
    return (b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
            b"Connection: close\r\n\r\n" % (status, _REASONS[status], len(body))) + body


class GuardMixin:
    """Mixed into an `http.HTTPChannel` subclass; the limits are class attributes set per site."""

    read_timeout = 10.0
    max_body_bytes = 4 * 1024 * 1024
    # twisted's own names, so its checks enforce them: maxHeaders, totalHeadersSize, MAX_LENGTH

    _read_since: float | None = None
    _read_call: Any = None
    _refused = False

    # -- read timeout ---------------------------------------------------------------------
    def dataReceived(self, data: bytes) -> None:  # noqa: N802 - twisted's name
        if self._read_since is None and not self._handlingRequest:  # type: ignore[attr-defined]
            self._read_since = _monotonic()
            if self._read_call is None:
                self._read_call = self.callLater(  # type: ignore[attr-defined]
                    self.read_timeout, self._read_check)
        super().dataReceived(data)  # type: ignore[misc]

    def allContentReceived(self) -> None:  # noqa: N802 - twisted's name
        self._read_since = None
        super().allContentReceived()  # type: ignore[misc]

    def _read_check(self) -> None:
        self._read_call = None
        since = self._read_since
        if since is None:
            return  # between requests: the next first byte starts a new timer
        left = since + self.read_timeout - _monotonic()
        if left > 0:
            self._read_call = self.callLater(left, self._read_check)  # type: ignore[attr-defined]
            return
        self._refuse(408, Code.DEADLINE_EXCEEDED, f"the request did not arrive within {self.read_timeout:g}s "
                             "(http.read_timeout)")

    def connectionLost(self, reason: Any = None) -> None:  # noqa: N802 - twisted's name
        self._read_since = None
        call = self._read_call
        if call is not None and call.active():
            call.cancel()
        self._read_call = None
        call = self._linger_call
        if call is not None and call.active():
            call.cancel()
        super().connectionLost(reason)  # type: ignore[misc]

    # -- limits ---------------------------------------------------------------------------
    def _respondToBadRequestAndDisconnect(self) -> None:  # noqa: N802 - twisted's name
        """twisted answers 400 for every header problem; too many or too large is 431."""
        if (self._receivedHeaderSize > self.totalHeadersSize  # type: ignore[attr-defined]
                or self._receivedHeaderCount > self.maxHeaders):  # type: ignore[attr-defined]
            self._too_large_headers()
        else:
            super()._respondToBadRequestAndDisconnect()  # type: ignore[misc]

    def lineLengthExceeded(self, line: bytes) -> None:  # noqa: N802 - twisted's name
        self._too_large_headers()  # one header line longer than all headers may be

    def _too_large_headers(self) -> None:
        self._refuse(431, Code.RESOURCE_EXHAUSTED, f"request headers over {self.maxHeaders} fields or "  # type: ignore[attr-defined]
                             f"{self.totalHeadersSize} bytes (http.max_headers, "  # type: ignore[attr-defined]
                             "http.max_header_bytes)")

    def allHeadersReceived(self) -> None:  # noqa: N802 - twisted's name
        length = self.length  # type: ignore[attr-defined]
        if length is not None and length > self.max_body_bytes:
            # answered before its body is read: the body is never buffered, nor waited for.
            # What the client sends meanwhile is read and dropped (up to the read timeout), so
            # closing with unread bytes does not reset the connection under the answer.
            self._refuse(413, Code.RESOURCE_EXHAUSTED, f"request body of {length} bytes exceeds {self.max_body_bytes} "
                                 "bytes (http.max_body_bytes)", linger=length)
            return
        super().allHeadersReceived()  # type: ignore[misc]

    def _refuse(self, status: int, code: Code, message: str, linger: int = 0) -> None:
        """Answer and close; with `linger`, first drop up to that many bytes still on their way
        (for at most the read timeout). Counted and logged as any refused call."""
        if self._refused:
            return
        self._refused = True
        since, self._read_since = self._read_since, None
        transport: Any = self.transport  # type: ignore[attr-defined]
        transport.write(refusal(status, code, message))
        metrics.recorder.request("http", "", "", code.name, None)
        if log.level <= INFO:
            log.info("access", front="http",
                     method=getattr(self, "_path", b"").decode("utf-8", "replace"),
                     http_method=getattr(self, "_command", b"").decode("ascii", "replace"),
                     code=code.name, request_id="",
                     duration_ms=round((_monotonic() - since) * 1000, 3) if since else 0.0,
                     backend=None, backend_ms=None, attempts=1, error=message)
        self.setRawMode()  # type: ignore[attr-defined] # anything still arriving is not parsed
        if linger > 0:
            self._linger_left = linger
            self.rawDataReceived = self._linger  # type: ignore[method-assign]
            self._linger_call = self.callLater(  # type: ignore[attr-defined]
                self.read_timeout, self._close)
            return
        self.rawDataReceived = _discard  # type: ignore[method-assign]
        self._close()

    _linger_left = 0
    _linger_call: Any = None

    def _linger(self, data: bytes) -> None:
        self._linger_left -= len(data)
        if self._linger_left <= 0:
            self.rawDataReceived = _discard  # type: ignore[method-assign]
            self._close()

    def _close(self) -> None:
        call = self._linger_call
        if call is not None and call.active():
            call.cancel()
        self._linger_call = None
        self.loseConnection()  # type: ignore[attr-defined]
        # what twisted's timeoutConnection does, without its log line: abort if not drained
        self._abortingCall = self.callLater(  # type: ignore[attr-defined]
            self.abortTimeout, self.forceAbortClient)  # type: ignore[attr-defined]


def _discard(data: bytes) -> None:
    pass
