"""The Prometheus metrics of DESIGN.md, defined once.

Workers are separate processes, so every metric is written through prometheus-client's
multiprocess mode when `PROMETHEUS_MULTIPROC_DIR` is set (the supervisor sets it before any
worker starts); gauges declare how values from several processes combine.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

_LAT = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

requests_total = Counter(
    "adaptercar_requests_total", "Calls answered by a front.", ["front", "service", "method", "code"]
)
request_duration = Histogram(
    "adaptercar_request_duration_seconds",
    "Time from request received to response written, per front and method.",
    ["front", "service", "method"],
    buckets=_LAT,
)
backend_requests_total = Counter(
    "adaptercar_backend_requests_total", "Calls sent to a legacy backend, by outcome.", ["backend", "outcome"]
)
backend_duration = Histogram(
    "adaptercar_backend_duration_seconds", "Time spent in the legacy backend per call.", ["backend"], buckets=_LAT
)
backend_pool_connections = Gauge(
    "adaptercar_backend_pool_connections",
    "Pooled backend connections by state.",
    ["backend", "state"],
    multiprocess_mode="livesum",
)
backend_restarts_total = Counter(
    "adaptercar_backend_restarts_total", "Backend connections or children replaced, by reason.", ["backend", "reason"]
)
config_reloads_total = Counter(
    "adaptercar_config_reloads_total", "Configuration reloads by outcome.", ["outcome"]
)
worker_restarts_total = Counter(
    "adaptercar_worker_restarts_total", "Worker processes restarted by the supervisor.", ["role"]
)
backend_up = Gauge(
    "adaptercar_backend_up",
    "1 when the backend is ready in this worker (probe passing or pool connected).",
    ["backend"],
    multiprocess_mode="livemin",
)
