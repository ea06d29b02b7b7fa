"""The HTTP/1.1 reverse proxy of an `http` route: one caller request, up to `attempts` tries.

A call with a body starts as soon as the caller's headers are in, and the body streams to the
upstream as it arrives (`body.py`); a body of at most `REPLAY_LIMIT` bytes is kept for a
retry, a bigger one ends retries once its first byte was sent. The chosen upstream response
is streamed back as it arrives. Only the final response reaches the caller: a retried
response's body is drained so its keep-alive connection goes back to the pool.

Timers follow Envoy: the overall `timeout` and each `per_try_timeout` start when the caller's
request is complete, so a slow upload is not a slow upstream.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

from twisted.internet import defer, error, protocol, task
from twisted.python.failure import Failure
from twisted.web import client, http, resource, server
from twisted.web.http_headers import Headers
from twisted.web.iweb import IResponse

from .. import metrics
from .body import BodyStream, StreamingRequest
from .policy import BREAKER_STATUSES, CONNECT_FAILURE, RESET, TIMEOUT_STATUS, retry_after
from .route import Route
from .selection import Endpoint
from .upstream import UpstreamClient

HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"transfer-encoding",
    b"upgrade", b"proxy-authenticate", b"proxy-authorization",
})
"""RFC 9110 §7.6.1, plus the legacy names; headers listed in `Connection` are dropped too."""
_NOT_FORWARDED = HOP_BY_HOP | {b"content-length"}  # the body producer sets the length
_CONNECT_ERRORS = (error.ConnectError, error.TimeoutError, error.DNSLookupError)
_RESET_ERRORS = (client.ResponseNeverReceived, client.RequestTransmissionFailed,
                 client.ResponseFailed, error.ConnectionLost)


@dataclass
class Outcome:
    """One try's result: `key` is what `retry.on` and the breaker look at."""

    key: str | int
    response: IResponse | None = None

    @property
    def breaker_failure(self) -> bool:
        return self.key in (CONNECT_FAILURE, RESET) or self.key in BREAKER_STATUSES


def _headers_out(raw: Headers) -> Headers:
    """The end-to-end headers of `raw`, copied without re-validating them one by one.

    They were parsed (and sanitised) by twisted already, so the copy goes dict to dict (as
    `Headers.copy` does) instead of through `setRawHeaders`, twice per request.
    """
    drop = _NOT_FORWARDED
    connection = raw.getRawHeaders(b"connection")
    if connection:
        drop = drop | {t.strip().lower() for v in connection for t in v.split(b",")}
    out = Headers()
    out._rawHeaders = {name: values[:] for name, values in raw._rawHeaders.items()
                       if name.lower() not in drop}
    return out


class _Relay(protocol.Protocol):
    """Streams an upstream body to the caller; a slow caller pauses the upstream read."""

    def __init__(self, request: server.Request, done: defer.Deferred[None]) -> None:
        self.request = request
        self.done = done
        self.streaming = False

    def connectionMade(self) -> None:  # noqa: N802
        if self.transport is not None and not self.request.finished and not self.request._disconnected:
            self.request.registerProducer(self.transport, True)
            self.streaming = True

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        if not self.request.finished and not self.request._disconnected:
            self.request.write(data)

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:  # noqa: N802
        if self.streaming:
            self.streaming = False
            self.request.unregisterProducer()
        if not self.request.finished and not self.request._disconnected:
            if reason.check(client.ResponseDone, http.PotentialDataLoss):
                self.request.finish()
            else:  # the upstream broke mid-body: the caller must not take it as complete
                self.request.loseConnection()
        self.done.callback(None)


