"""A caller's request body, streamed to the upstream as it arrives.

twisted.web reads a whole request body (into a temporary file past 100 kB) before it calls a
resource, so a proxy built on plain `render()` sends nothing upstream until the caller has
finished. `StreamingRequest` starts the call as soon as the headers are in and feeds body
chunks to a `BodyStream`; each try reads the stream through its own `BodyReader` (the
`IBodyProducer` twisted's HTTP client writes from).

Replay: the stream keeps every byte from the start while the body is at most `REPLAY_LIMIT`
bytes, so a retry can send it again. Past that it keeps only what the current try has not
sent yet; once a byte has been dropped the body cannot be replayed and no further try may
start (`can_replay`). Memory stays bounded either way: when more than `REPLAY_LIMIT` bytes wait
for a slow upstream (or for a try to start), the caller's socket is paused.
"""

from __future__ import annotations

import io
from typing import Any, cast

from twisted.internet import defer
from twisted.python.failure import Failure
from twisted.web import server
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer
from zope.interface import implementer

REPLAY_LIMIT = 1 << 20
"""Bytes of request body kept for a retry (Envoy's default retry buffer is also 1 MiB)."""


class BodyAborted(Exception):
    """The body will not be complete: the caller left, or the call ended without it."""


class BodyStream:
    def __init__(self, length: int | None, pause: Any, resume: Any,
                 limit: int = REPLAY_LIMIT) -> None:
        self.length = length
        """Content-Length, or None for a chunked body (sent on chunked to the upstream)."""
        self.limit = limit
        self._pause, self._resume = pause, resume
        self.chunks: list[bytes] = []
        self.start = 0
        """Offset of `chunks[0]` in the body: above 0 once bytes were dropped."""
        self.received = 0
        self.complete = False
        self.aborted = False
        self.paused = False
        self.reader: BodyReader | None = None
        self._waiting: list[defer.Deferred[None]] = []

    @property
    def can_replay(self) -> bool:
        """May a (new) try send this body from its first byte?"""
        return self.start == 0 and not self.aborted

    # --- fed by the caller's channel ----------------------------------------------------------

    def feed(self, data: bytes) -> None:
        if self.aborted or not data:
            return
        self.chunks.append(data)
        self.received += len(data)
        if self.reader is not None:
            self.reader.pump()
        self._trim()

    def finish(self) -> None:
        self.complete = True
        if self.reader is not None:
            self.reader.pump()
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(None)

    def abort(self) -> None:
        """No more bytes will come or be sent: stop the current try's body and free memory."""
        if self.aborted:
            return
        self.aborted = True
        self.chunks = []
        if self.reader is not None:
            self.reader.fail(BodyAborted("the request body was abandoned"))
        if self.paused:
            self.paused = False
            self._resume()

    def when_complete(self) -> defer.Deferred[None]:
        d: defer.Deferred[None] = defer.Deferred()
        if self.complete:
            d.callback(None)
        else:
            self._waiting.append(d)
        return d

    # --- memory bounds --------------------------------------------------------------------------

    def _trim(self) -> None:
        """Drop what was sent once the body is too big to replay; pause the caller if needed."""
        sent = self.reader.pos if self.reader is not None else self.start
        if self.received > self.limit:
            while self.chunks and self.start + len(self.chunks[0]) <= sent:
                self.start += len(self.chunks.pop(0))
        waiting = self.received - max(sent, self.start)
        if waiting > self.limit and not self.paused and not self.complete:
            self.paused = True
            self._pause()
        elif waiting <= self.limit // 2 and self.paused:
            self.paused = False
            self._resume()

    def reader_for_try(self) -> BodyReader:
        assert self.can_replay, "a try must not start on a body it cannot replay"
        if self.reader is not None:  # the last try may still be sending: it must not wait on
            self.reader.fail(BodyAborted("a new try took over"))  # a body it will never get
            self.reader.detach()
        self.reader = BodyReader(self)
        return self.reader


