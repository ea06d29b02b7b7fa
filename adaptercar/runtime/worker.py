"""A worker process: one role (gRPC front or JSON front), its own reactor and backend pools.

Also the whole sidecar in `--single-process` mode (all roles and admin on one loop).
The parts are `twisted.application` services started in order (backends, then fronts, then
the control channel) and stopped in reverse, so a drain stops accepting first and closes
backend connections last.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from typing import Any

from twisted.application import service
from twisted.internet import defer


class Drain:
    """Counts calls in flight so shutdown can wait for them (bounded by drain_timeout)."""

    def __init__(self) -> None:
        self.inflight = 0
        self.waiters: list[defer.Deferred[None]] = []

    def enter(self) -> None:
        self.inflight += 1

    def leave(self, _: Any = None) -> Any:
        self.inflight -= 1
        if self.inflight == 0:
            waiters, self.waiters = self.waiters, []
            for w in waiters:
                w.callback(None)
        return _

    def idle(self) -> defer.Deferred[None]:
        if self.inflight == 0:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self.waiters.append(d)
        return d


class BackendsService(service.Service):
    def __init__(self, holder: Any) -> None:
        self.holder = holder

    def startService(self) -> None:
        super().startService()
        for b in self.holder.get().backends.values():
            b.start()

    def stopService(self) -> Any:
        super().stopService()
        for b in self.holder.get().backends.values():
            b.stop()


class GrpcService(service.Service):
    def __init__(self, front: Any, loop: asyncio.AbstractEventLoop, drain_timeout: float) -> None:
        self.front = front
        self.loop = loop
        self.drain_timeout = drain_timeout
        self.health_task: Any = None

    def startService(self) -> Any:
        super().startService()
        d = defer.Deferred.fromFuture(self.loop.create_task(self.front.start()))
        d.addCallback(lambda _: self._health_loop())
        return d

    def _health_loop(self) -> None:
        from twisted.internet import task

        self.health_task = task.LoopingCall(
            lambda: defer.Deferred.fromFuture(self.loop.create_task(self.front.update_health()))
        )
        self.health_task.start(1.0, now=False)

    def stopService(self) -> Any:
        super().stopService()
        if self.health_task is not None and self.health_task.running:
            self.health_task.stop()
        return defer.Deferred.fromFuture(self.loop.create_task(self.front.stop(self.drain_timeout)))


class HttpService(service.Service):
    def __init__(self, site: Any, listen: str, drain: Drain, drain_timeout: float) -> None:
        self.site = site
        self.listen = listen
        self.port: Any = None
        self.drain = drain
        self.drain_timeout = drain_timeout

    def startService(self) -> None:
        from twisted.internet import reactor as _reactor

        reactor: Any = _reactor

        super().startService()
        host, _, port = self.listen.rpartition(":")
        self.port = reactor.listenTCP(int(port), self.site, interface=host.strip("[]") or "0.0.0.0")

    def stopService(self) -> Any:
        from twisted.internet import reactor as _reactor

        reactor: Any = _reactor

        super().stopService()
        if self.port is None:
            return None
        d = defer.maybeDeferred(self.port.stopListening)
        d.addCallback(lambda _: self.drain.idle())
        d.addTimeout(self.drain_timeout, reactor)
        d.addErrback(lambda _: None)
        return d


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="adaptercar-worker")
    p.add_argument("--role", required=True, choices=["grpc", "http"])
    p.add_argument("-c", "--config", required=True)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Entry point of a worker process spawned by the supervisor."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    from .app import run_worker

    return run_worker(args.role, args.config)


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor decides; Ctrl-C goes to it
    os.environ.setdefault("ADAPTERCAR_WORKER", "1")
    raise SystemExit(main())
