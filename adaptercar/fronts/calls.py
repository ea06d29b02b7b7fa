"""What a front needs from a loaded configuration: the served methods and backend readiness.

A `ConfigSet` is one whole generation of configuration. Fronts read `CurrentSet.get()` once
per call and use only that object for the call, so a reload (a pointer swap) never changes
anything under a call in flight.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import Deferred

from ..mapping.operation import CallContext

Invoke = Callable[[Any, CallContext, dict[str, Any]], "Deferred[Any]"]


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
