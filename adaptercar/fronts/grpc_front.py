"""The gRPC front: one generic handler serving every mapped method of the current config set.

Handlers are built once per config set (`build_handler`), and looked up per call by the
method path in a dict, so a reload is a pointer swap and calls already running finish on the
set they started with. grpc.aio runs on the asyncio loop that Twisted's asyncioreactor drives;
a call's backend outcome resolves a plain asyncio future (MethodEntry.start's callback form).
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from random import getrandbits
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_reflection.v1alpha._async import ReflectionServicer

from .. import metrics
from ..logs import INFO, log
from ..mapping.errors import CallError, Code
from ..mapping.operation import CallContext
from .calls import CurrentSet, LazyMeta, MethodEntry, backend_ms, new_request_id

_GRPC_CODES = {c.value[0]: c for c in grpc.StatusCode}
_DEADLINE_SLACK = 0.1  # seconds: a cancellation this close to the deadline is the deadline
_monotonic = time.monotonic


def _status(code: Code) -> grpc.StatusCode:
    return _GRPC_CODES[int(code)]


class GrpcMeta(LazyMeta):
    """gRPC invocation metadata: the last value of a repeated key, text values only."""

    __slots__ = ()

    def _build(self) -> dict[str, str]:
        return {k.lower(): v for k, v in self._raw or () if isinstance(v, str)}

    def _one(self, key: str, default: Any) -> Any:
        found = default
        for k, v in self._raw or ():
            if isinstance(v, str) and k.lower() == key:
                found = v  # the last one, as in the dict
        return found


class _Malformed:
    """A request whose bytes are not the method's message. grpc would answer a deserializer's
    exception with UNKNOWN and no access line; the handler answers INVALID_ARGUMENT instead."""

    __slots__ = ("error",)

    def __init__(self, error: str) -> None:
        self.error = error


def _lenient(entry: MethodEntry) -> Callable[[bytes], Any]:
    from_string = entry.input_class.FromString
    name = entry.input_class.DESCRIPTOR.full_name

    def parse(data: bytes) -> Any:
        try:
            return from_string(data)
        except Exception as e:  # noqa: BLE001 - DecodeError and friends: the caller's bytes
            return _Malformed(f"the request is not a valid {name} message: {e}")

    return parse


def build_handler(
    entry: MethodEntry, loop_getter: Callable[[], asyncio.AbstractEventLoop]
) -> grpc.RpcMethodHandler:
    return grpc.unary_unary_rpc_method_handler(
        functools.partial(_serve, entry, loop_getter),
        request_deserializer=_lenient(entry),
        response_serializer=entry.output_class.SerializeToString,
    )


async def _serve(
    entry: MethodEntry,
    loop_getter: Callable[[], asyncio.AbstractEventLoop],
    request: Any,
    context: grpc.aio.ServicerContext,
) -> Any:
    """One call, from request to reply or abort (a partial: no closure per set and method)."""
    t0 = _monotonic()
    meta = GrpcMeta(context.invocation_metadata())
    rid = meta.get("x-request-id") or getrandbits(64).to_bytes(8, "big").hex()  # new_request_id()
    remaining = context.time_remaining()
    deadline = t0 + remaining if remaining is not None else None
    ctx = CallContext.of(meta, deadline, rid)
    code = Code.OK
    message = ""
    reply: Any = None
    info: dict[str, Any] = {}
    # The backend's outcome resolves a plain asyncio future: no Deferred, no asFuture.
    fut = loop_getter().create_future()

    def done(result: Any, err: BaseException | None) -> None:
        if fut.done():
            return  # the handler was cancelled
        if err is None:
            fut.set_result(result)
        else:
            fut.set_exception(err)

    cancel: Callable[[], None] | None = None
    try:
        if request.__class__ is _Malformed:
            raise CallError(Code.INVALID_ARGUMENT, request.error)
        cancel = entry.start(request, ctx, info, done)
        reply = await fut
    except CallError as e:
        code, message = e.code, e.message
    except asyncio.CancelledError:
        if cancel is not None:
            cancel()
        # grpc cancels the handler when the deadline passes, often a hair before the
        # backend's own timer fires: the access log must still say DEADLINE_EXCEEDED.
        left = context.time_remaining()
        if left is not None and left <= _DEADLINE_SLACK:
            code, message = Code.DEADLINE_EXCEEDED, "deadline exceeded"
        else:
            code, message = Code.CANCELLED, "cancelled by the caller"
        raise
    except Exception as e:  # noqa: BLE001 - a bug must become INTERNAL, never a hang
        code, message = Code.INTERNAL, f"internal error: {type(e).__name__}: {e}"
        log.error("internal_error", method=entry.path, error=repr(e), request_id=rid)
    finally:
        dur = _monotonic() - t0
        metrics.recorder.request("grpc", entry.service, entry.method, code.name, dur)
        if log.level <= INFO:
            log.info(
                "access",
                front="grpc",
                method=entry.path,
                code=code.name,
                request_id=rid,
                duration_ms=round(dur * 1000, 3),
                backend=entry.backend,
                backend_ms=backend_ms(info),
                attempts=info.get("attempts", 1),
                **({"error": message} if code is not Code.OK else {}),
            )
    if code is Code.OK:
        return reply
    await context.abort(_status(code), message)


class _Dispatch(grpc.GenericRpcHandler):
    def __init__(self, current: CurrentSet) -> None:
        self.current = current

    def service(
        self, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        return self.current.get().grpc_handlers.get(handler_call_details.method)  # type: ignore[no-any-return]


async def _unimplemented(
    path: str, request_iterator: Any, context: grpc.aio.ServicerContext
) -> None:
    """Every method nobody serves: one access line like any call, then UNIMPLEMENTED.
    A stream handler, so it answers any call shape without reading the request."""
    meta = GrpcMeta(context.invocation_metadata())
    rid = meta.get("x-request-id") or new_request_id()
    message = f"method {path} is not served here"
    metrics.recorder.request("grpc", "", "", Code.UNIMPLEMENTED.name, None)
    log.info(
        "access",
        front="grpc",
        method=path,
        code=Code.UNIMPLEMENTED.name,
        request_id=rid,
        duration_ms=0.0,
        backend=None,
        backend_ms=None,
        attempts=0,
        error=message,
    )
    await context.abort(grpc.StatusCode.UNIMPLEMENTED, message)


class _Fallback(grpc.GenericRpcHandler):
    """Registered last, after health and reflection, so it only sees unknown methods
    (an error path: building a handler per call is fine here)."""

    def service(
        self, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        path = handler_call_details.method
        if isinstance(path, bytes):
            path = path.decode("utf-8", "replace")
        return grpc.stream_stream_rpc_method_handler(functools.partial(_unimplemented, path))


class _Reflection(reflection_pb2_grpc.ServerReflectionServicer):
    """Forwards to the reflection servicer of the current set, so a reload that changes the
    protos is visible to `grpcurl list` without a restart."""

    def __init__(self, current: CurrentSet) -> None:
        self.current = current

    async def ServerReflectionInfo(self, request_iterator: Any, context: Any) -> Any:  # noqa: N802
        servicer = self.current.get().reflection
        async for resp in servicer.ServerReflectionInfo(request_iterator, context):
            yield resp


def reflection_servicer(service_names: list[str], pool: Any) -> ReflectionServicer:
    names = [
        *service_names,
        reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"].full_name,
        health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
    ]
    return ReflectionServicer(names, pool=pool)


class _GenericOnly:
    """Lets generated `add_*Servicer_to_server` functions add their generic handler only.

    They also register their methods by name with grpc core, and grpc.aio's server loop then
    waits on one pending future per registered method for every call it accepts (asyncio.wait
    over all of them, per call): health and reflection, called rarely, made every mapped call
    pay for four more. Served through their generic handler they answer the same."""

    def __init__(self, server: grpc.aio.Server) -> None:
        self.server = server

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        self.server.add_generic_rpc_handlers(handlers)

    def add_registered_method_handlers(self, service: str, handlers: Any) -> None:
        pass  # the generic handler added just before serves the same methods


class GrpcFront:
    def __init__(
        self, current: CurrentSet, listen: str, max_message_bytes: int, reflection: bool,
        tls: Any = None, shared: bool = False,
    ) -> None:
        self.tls = tls  # tls.GrpcServerTls, or None: plaintext
        self.shared = shared  # other workers listen on the same port: SO_REUSEPORT
        self.current = current
        self.listen = listen
        self.max_message_bytes = max_message_bytes
        self.reflection = reflection
        self.server: grpc.aio.Server | None = None
        self.health = health.aio.HealthServicer()
        self.port = 0

    async def start(self) -> None:
        # The limit bounds what callers send; replies are bounded by the mapping's
        # max_reply_bytes. Capping sends too would break reflection (descriptor files with
        # their imports) for anyone who lowers the limit to protect the backend.
        opts = [
            ("grpc.max_receive_message_length", self.max_message_bytes),
            ("grpc.so_reuseport", int(self.shared)),
        ]
        server = grpc.aio.server(options=opts)
        server.add_generic_rpc_handlers([_Dispatch(self.current)])
        target = _GenericOnly(server)  # health and reflection: no registered methods
        health_pb2_grpc.add_HealthServicer_to_server(self.health, target)
        if self.reflection:
            reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
                _Reflection(self.current), target
            )  # type: ignore[no-untyped-call]
        server.add_generic_rpc_handlers([_Fallback()])
        if self.tls is not None:
            self.port = server.add_secure_port(self.listen, self.tls.credentials)
        else:
            self.port = server.add_insecure_port(self.listen)
        if self.port == 0:
            raise OSError(f"gRPC front cannot listen on {self.listen}")
        await server.start()
        self.server = server
        await self.update_health()

    async def update_health(self) -> None:
        cs = self.current.get()
        ready = cs.ready()
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if ready
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        await self.health.set("", status)
        for svc in cs.service_backends:
            ok = all(cs.backend_ready(b) for b in cs.service_backends[svc])
            await self.health.set(
                svc,
                health_pb2.HealthCheckResponse.SERVING
                if ok
                else health_pb2.HealthCheckResponse.NOT_SERVING,
            )

    async def stop(self, grace: float) -> None:
        if self.server is not None:
            await self.health.enter_graceful_shutdown()
            await self.server.stop(grace)
            self.server = None
