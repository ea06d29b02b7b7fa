"""The routes of one process as a twisted.application service (listen on start, stop on stop)."""

from __future__ import annotations

from typing import Any

from twisted.application import service
from twisted.internet import defer

from .route import Route


class AmbassadorService(service.Service):
    def __init__(self, routes_cfg: Any, reactor: Any) -> None:
        self.routes = [Route(r, reactor) for r in routes_cfg]

    def startService(self) -> None:  # noqa: N802 - twisted's name
        super().startService()
        for r in self.routes:
            r.start()

    def stopService(self) -> defer.Deferred[Any]:  # noqa: N802 - twisted's name
        super().stopService()
        return defer.DeferredList([r.stop() for r in self.routes], consumeErrors=True)

    def view(self) -> dict[str, Any]:
        return {"routes": [r.view() for r in self.routes]}