class ProxyResource(resource.Resource):
    isLeaf = True

    def __init__(self, route: Route, upstreams: UpstreamClient) -> None:
        super().__init__()
        self.route = route
        self.upstreams = upstreams
        self._answered: dict[int, Any] = {}
        """`adaptercar_ambassador_requests_total` per status, labelled once (not per request)."""

    def begin(self, request: StreamingRequest, state: _CallState | None = None) -> _CallState:
        """Start the call: at the headers when a body follows, else from `render`."""
        state = request.call = state or _CallState(request.body)
        drain = self.route.drain
        drain.enter()  # in flight until answered or its caller left: a stop waits for it
        self.route.channels.add(request.channel)
        call = state.call = defer.ensureDeferred(self._call(request, state))
        call.addBoth(state.stop_timer)
        call.addErrback(self._failed, request, state)

        def answered(_: object) -> None:
            if state.body is not None:
                state.body.abort()  # answered before the body ended: the connection closes

        def left(_f: Failure) -> None:
            state.left = True
            if state.body is not None:
                state.body.abort()
            call.cancel()

        request.notifyFinish().addCallbacks(answered, left).addBoth(drain.leave)
        return state

    def render(self, request: server.Request) -> Any:
        """The caller's request is complete: the overall deadline starts now."""
        req = cast(StreamingRequest, request)
        if req.call is None:
            state = _CallState(req.body)  # the whole body came in one read
            state.start_deadline(self.route)
            self.begin(req, state)
        elif not req.call.call.called:
            req.call.start_deadline(self.route)
        return server.NOT_DONE_YET

    # --- the decision loop --------------------------------------------------------------------

    async def _call(self, request: server.Request, state: _CallState) -> None:
        route, reactor = self.route, self.route.reactor
        method = request.method.decode("ascii", "replace")
        route.budget.request(reactor.seconds())
        headers = _headers_out(request.requestHeaders)
        if route.host_header is not None:
            headers.setRawHeaders(b"host", [route.host_header])
        if not headers.hasHeader(b"x-request-id"):
            # 128 random bits from the route's generator: os.urandom/uuid4 cost a syscall each
            headers.setRawHeaders(b"x-request-id", [b"%032x" % route.rng.getrandbits(128)])
        path = request.uri
        if not path.startswith(b"/"):  # absolute-form (the caller treats us as a forward proxy)
            path = b"/" + path.split(b"://", 1)[-1].partition(b"/")[2]
        tried: set[str] = set()
        last: Outcome | None = None
        policy = route.policy
        for n in range(policy.attempts):
            if n and state.body is not None and not state.body.can_replay:
                break  # the last try sent part of a body too big to keep: it cannot go again
            ep, why = route.pick(tried)
            if ep is None:
                if last is not None:
                    return await self._forward(request, last, state=state)
                return self._fail(request, 503, why)
            tried.add(ep.key)
            if route.rewrite_host:
                headers = headers.copy()  # the last try's request may not be written yet
                headers.setRawHeaders(b"host", [ep.authority])

            def attempt(ep: Endpoint = ep, headers: Headers = headers) -> Any:
                return self._try(request, ep, path, headers, state)

            out = await route.breaker(ep).run(attempt, _breaker_failure)
            if out is None:  # the breaker opened between selection and the try
                continue
            if last is not None:
                self._drain(last)
            last = out
            reason = policy.reason(method, out.key)
            if reason is None or n == policy.attempts - 1:
                break
            if state.body is not None and not state.body.can_replay:
                break  # checked again before the next try: the body may still be flowing
            now = reactor.seconds()
            delay = policy.backoff(n, route.rng)
            if out.response is not None and out.key == 503:
                ra = retry_after(out.response.headers.getRawHeaders(b"retry-after", [None])[0], now)
                if ra is not None:
                    delay = max(delay, ra)
            if now + delay >= state.deadline_from(now, route.timeout):
                break
            if not route.budget.try_retry(now):
                return await self._forward(request, out, reason="budget-exhausted", state=state)
            metrics.ambassador_retries_total.labels(route.name, reason).inc()
            if delay > 0:
                await task.deferLater(reactor, delay, lambda: None)
        if last is None:  # every pick was refused by a breaker that had just opened
            return self._fail(request, 503, "circuit-open")
        await self._forward(request, last, state=state)

    async def _try(self, request: server.Request, ep: Endpoint, path: bytes, headers: Headers,
                   state: _CallState) -> Outcome:
        route = self.route
        producer = state.body.reader_for_try() if state.body is not None else None
        d = self.upstreams.request(request.method, ep, path, headers, producer)
        timed_out = False
        timer: Any = None

        def expire() -> None:
            nonlocal timed_out
            timed_out = True
            d.cancel()

        def arm(_: object = None) -> None:
            """The per-try timer starts when the request is complete (and the deadline known)."""
            nonlocal timer
            if d.called or state.deadline is None:
                return
            remaining = state.deadline - route.reactor.seconds()
            state.capped = route.per_try is None or remaining <= route.per_try
            timer = route.reactor.callLater(max(0.0, min(route.per_try or remaining, remaining)),
                                            expire)

        if state.body is None or state.body.complete:
            arm()
        else:
            state.body.when_complete().addCallback(arm)
        try:
            resp = await d
        except Exception as e:
            # Agent reports a cancelled request as ResponseNeverReceived, not CancelledError:
            # who cancelled decides what the try counts as.
            if state.expired or state.left:
                raise defer.CancelledError() from e
            if timed_out and state.capped:  # the try ran into the overall deadline
                state.expired = True
                raise defer.CancelledError() from e
            if timed_out:
                return Outcome(TIMEOUT_STATUS)
            if isinstance(e, _CONNECT_ERRORS):
                return Outcome(CONNECT_FAILURE)
            if isinstance(e, _RESET_ERRORS):
                return Outcome(RESET)
            raise
        finally:
            if timer is not None and timer.active():
                timer.cancel()
        return Outcome(resp.code, resp)

    @staticmethod
    def _drain(out: Outcome) -> None:
        if out.response is not None:
            client.readBody(out.response).addErrback(lambda _f: None)

    # --- answers to the caller ----------------------------------------------------------------

    async def _forward(self, request: server.Request, out: Outcome, reason: str | None = None,
                       state: _CallState | None = None) -> None:
        if out.response is None:
            if out.key == TIMEOUT_STATUS:  # the last try ran out of per_try_timeout, or the
                self._fail(request, 504, reason or "deadline")  # budget refused to retry it
            else:
                self._fail(request, 503, reason or "upstream-unavailable")
            return
        resp = out.response
        if request.finished or request._disconnected:
            self._drain(out)
            return
        request.setResponseCode(resp.code, resp.phrase)
        request.responseHeaders = _headers_out(resp.headers)  # the upstream's Date and Server
        _answer_started(request, state)
        length = resp.length
        if isinstance(length, int) and request.method != b"HEAD":
            request.responseHeaders.setRawHeaders(b"content-length", [str(length).encode()])
        if reason:
            request.responseHeaders.setRawHeaders(b"x-adaptercar-reason", [reason.encode()])
        self._count(resp.code)
        if state is not None:
            state.stop_timer(None)  # the answer has started: the deadline no longer applies
        done: defer.Deferred[None] = defer.Deferred()
        cast(Any, resp).deliverBody(_Relay(request, done))
        await done

    def _count(self, status: int) -> None:
        child = self._answered.get(status)
        if child is None:
            child = self._answered[status] = metrics.ambassador_requests_total.labels(
                self.route.name, str(status))
        child.inc()

    def _fail(self, request: server.Request, status: int, reason: str) -> None:
        self._count(status)
        if request.finished or request._disconnected:
            return
        _answer_started(request, cast(StreamingRequest, request).call)
        body = f"{status} {reason}: route {self.route.name}\n".encode()
        request.setResponseCode(status)
        request.responseHeaders.setRawHeaders(b"date", [http.datetimeToString()])
        request.responseHeaders.setRawHeaders(b"content-type", [b"text/plain; charset=utf-8"])
        request.responseHeaders.setRawHeaders(b"x-adaptercar-reason", [reason.encode()])
        request.responseHeaders.setRawHeaders(b"content-length", [str(len(body)).encode()])
        request.write(body)
        request.finish()

    def _failed(self, f: Failure, request: server.Request, state: _CallState) -> None:
        if state.expired:
            self._fail(request, 504, "deadline")
        elif state.left:
            pass  # the caller went away
        else:
            from ..logs import log

            log.error("ambassador_error", route=self.route.name, error=repr(f.value))
            self._fail(request, 502, "internal-error")


