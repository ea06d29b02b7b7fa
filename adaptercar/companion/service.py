"""The companion duties as one `twisted.application` service, hosted once per sidecar.

They run once (in the `companion` worker, or in the single process): two workers tailing the
same file would emit every line twice. Stats get their own small pool per backend (one
connection is plenty for a poll every few seconds) so a poll never queues behind calls.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import Any

from twisted.application import service
from twisted.internet import defer

from ..backends.line import LinePool, LineSpec
from ..backends.process import ProcessPool, ProcessSpec
from ..logs import log
from ..runtime import control
from .config_render import ConfigRenderer
from .stats import StatsConfigError, StatsPoller, StatsReader, compile_stats
from .tail import FileFollower, LogEmitter, LogTail

POLL_INTERVAL = 0.25
CONFIG_EVERY = 1.0


class CompanionService(service.Service):
    what = "companion duties"

    def __init__(self, config: Any, specs: dict[str, LineSpec | ProcessSpec], reactor: Any,
                 poll_interval: float = POLL_INTERVAL,
                 restart: Callable[[str], None] = control.request_restart) -> None:
        """`config` is the `companion:` section; `specs` the compiled backend specs (Loaded.specs).
        `restart(backend)` carries out `on_change: {restart: BACKEND}` (in a worker: through the
        supervisor, to every worker that owns that backend)."""
        self.reactor = reactor
        self.tails: list[LogTail] = []
        self.pollers: list[StatsPoller] = []
        self.pools: dict[str, LinePool | ProcessPool] = {}
        self.unregister: Callable[[], None] | None = None
        for entry in config.logs:
            parse = re.compile(entry.parse) if entry.parse else None
            source = str(entry.fields.get("source") or entry.path)
            follower = FileFollower(str(entry.path), entry.max_line_bytes, from_start=entry.from_ == "start")
            emitter = LogEmitter(source, parse, entry.fields)
            self.tails.append(LogTail(follower, emitter.emit, reactor, poll_interval))
        for entry in config.stats:
            spec = specs.get(entry.backend)
            if spec is None:
                log.error("companion_stats_skipped", backend=entry.backend, error="no line or process backend")
                continue
            try:
                sspec = compile_stats(entry, spec.framing, spec.encoding, spec.timeout)
            except StatsConfigError as e:
                log.error("companion_stats_skipped", backend=entry.backend, error=str(e))
                continue
            pool: LinePool | ProcessPool
            if isinstance(spec, ProcessSpec):
                pool = ProcessPool(dataclasses.replace(spec, pool_size=1), reactor)
            else:
                pool = LinePool(dataclasses.replace(spec, pool_size=1, probe=None), reactor)
            self.pools[entry.backend] = pool
            self.pollers.append(StatsPoller(sspec, _sender(pool), reactor))
        self.renderers = [ConfigRenderer(entry, restart=restart, in_thread=reactor.callInThread)
                          for entry in config.config]
        self.config_every = CONFIG_EVERY
        self.config_call: Any = None

    def startService(self) -> None:  # noqa: N802 - twisted's name
        super().startService()
        for pool in self.pools.values():
            pool.start()
        self.unregister = control.on_restart(self._restart_stats_pool)
        for tail in self.tails:
            tail.start()
        for poller in self.pollers:
            poller.start()
        if self.renderers:
            self._render()

    def _restart_stats_pool(self, backend: str) -> None:
        """A restarted backend's stats are polled from its new children / connections too."""
        pool = self.pools.get(backend)
        if pool is not None:
            pool.restart()

    def _render(self) -> None:
        self.config_call = None
        for r in self.renderers:
            try:
                r.poll()
            except Exception as e:  # noqa: BLE001 - one broken entry must not stop the others
                log.error("companion_config_failed", output=r.output, error=f"{type(e).__name__}: {e}")
        if self.running:
            self.config_call = self.reactor.callLater(self.config_every, self._render)

    def stopService(self) -> defer.Deferred[Any]:  # noqa: N802 - twisted's name
        super().stopService()
        if self.unregister is not None:
            self.unregister()
        for poller in self.pollers:
            poller.stop()
        if self.config_call is not None and self.config_call.active():
            self.config_call.cancel()
        for tail in self.tails:
            tail.stop()
        results = [defer.maybeDeferred(pool.stop) for pool in self.pools.values()]
        return defer.DeferredList(results, consumeErrors=True)


def _sender(pool: LinePool | ProcessPool) -> Any:
    def send(data: bytes, reader: StatsReader, timeout: float) -> defer.Deferred[Any]:
        return pool.call(data, reader, timeout, True)

    return send
