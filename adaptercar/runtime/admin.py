"""Admin endpoints: /healthz, /readyz, /metrics, /config, POST /reload.

Served by the supervisor (or the single process), which answers from what workers reported
over the control channel, so readiness and metrics are one view of the whole sidecar.
"""

from __future__ import annotations

import json
import os
from typing import Any, Protocol

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from twisted.internet import defer
from twisted.python.failure import Failure
from twisted.web import resource, server


class AdminModel(Protocol):
    def readiness(self) -> tuple[bool, dict[str, Any]]: ...

    def config_view(self) -> dict[str, Any]: ...

    def reload(self) -> defer.Deferred[dict[str, Any]]: ...


def metrics_text() -> bytes:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)
    from prometheus_client import REGISTRY

    return generate_latest(REGISTRY)


def _json(request: Any, status: int, obj: Any) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    return json.dumps(obj, indent=2, default=str).encode() + b"\n"


class AdminResource(resource.Resource):
    isLeaf = True

    def __init__(self, model: AdminModel) -> None:
        super().__init__()
        self.model = model

    def render_GET(self, request: Any) -> bytes:  # noqa: N802
        path = request.path.decode()
        if path == "/healthz":
            return _json(request, 200, {"status": "ok"})
        if path == "/readyz":
            ok, detail = self.model.readiness()
            return _json(request, 200 if ok else 503, {"ready": ok, **detail})
        if path == "/metrics":
            request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode())
            return metrics_text()
        if path == "/config":
            return _json(request, 200, self.model.config_view())
        if path == "/ambassador":
            view = getattr(self.model, "ambassador_view", None)
            return _json(request, 200, view() if view is not None else {"routes": []})
        return _json(request, 404, {"error": f"no admin endpoint {path}",
                                    "endpoints": ["/healthz", "/readyz", "/metrics", "/config", "/ambassador",
                                                  "POST /reload"]})

    def render_POST(self, request: Any) -> Any:  # noqa: N802
        if request.path != b"/reload":
            return _json(request, 404, {"error": "POST only at /reload"})
        d = self.model.reload()

        def done(result: dict[str, Any]) -> None:
            request.write(_json(request, 200 if result.get("ok") else 400, result))
            request.finish()

        def failed(f: Failure) -> None:
            request.write(_json(request, 500, {"ok": False, "errors": [str(f.value)]}))
            request.finish()

        d.addCallbacks(done, failed)
        return server.NOT_DONE_YET


class _QuietSite(server.Site):
    displayTracebacks = False

    def log(self, request: Any) -> None:
        pass


def admin_site(model: AdminModel) -> server.Site:
    site = _QuietSite(AdminResource(model))
    site.noisy = False
    return site
