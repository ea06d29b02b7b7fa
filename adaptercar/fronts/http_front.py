"""The JSON/HTTP front on twisted.web: proto3 JSON in and out, errors as google.rpc Status.

Routing and request shaping are sans-IO (`http_routes`); this shell only reads the body,
parses it into the request message (which is where wrong types are caught, before anything
reaches a backend), invokes the method and writes JSON the way grpc-gateway v2 does.
"""

from __future__ import annotations

import json
import re
import time
from random import getrandbits
from typing import Any
from urllib.parse import parse_qsl

from google.protobuf import json_format
from twisted.internet.defer import CancelledError
from twisted.web import http, resource, server
from twisted.web.http import Request

from .. import metrics
from ..logs import INFO, log
from ..mapping.errors import HTTP_STATUS, CallError, Code
from ..mapping.operation import CallContext
from .calls import CurrentSet, LazyMeta, MethodEntry, backend_ms
from .http_routes import Match, MethodNotAllowed, RequestError, build_request, parse_message
from .json_codec import dumps

_TIMEOUT_RE = re.compile(r"^(\d{1,8})([HMSmun])$")
_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}
_JSON = b"application/json"
_monotonic = time.monotonic
#: Routes (and path-only requests) remembered per config set; past this, the cache restarts.
ROUTE_CACHE_SIZE = 1024


def parse_grpc_timeout(value: str) -> float | None:
    """`Grpc-Timeout: 500m` → 0.5 seconds; None when malformed (the caller answers 400)."""
    m = _TIMEOUT_RE.match(value.strip())
    if m is None:
        return None
    return int(m.group(1)) * _UNITS[m.group(2)]


def error_body(code: Code, message: str) -> bytes:
    return json.dumps({"code": int(code), "message": message, "details": []}).encode()


class HeaderMeta(LazyMeta):
    """Request headers as call metadata: the first value of each."""

    __slots__ = ()

    def _build(self) -> dict[str, str]:
        return {k.decode("latin-1").lower(): vs[0].decode("latin-1")
                for k, vs in self._raw.getAllRawHeaders() if vs}

    def _one(self, key: str, default: Any) -> Any:
        if key != key.lower():
            return default  # the dict's keys are lower-case; twisted's lookup is not
        try:
            vs = self._raw.getRawHeaders(key.encode("latin-1"))
        except ValueError:  # not encodable, or not a header name (InvalidHeaderName): absent
            return default
        return vs[0].decode("latin-1") if vs else default