@implementer(IBodyProducer)
class BodyReader:
    """One try's view of the body: an `IBodyProducer` for twisted's HTTP client."""

    def __init__(self, stream: BodyStream) -> None:
        self.stream = stream
        self.length: Any = stream.length if stream.length is not None else UNKNOWN_LENGTH
        self.pos = 0
        self.consumer: Any = None
        self.paused = False
        self.done: defer.Deferred[None] | None = None

    def startProducing(self, consumer: Any) -> defer.Deferred[None]:  # noqa: N802
        self.consumer = consumer
        d = self.done = defer.Deferred()
        self.pump()
        return d

    def pump(self) -> None:
        """Write everything received and not yet sent (unless the upstream asked for a pause)."""
        s = self.stream
        if self.consumer is None or self.done is None or self.paused or s.reader is not self:
            return
        i = self.pos - s.start
        k = 0
        while i > 0 and k < len(s.chunks):  # skip whole chunks already sent
            if i < len(s.chunks[k]):
                break
            i -= len(s.chunks[k])
            k += 1
        while k < len(s.chunks) and not self.paused:
            data = s.chunks[k][i:] if i else s.chunks[k]
            i, k = 0, k + 1
            self.pos += len(data)
            self.consumer.write(data)
        s._trim()
        if s.complete and self.pos == s.received and not self.paused:
            done, self.done = self.done, None
            if done is not None:
                done.callback(None)

    def fail(self, why: Exception) -> None:
        done, self.done = self.done, None
        if done is not None:
            done.errback(why)

    def detach(self) -> None:
        self.consumer = None
        self.stream.reader = None if self.stream.reader is self else self.stream.reader

    def pauseProducing(self) -> None:  # noqa: N802
        self.paused = True

    def resumeProducing(self) -> None:  # noqa: N802
        if self.paused:
            self.paused = False
            self.pump()

    def stopProducing(self) -> None:  # noqa: N802
        """The try ended (timeout, reset, an answer before the body): it sends no more."""
        self.done = None
        self.detach()


class StreamingRequest(server.Request):
    """A request whose body is handed over as it arrives, and whose call starts at the headers.

    `site.resource.begin(request)` is called once the headers are in (only when there is a
    body); `render()` runs, as usual, once the whole body was received.
    """

    body: BodyStream | None = None
    call: Any = None
    """The proxy's per-call state (`http_proxy._CallState`), set by `begin`."""

    def gotLength(self, length: int | None) -> None:  # noqa: N802
        self.content = io.BytesIO()  # stays empty: the body goes to `self.body`
        if length == 0:
            return
        ch: Any = self.channel
        transport = ch.transport
        self.body = BodyStream(length, transport.pauseProducing, transport.resumeProducing)
        # the request line is known but not yet set on the request: the call starts now
        self.method, self.uri, self.clientproto = ch._command, ch._path, ch._version
        self.path = self.uri.split(b"?", 1)[0]
        # Not from inside the channel's parser: an answer decided at once (no endpoints) would
        # finish the request while the parser still holds body bytes of the same packet.
        from twisted.internet import reactor

        cast(Any, reactor).callLater(0, self._begin)

    def _begin(self) -> None:
        if self.call is None and not self.finished and not self._disconnected:
            cast(Any, self.channel).site.resource.begin(self)

    def handleContentChunk(self, data: bytes) -> None:  # noqa: N802
        if self.body is not None:
            self.body.feed(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:  # noqa: N802
        """Hand the request to the proxy resource, skipping what a proxy has no use for.

        twisted's `requestReceived` and `process` parse the query string (and a form body),
        unquote the path into `postpath`, walk the resource tree and format `Date` and
        `Server` headers (the upstream's are forwarded instead): a tenth of the worker's time.
        """
        if self.finished or self._disconnected:
            return  # answered early (see ProxyResource._answer_started); the channel closes
        self.method, self.uri, self.clientproto = command, path, version
        self.path = path.split(b"?", 1)[0]
        self.args = {}
        ch: Any = self.channel
        self.site = ch.site
        self.prepath, self.postpath = [], []
        try:
            self.site.resource.render(self)  # starts the deadline, before the body's end
        except Exception:
            self.processingFailed(Failure())
        if self.body is not None:
            self.body.finish()

    def connectionLost(self, reason: Any) -> None:  # noqa: N802
        super().connectionLost(reason)  # the call learns first that the caller left
        if self.body is not None and not self.body.complete:
            self.body.abort()
