"""What a front needs from a loaded configuration: the served methods and backend readiness.

A `ConfigSet` is one whole generation of configuration. Fronts read `CurrentSet.get()` once
per call and use only that object for the call, so a reload (a pointer swap) never changes
anything under a call in flight.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from random import getrandbits
from typing import Any

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from ..mapping.operation import CallContext


class LazyMeta(Mapping[str, str]):
    """A call's metadata (lower-case names, text values), turned into a dict only when a
    template or a backend reads it: most calls never do. Each front says how in `_build`."""

    __slots__ = ("_raw", "_dict")

    def __init__(self, raw: Any) -> None:
        self._raw = raw
        self._dict: dict[str, str] | None = None

    def _build(self) -> dict[str, str]:
        raise NotImplementedError

    def _one(self, key: str, default: Any) -> Any:
        """What `_build()[key]` would be, without building the rest: the sidecar itself reads
        one key per call (traceparent, authorization)."""
        raise NotImplementedError

    def _get(self) -> dict[str, str]:
        d = self._dict
        if d is None:
            d = self._dict = self._build()
        return d

    def __getitem__(self, key: str) -> str:
        return self._get()[key]

    def get(self, key: str, default: Any = None) -> Any:
        d = self._dict
        return self._one(key, default) if d is None else d.get(key, default)

    def __iter__(self) -> Iterator[str]:
        return iter(self._get())

    def __len__(self) -> int:
        return len(self._get())

    def __repr__(self) -> str:
        return repr(self._get())

Invoke = Callable[[Any, CallContext, dict[str, Any]], "Deferred[Any]"]
#: The outcome of a call: (message, None) or (None, the exception).
Done = Callable[[Any, BaseException | None], None]
#: Starts a call; `done` runs exactly once, maybe before `start` returns. Raises CallError at
#: once for a request that cannot be sent. Returns a function that gives up on the call.
Start = Callable[[Any, CallContext, dict[str, Any], Done], Callable[[], None]]


def backend_ms(info: dict[str, Any]) -> float | None:
    """The access log's backend_ms: set by the backend, or derived from its seconds (rounding
    a float to 3 places is slow enough to be left to the access line)."""
    ms = info.get("backend_ms")
    if ms is None:
        secs = info.get("backend_s")
        if secs is not None:
            ms = round(secs * 1000, 3)
    return ms


def new_request_id() -> str:
    """16 hex digits. Not a secret, just unique enough to find a call in the logs: a PRNG
    draw, not os.urandom's syscall per request."""
    return getrandbits(64).to_bytes(8, "big").hex()


class CallbackInvoke:
    """An `Invoke` that also offers the callback form `start`, which the fronts use: a
    Deferred chain per call cost more than the rest of the bookkeeping of a call."""

    __slots__ = ("start",)

    def __init__(self, start: Start) -> None:
        self.start = start

    def __call__(self, request: Any, ctx: CallContext, info: dict[str, Any]) -> Deferred[Any]:
        cancel: list[Callable[[], None]] = []
        d: Deferred[Any] = Deferred(lambda _: cancel[0]() if cancel else None)

        def done(result: Any, err: BaseException | None) -> None:
            if d.called:
                return
            if err is None:
                d.callback(result)
            else:
                d.errback(Failure(err))

        cancel.append(self.start(request, ctx, info, done))
        return d


def start_from_invoke(invoke: Invoke) -> Start:
    """The callback form of a Deferred-returning `Invoke` (backends without one of their own)."""
    fast = getattr(invoke, "start", None)
    if fast is not None:
        return fast  # type: ignore[no-any-return]

    def start(request: Any, ctx: CallContext, info: dict[str, Any], done: Done) -> Callable[[], None]:
        d = invoke(request, ctx, info)

        def failed(f: Failure) -> None:
            done(None, f.value)

        d.addCallbacks(lambda r: done(r, None), failed)
        return d.cancel

    return start


@dataclass
class MethodEntry:
    service: str
    method: str
    input_class: Any
    output_class: Any
    backend: str
    invoke: Invoke
    descriptor: Any = None  # MethodDescriptor
    auth: str = "none"
    start: Start = field(init=False, repr=False, compare=False)
    _codec: Any = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.start = start_from_invoke(self.invoke)

    @property
    def json_codec(self) -> Any:
        """The method's compiled proto3-JSON codec, built on first use (JSON worker only)."""
        codec = self._codec
        if codec is None:
            from .json_codec import MessageCodec

            codec = self._codec = MessageCodec(self.input_class, self.output_class)
        return codec

    @property
    def path(self) -> str:
        return f"/{self.service}/{self.method}"


@dataclass
class ConfigSet:
    """One generation of config. Front-specific caches (gRPC handlers, HTTP router) are
    filled by each front when the set is installed, once."""

    generation: int
    config: Any
    protoset: Any
    methods: dict[str, MethodEntry]
    backends: dict[str, Any]  # name -> backend object with .ready / .state()
    service_backends: dict[str, set[str]] = field(default_factory=dict)
    grpc_handlers: dict[str, Any] = field(default_factory=dict)
    reflection: Any = None
    router: Any = None
    openapi: bytes = b"{}"
    # (http method, path) -> [Match, the request shaped from the path alone or None, its
    # MethodEntry or None]: see JsonResource.render
    route_cache: dict[tuple[str, str], list[Any]] = field(default_factory=dict)

    def backend_ready(self, name: str) -> bool:
        b = self.backends.get(name)
        return bool(b is not None and b.ready)

    def ready(self) -> bool:
        return all(b.ready for b in self.backends.values())


class CurrentSet:
    def __init__(self, initial: ConfigSet) -> None:
        self._current = initial

    def get(self) -> ConfigSet:
        return self._current

    def swap(self, new: ConfigSet) -> ConfigSet:
        old, self._current = self._current, new
        return old