class JsonResource(resource.Resource):
    isLeaf = True

    def __init__(self, current: CurrentSet, max_body_bytes: int) -> None:
        super().__init__()
        self.current = current
        self.max_body_bytes = max_body_bytes

    def render(self, request: Request) -> Any:  # type: ignore[override]
        t0 = _monotonic()
        cs = self.current.get()
        method = request.method.decode("ascii", "replace")
        path = request.path.decode("utf-8", "replace")
        request.setHeader(b"content-type", _JSON)
        if method == "GET" and path == "/openapi.json":
            return cs.openapi
        # new_request_id(), inline
        rid = request.getHeader("x-request-id") or getrandbits(64).to_bytes(8, "big").hex()
        # Routing a path (and shaping a request that is only its path) gives the same answer
        # every time within a config set: hot paths are looked up, not matched again.
        cache = cs.route_cache
        hit = cache.get((method, path))
        if hit is None:
            found = cs.router.match(method, path)
            if isinstance(found, Match):
                if len(cache) >= ROUTE_CACHE_SIZE:
                    cache.clear()
                hit = cache[(method, path)] = [found, None, None]
            match: Any = found
        else:
            match = hit[0]
        if not isinstance(match, Match):
            if isinstance(match, MethodNotAllowed):
                request.setHeader(b"allow", ", ".join(match.allowed).encode())
                return self._error(
                    request,
                    None,
                    t0,
                    rid,
                    Code.UNIMPLEMENTED,
                    f"{method} is not allowed on {path} (allowed: {', '.join(match.allowed)})",
                    status=405,
                )
            return self._error(
                request, None, t0, rid, Code.NOT_FOUND, f"no method is served at {method} {path}"
            )
        entry: MethodEntry | None = hit[2] if hit is not None else None
        if entry is None:
            entry = cs.methods.get(match.route.grpc_path)
            if hit is not None:
                hit[2] = entry
        if entry is None:
            return self._error(
                request, None, t0, rid, Code.UNIMPLEMENTED, f"{match.route.grpc_path} is not mapped"
            )
        # --- read and check the request -----------------------------------------------------
        assert request.content is not None
        body = request.content.read(self.max_body_bytes + 1)
        if len(body) > self.max_body_bytes:
            # 413, not the table's 429: retrying the same body later can never succeed.
            return self._error(
                request,
                entry,
                t0,
                rid,
                Code.RESOURCE_EXHAUSTED,
                f"request body exceeds {self.max_body_bytes} bytes (http.max_body_bytes)",
                status=413,
            )
        # Only the URL's query string: twisted.web also folds a form-encoded POST body into
        # `request.args`, and `curl -d` sends JSON labelled as a form.
        _, _, qs = request.uri.partition(b"?")
        query: dict[str, list[str]] = {}
        if qs:
            for k, v in parse_qsl(qs.decode("utf-8", "replace"), keep_blank_values=True):
                query.setdefault(k, []).append(v)
        codec = entry.json_codec
        try:
            if query or body:
                shaped = build_request(match, query, body if body else None)
            else:
                assert hit is not None
                shaped = hit[1]
                if shaped is None:  # read only from here on: the codec and ParseDict copy
                    shaped = hit[1] = build_request(match, query, None)
            # the compiled codec takes the plain shapes; ParseDict judges everything else
            msg = codec.decode(shaped)
            if msg is None:
                msg = parse_message(shaped, entry.input_class)
        except RequestError as e:
            return self._error(request, entry, t0, rid, Code.INVALID_ARGUMENT, str(e))
        except json_format.ParseError as e:
            return self._error(
                request, entry, t0, rid, Code.INVALID_ARGUMENT, f"invalid request: {e}"
            )
        headers = request.requestHeaders
        deadline = None
        gts = headers.getRawHeaders(b"grpc-timeout")
        if gts:
            gt = gts[0].decode("latin-1")
            secs = parse_grpc_timeout(gt)
            if secs is None:
                return self._error(
                    request,
                    entry,
                    t0,
                    rid,
                    Code.INVALID_ARGUMENT,
                    f"bad Grpc-Timeout header {gt!r} (expected e.g. 500m, 2S)",
                )
            deadline = t0 + secs
        ctx = CallContext.of(HeaderMeta(headers), deadline, rid)
        info: dict[str, Any] = {}
        response_field = match.route.response_field

        def done(result: Any, err: BaseException | None) -> None:
            assert entry is not None
            if err is None:
                try:
                    data: Any = codec.encode(result)
                    if response_field is not None:
                        data = data.get(response_field.json_name)
                    payload = dumps(data)
                except Exception as e:  # noqa: BLE001 - serialising failed: a JSON error
                    err = e
                else:
                    self._finish(request, entry, t0, rid, Code.OK, 200, payload, info)
                    return
            if isinstance(err, CallError):
                code, message = err.code, err.message
            elif isinstance(err, CancelledError):
                code, message = Code.CANCELLED, "cancelled"
            else:
                code, message = Code.INTERNAL, f"internal error: {type(err).__name__}: {err}"
                log.error("internal_error", method=entry.path, error=repr(err), request_id=rid)
            self._finish(
                request, entry, t0, rid, code, HTTP_STATUS[code], error_body(code, message), info,
                message,
            )

        try:
            entry.start(msg, ctx, info, done)
        except CallError as e:
            return self._error(request, entry, t0, rid, e.code, e.message)
        except Exception as e:  # noqa: BLE001 - a bug must become a JSON INTERNAL, not HTML
            log.error("internal_error", method=entry.path, error=repr(e), request_id=rid)
            return self._error(
                request, entry, t0, rid, Code.INTERNAL, f"internal error: {type(e).__name__}: {e}"
            )
        return server.NOT_DONE_YET

    def _error(
        self,
        request: Request,
        entry: MethodEntry | None,
        t0: float,
        rid: str,
        code: Code,
        message: str,
        status: int | None = None,
    ) -> bytes:
        request.setResponseCode(status or HTTP_STATUS[code])
        self._account(entry, t0, rid, code, {}, message, request)
        return error_body(code, message)

    def _finish(
        self,
        request: Request,
        entry: MethodEntry,
        t0: float,
        rid: str,
        code: Code,
        status: int,
        body: bytes,
        info: dict[str, Any],
        message: str = "",
    ) -> None:
        self._account(entry, t0, rid, code, info, message, request)
        if request.finished or request._disconnected:  # type: ignore[attr-defined]
            return
        if status != 200 or request.code != 200:  # 200 is where a request starts
            request.setResponseCode(status)
        # With a length, twisted.web sends the body as is instead of chunked (two more writes).
        request.setHeader(b"content-length", b"%d" % len(body))
        request.write(body)
        request.finish()

    def _account(
        self,
        entry: MethodEntry | None,
        t0: float,
        rid: str,
        code: Code,
        info: dict[str, Any],
        message: str,
        request: Request,
    ) -> None:
        dur = _monotonic() - t0
        if entry is not None:
            metrics.recorder.request("http", entry.service, entry.method, code.name, dur)
        else:
            metrics.recorder.request("http", "", "", code.name, None)
        if log.level > INFO:
            return  # the usual production setting: build no access line at all
        log.info(
            "access",
            front="http",
            method=entry.path if entry else request.path.decode("utf-8", "replace"),
            http_method=request.method.decode("ascii", "replace"),
            code=code.name,
            request_id=rid,
            duration_ms=round(dur * 1000, 3),
            backend=entry.backend if entry else None,
            backend_ms=backend_ms(info),
            attempts=info.get("attempts", 1),
            **({"error": message} if code is not Code.OK else {}),
        )