def _breaker_failure(out: Outcome) -> bool:
    return out.breaker_failure


class _CallState:
    """One call's body, deadline, and why it was cancelled: the deadline (504) or the caller."""

    __slots__ = ("body", "call", "capped", "deadline", "expired", "left", "timer")

    def __init__(self, body: BodyStream | None) -> None:
        self.body = body
        self.call: defer.Deferred[None] = defer.Deferred()
        self.timer: Any = None
        self.deadline: float | None = None
        """When the overall timeout runs out; None until the caller's request is complete."""
        self.capped = False
        self.expired = False
        self.left = False

    def start_deadline(self, route: Route) -> None:
        self.deadline = route.reactor.seconds() + route.timeout

        def expire() -> None:
            self.expired = True
            self.call.cancel()

        self.timer = route.reactor.callLater(route.timeout, expire)

    def deadline_from(self, now: float, timeout: float) -> float:
        return self.deadline if self.deadline is not None else now + timeout

    def stop_timer(self, result: Any) -> Any:
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        return result


def _answer_started(request: server.Request, state: _CallState | None) -> None:
    """An answer before the caller finished its body: close the connection after it.

    The body keeps flowing to the upstream that answered while the answer streams (it may
    still read it); once the answer is finished, the rest is dropped (`begin`'s `answered`).
    """
    body = state.body if state is not None else None
    if body is not None and not body.complete:
        cast(Any, request.channel).persistent = False
        request.responseHeaders.setRawHeaders(b"connection", [b"close"])


IDLE_TIMEOUT = 60.0
"""A caller connection with nothing to read for this long (idle keep-alive, stalled upload)
is closed."""


class _QuietSite(server.Site):
    """Our own metrics replace twisted.web's access log, which costs a quarter of throughput."""

    def log(self, request: Any) -> None:
        pass


def proxy_site(route: Route) -> server.Site:
    upstreams = UpstreamClient(route.reactor, route.connect_timeout, route.cfg.upstream.tls,
                               route.name)
    site = _QuietSite(ProxyResource(route, upstreams), timeout=IDLE_TIMEOUT)
    site.requestFactory = StreamingRequest
    site.displayTracebacks = False
    return site
