"""The Prometheus metrics of DESIGN.md, defined once.

Workers are separate processes, so every metric is written through prometheus-client's
multiprocess mode when `PROMETHEUS_MULTIPROC_DIR` is set (the supervisor sets it before any
worker starts); gauges declare how values from several processes combine.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Any

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
backend_shed_total = Counter(
    "adaptercar_backend_shed_total",
    "Calls refused by a backend's admission (max_concurrency + queue), by reason: queue_full and "
    "deadline answered at once, expired when the deadline passed in the queue.",
    ["backend", "reason"],
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


# --- per-call recording, batched --------------------------------------------------------------
# In multiprocess mode every prometheus-client write is an mmap write behind a lock and a pid
# check; profiled at ~17% of a JSON call's CPU. Calls therefore count into plain dicts and a
# timer flushes them once a second (and at shutdown), so scrapes lag by at most a second.

_BOUNDS = _LAT


class _Hist:
    __slots__ = ("buckets", "sum")

    def __init__(self) -> None:
        self.buckets = [0] * (len(_BOUNDS) + 1)  # the last one is +Inf
        self.sum = 0.0


FLUSH_EVERY = 0.5


class Recorder:
    """Counts calls in plain dicts; the first record after a flush schedules the next flush,
    so values reach /metrics within FLUSH_EVERY seconds and an idle worker wakes for nothing."""

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str, str, str], int] = {}
        self.request_hist: dict[tuple[str, str, str], _Hist] = {}
        self.backend: dict[tuple[str, str], int] = {}
        self.backend_hist: dict[str, _Hist] = {}
        self.scheduled = False
        self.shutdown_hooked = False

    def _touch(self) -> None:
        if self.scheduled:
            return
        self.scheduled = True
        from twisted.internet import reactor as _reactor

        reactor: Any = _reactor
        if not self.shutdown_hooked:
            self.shutdown_hooked = True
            reactor.addSystemEventTrigger("before", "shutdown", self.flush)
        reactor.callLater(FLUSH_EVERY, self.flush)

    def request(self, front: str, service: str, method: str, code: str, seconds: float | None) -> None:
        if not self.scheduled:
            self._touch()
        k = (front, service, method, code)
        self.requests[k] = self.requests.get(k, 0) + 1
        if seconds is not None:
            hk = (front, service, method)
            h = self.request_hist.get(hk)
            if h is None:
                h = self.request_hist[hk] = _Hist()
            h.sum += seconds  # _Hist.observe, inline: once per call
            h.buckets[bisect_left(_BOUNDS, seconds)] += 1

    def backend_call(self, backend: str, outcome: str, seconds: float) -> None:
        if not self.scheduled:
            self._touch()
        k = (backend, outcome)
        self.backend[k] = self.backend.get(k, 0) + 1
        h = self.backend_hist.get(backend)
        if h is None:
            h = self.backend_hist[backend] = _Hist()
        h.sum += seconds  # _Hist.observe, inline: once per call
        h.buckets[bisect_left(_BOUNDS, seconds)] += 1

    def flush(self) -> None:
        self.scheduled = False
        reqs, self.requests = self.requests, {}
        for k, n in reqs.items():
            requests_total.labels(*k).inc(n)
        bk, self.backend = self.backend, {}
        for k2, n in bk.items():
            backend_requests_total.labels(*k2).inc(n)
        for hk, h in self.request_hist.items():
            _flush_hist(request_duration.labels(*hk), h)
        self.request_hist = {}
        for name, h in self.backend_hist.items():
            _flush_hist(backend_duration.labels(name), h)
        self.backend_hist = {}


def _flush_hist(child: Any, h: _Hist) -> None:
    child._sum.inc(h.sum)
    for i, n in enumerate(h.buckets):
        if n:
            child._buckets[i].inc(n)


recorder = Recorder()


# --- ambassador (outbound routes) -------------------------------------------------------------
ambassador_requests_total = Counter(
    "adaptercar_ambassador_requests_total", "Calls answered by an ambassador route.", ["route", "code"]
)
ambassador_retries_total = Counter(
    "adaptercar_ambassador_retries_total", "Retries sent by an ambassador route, by reason.", ["route", "reason"]
)
circuit_state = Gauge(
    "adaptercar_circuit_state",
    "Breaker state per route endpoint: 0 closed, 1 half-open, 2 open.",
    ["route", "endpoint"],
    multiprocess_mode="livemax",
)
discovery_refreshes_total = Counter(
    "adaptercar_discovery_refreshes_total", "Upstream discovery refreshes by outcome.", ["route", "outcome"]
)


# --- companion duties (one companion worker: its gauges keep the live maximum) ----------------
companion_stats_up = Gauge(
    "adaptercar_companion_stats_up",
    "1 when the last stats poll of the backend succeeded, 0 when it failed.",
    ["backend"],
    multiprocess_mode="livemax",
)
companion_log_lines_total = Counter(
    "adaptercar_companion_log_lines_total",
    "Lines read from tailed legacy log files, by outcome (parsed, unparsed, cut).",
    ["source", "outcome"],
)
_companion_stats_gauges: dict[str, Gauge] = {}


def companion_stats_gauge(name: str) -> Gauge:
    """The gauge for one stats metric name, created on first use (names come from the legacy
    app's reply, so they are only known at run time) and kept for the process's lifetime."""
    g = _companion_stats_gauges.get(name)
    if g is None:
        g = _companion_stats_gauges[name] = Gauge(
            name, "A number reported by the legacy application's own stats command.", ["backend"],
            multiprocess_mode="livemax",
        )
    return g