class QuietSite(server.Site):
    """twisted.web's default access log costs ~25% of throughput; we write our own line."""

    displayTracebacks = False

    def log(self, request: Any) -> None:
        pass


class CheapTimeoutChannel(http.HTTPChannel):
    """HTTP/1.1 with the same idle timeout, at a lower price per request.

    twisted.web stops the idle timer when a request arrives and starts a new one when its
    response is done: a `callLater` and a `cancel` per request (~4% of a JSON call on this
    stack). Here a request only moves a deadline; one timer per connection wakes up when it
    may have passed, and looks. The local address (asked for by every Request, a
    getsockname syscall each) is read once per connection.
    """

    _idle_deadline: float | None = None
    _idle_call: Any = None
    _host: Any = None

    def setTimeout(self, period: float | None) -> float | None:  # noqa: N802 - twisted's name
        prev: float | None = self.timeOut
        self.timeOut = period  # type: ignore[assignment]
        if period is None:
            self._idle_deadline = None  # a pending timer finds nothing to do
        else:
            self._idle_deadline = _monotonic() + period
            if self._idle_call is None:
                self._idle_call = self.callLater(period, self._idle_check)
        return prev

    def resetTimeout(self) -> None:  # noqa: N802 - twisted's name
        if self._idle_deadline is not None and self.timeOut is not None:
            self._idle_deadline = _monotonic() + self.timeOut

    def _idle_check(self) -> None:
        self._idle_call = None
        deadline = self._idle_deadline
        if deadline is None:
            return  # busy with a request: its end sets a new deadline and a new timer
        left = deadline - _monotonic()
        if left > 0:
            self._idle_call = self.callLater(left, self._idle_check)
            return
        self._idle_deadline = None
        self.timeoutConnection()

    def connectionLost(self, reason: Any = None) -> None:  # noqa: N802 - twisted's name
        self._idle_deadline = None
        if self._idle_call is not None and self._idle_call.active():
            self._idle_call.cancel()
        self._idle_call = None
        super().connectionLost(reason)

    def getHost(self) -> Any:  # noqa: N802 - twisted's name
        host = self._host
        if host is None:
            host = self._host = super().getHost()
        return host


class BoundedRequest(server.Request):
    """Keeps at most `max_body_bytes + 1` bytes of a request body and drops the rest as it
    arrives, so an oversized upload (with or without Content-Length) costs neither memory
    nor temp-file space; `JsonResource` then sees one byte too many and answers 413."""

    max_body_bytes = 4 * 1024 * 1024  # replaced by a per-site subclass in make_site
    _kept = 0

    def gotLength(self, length: int | None) -> None:  # noqa: N802 - twisted's name
        self._kept = 0
        cap = self.max_body_bytes + 1
        super().gotLength(cap if length is None or length > cap else length)

    def handleContentChunk(self, data: bytes) -> None:  # noqa: N802 - twisted's name
        room = self.max_body_bytes + 1 - self._kept
        if room > 0:
            chunk = data[:room]
            self._kept += len(chunk)
            super().handleContentChunk(chunk)


def make_site(current: CurrentSet, max_body_bytes: int, limits: Any = None) -> QuietSite:
    """`limits`: the `http:` config section (read/idle timeouts, header limits); None: defaults."""
    from .http_guard import GuardMixin

    site = QuietSite(JsonResource(current, max_body_bytes))
    bounded: type[BoundedRequest] = type(
        "BoundedRequest", (BoundedRequest,), {"max_body_bytes": max_body_bytes}
    )
    site.requestFactory = bounded
    if limits is None:
        from ..config.schema import Http

        limits = Http(listen="127.0.0.1:0")
    site.timeOut = limits.idle_timeout
    site.protocol = type("GuardedChannel", (GuardMixin, CheapTimeoutChannel), {  # type: ignore[assignment]
        "read_timeout": limits.read_timeout, "max_body_bytes": max_body_bytes,
        "maxHeaders": limits.max_headers, "totalHeadersSize": limits.max_header_bytes,
        "MAX_LENGTH": limits.max_header_bytes,
    })
    site.noisy = False
    return site
