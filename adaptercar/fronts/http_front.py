"""The JSON/HTTP front on twisted.web: proto3 JSON in and out, errors as google.rpc Status.

Routing and request shaping are sans-IO (`http_routes`); this shell only reads the body,
parses it into the request message (which is where wrong types are caught, before anything
reaches a backend), invokes the method and writes JSON the way grpc-gateway v2 does.
"""

from __future__ import annotations

import json
import os
import re
import time
from typing import Any
from urllib.parse import parse_qsl

from google.protobuf import json_format
from twisted.internet.defer import CancelledError
from twisted.python.failure import Failure
from twisted.web import resource, server
from twisted.web.http import Request

from .. import metrics
from ..logs import log
from ..mapping.errors import HTTP_STATUS, CallError, Code
from ..mapping.operation import CallContext
from .calls import CurrentSet, MethodEntry
from .http_routes import Match, MethodNotAllowed, RequestError, build_request, parse_message

_TIMEOUT_RE = re.compile(r"^(\d{1,8})([HMSmun])$")
_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}
_JSON = b"application/json"


def parse_grpc_timeout(value: str) -> float | None:
    """`Grpc-Timeout: 500m` → 0.5 seconds; None when malformed (the caller answers 400)."""
    m = _TIMEOUT_RE.match(value.strip())
    if m is None:
        return None
    return int(m.group(1)) * _UNITS[m.group(2)]


def to_json(msg: Any) -> dict[str, Any]:
    """grpc-gateway v2 style: lowerCamel names, default values included, int64 as strings."""
    return json_format.MessageToDict(msg, always_print_fields_with_no_presence=True)  # type: ignore[no-any-return]


def error_body(code: Code, message: str) -> bytes:
    return json.dumps({"code": int(code), "message": message, "details": []}).encode()


class JsonResource(resource.Resource):
    isLeaf = True

    def __init__(self, current: CurrentSet, max_body_bytes: int) -> None:
        super().__init__()
        self.current = current
        self.max_body_bytes = max_body_bytes

    def render(self, request: Request) -> Any:  # type: ignore[override]
        t0 = time.monotonic()
        cs = self.current.get()
        method = request.method.decode("ascii", "replace")
        path = request.path.decode("utf-8", "replace")
        request.setHeader(b"content-type", _JSON)
        if method == "GET" and path == "/openapi.json":
            return cs.openapi
        rid = (request.getHeader("x-request-id") or "") or os.urandom(8).hex()
        match = cs.router.match(method, path)
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
        entry: MethodEntry | None = cs.methods.get(match.route.grpc_path)
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
        try:
            shaped = build_request(match, query, body if body else None)
            msg = parse_message(shaped, entry.input_class)
        except RequestError as e:
            return self._error(request, entry, t0, rid, Code.INVALID_ARGUMENT, str(e))
        except json_format.ParseError as e:
            return self._error(
                request, entry, t0, rid, Code.INVALID_ARGUMENT, f"invalid request: {e}"
            )
        meta = {
            k.decode("latin-1").lower(): vs[0].decode("latin-1")
            for k, vs in request.requestHeaders.getAllRawHeaders()
            if vs
        }  # type: ignore[misc]
        deadline = None
        gt = meta.get("grpc-timeout")
        if gt is not None:
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
        ctx = CallContext(meta=meta, deadline=deadline, request_id=rid)
        info: dict[str, Any] = {}
        try:
            d = entry.invoke(msg, ctx, info)
        except CallError as e:
            return self._error(request, entry, t0, rid, e.code, e.message)
        except Exception as e:  # noqa: BLE001 - a bug must become a JSON INTERNAL, not HTML
            log.error("internal_error", method=entry.path, error=repr(e), request_id=rid)
            return self._error(
                request, entry, t0, rid, Code.INTERNAL, f"internal error: {type(e).__name__}: {e}"
            )
        response_field = match.route.response_field

        def ok(result: Any) -> None:
            data: Any = to_json(result)
            if response_field is not None:
                data = data.get(response_field.json_name)
            payload = json.dumps(data).encode()
            self._finish(request, entry, t0, rid, Code.OK, 200, payload, info)

        def bad(f: Failure) -> None:
            err = f.value
            if isinstance(err, CallError):
                code, message = err.code, err.message
            elif isinstance(err, CancelledError):
                code, message = Code.CANCELLED, "cancelled"
            else:
                code, message = Code.INTERNAL, f"internal error: {type(err).__name__}: {err}"
                log.error("internal_error", method=entry.path, error=repr(err), request_id=rid)
            self._finish(
                request,
                entry,
                t0,
                rid,
                code,
                HTTP_STATUS[code],
                error_body(code, message),
                info,
                message,
            )

        # A failure inside `ok` (serialising the reply) also becomes a JSON error: an
        # unhandled Deferred error would leave the caller waiting forever.
        d.addCallback(ok)
        d.addErrback(bad)
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
        request.setResponseCode(status)
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
        dur = time.monotonic() - t0
        service, method = (entry.service, entry.method) if entry else ("", "")
        metrics.recorder.request("http", service, method, code.name, dur if entry is not None else None)
        log.info(
            "access",
            front="http",
            method=entry.path if entry else request.path.decode("utf-8", "replace"),
            http_method=request.method.decode("ascii", "replace"),
            code=code.name,
            request_id=rid,
            duration_ms=round(dur * 1000, 3),
            backend=entry.backend if entry else None,
            backend_ms=info.get("backend_ms"),
            attempts=info.get("attempts", 1),
            **({"error": message} if code is not Code.OK else {}),
        )


class QuietSite(server.Site):
    """twisted.web's default access log costs ~25% of throughput; we write our own line."""

    displayTracebacks = False

    def log(self, request: Any) -> None:
        pass


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


def make_site(current: CurrentSet, max_body_bytes: int) -> QuietSite:
    site = QuietSite(JsonResource(current, max_body_bytes))
    bounded: type[BoundedRequest] = type(
        "BoundedRequest", (BoundedRequest,), {"max_body_bytes": max_body_bytes}
    )
    site.requestFactory = bounded
    site.noisy = False
    return site
