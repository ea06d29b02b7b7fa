"""The supervisor: admin endpoints, signals, and worker processes, one role each.

It never serves calls itself: grpc.aio sharing a loop with a busy twisted.web was measured to
fall from ~8,700 to ~210 calls/s, so each front gets its own process and loop. Workers are
fresh interpreters (`spawnProcess`), never forks of a process that imported grpc.

`workers: {grpc: N, http: N}` runs N workers of a front; they share its port with SO_REUSEPORT
(the kernel spreads connections over their sockets), which grpc can do and Twisted can adopt.
Each worker has a name: its role for the first, `ROLE.INDEX` for the others (`http.1`).
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from twisted.internet import defer, protocol
from twisted.python.failure import Failure

from .. import metrics
from ..logs import log
from .control import LineSplitter, encode


def worker_name(role: str, index: int) -> str:
    return role if index == 0 else f"{role}.{index}"


class WorkerProcess(protocol.ProcessProtocol):
    def __init__(self, sup: Supervisor, role: str, index: int = 0) -> None:
        self.sup = sup
        self.role = role
        self.index = index
        self.name = worker_name(role, index)
        self.pid: int | None = None
        self.state: dict[str, Any] = {}
        self.started = time.monotonic()
        self.ended: defer.Deferred[None] = defer.Deferred()
        self.splitter = LineSplitter(self._message)
        # answers come back in the order the commands were sent
        self.pending_reloads: deque[defer.Deferred[dict[str, Any]]] = deque()
        self.fatal: dict[str, Any] | None = None
        self.retiring = False  # stopped on purpose by a reload (its listener moved or went away)

    def _t(self) -> Any:
        return self.transport

    def connectionMade(self) -> None:
        self.pid = self._t().pid

    def childDataReceived(self, childFD: int, data: bytes) -> None:  # noqa: N803
        if childFD == 3:
            self.splitter.feed(data)

    def _message(self, msg: dict[str, Any]) -> None:
        kind = msg.get("type")
        if kind == "state":
            self.state = msg
            if msg.get("listening"):
                self.sup.listening(self.role)
        elif kind == "reloaded":
            self.state.update(msg.get("state", {}))
            while self.pending_reloads:
                d = self.pending_reloads.popleft()
                if not d.called:  # not timed out
                    d.callback(msg)
                    break
        elif kind == "restart" and isinstance(msg.get("backend"), str):
            self.sup.restart_backend(msg["backend"], self.role)
        elif kind == "fatal":
            self.fatal = msg
            log.error("worker_fatal", role=self.role, worker=self.name, pid=self.pid, what=msg.get("what"), error=msg.get("error"))

    def send(self, cmd: dict[str, Any]) -> None:
        if self.transport is not None:
            try:
                self._t().write(encode(cmd))
            except Exception:  # noqa: BLE001 - a dying worker's pipe
                pass

    def signal(self, sig: str) -> None:
        try:
            self._t().signalProcess(sig)
        except Exception:  # noqa: BLE001 - already gone
            pass

    def processEnded(self, reason: Failure) -> None:
        self.sup.worker_ended(self, reason)
        self.ended.callback(None)


def worker_count(config: Any, role: str) -> int:
    """How many workers of `role` run: `workers:` for the fronts; one ambassador and one
    companion, whose breakers, budgets, route listeners and duties are per process."""
    return int(getattr(config.workers, role)) if role in ("grpc", "http") else 1


def _listen_key(config: Any, role: str) -> Any:
    """What, when changed by a reload, needs the role's workers restarted rather than reloaded.

    Ambassador routes are rebuilt by restarting their worker: any change to them counts.
    Going from one worker to several (or back) restarts them: a shared port is bound with
    SO_REUSEPORT, a lone one without (so another process on it is an error).
    """
    if role == "ambassador":
        return [r.model_dump() for r in config.ambassador] or None
    if role == "companion":  # its duties are rebuilt by restarting it, like ambassador routes
        return config.companion.model_dump() if config.companion is not None else None
    section = getattr(config, role)
    if not section:
        return None
    tls = getattr(section, "tls", None)  # TLS on/off and mTLS on/off are fixed per listener
    return (section.listen, tls is not None, tls is not None and tls.client_ca is not None,
            worker_count(config, role) > 1)


class Supervisor:
    def __init__(self, config_path: str, loaded: Any, reactor: Any,
                 on_start_failure: Callable[[str, str], None] | None = None) -> None:
        self.config_path = config_path
        self.loaded = loaded
        self.reactor = reactor
        self.workers: dict[str, WorkerProcess] = {}  # by name: `http`, `http.1`, ...
        self.restarts: dict[str, int] = {}  # by name: each worker backs off on its own
        self.stopping = False
        self.listened: set[str] = set()  # roles that have been listening at least once
        self.serving = False  # every role of the first start has listened
        self.on_start_failure = on_start_failure

    @property
    def config(self) -> Any:
        return self.loaded.config

    def roles(self) -> list[str]:
        roles = []
        if self.config.grpc is not None:
            roles.append("grpc")
        if self.config.http is not None:
            roles.append("http")
        if self.config.ambassador:
            roles.append("ambassador")
        if self.config.companion is not None:
            roles.append("companion")
        return roles

    def names(self) -> list[tuple[str, int]]:
        """(role, index) of every worker the configuration asks for."""
        return [(role, i) for role in self.roles() for i in range(worker_count(self.config, role))]

    def start(self) -> None:
        # Counters appear in /metrics at 0 from the start, so `rate()` and alerts see them.
        for role in self.roles():
            metrics.worker_restarts_total.labels(role)
        for outcome in ("ok", "error"):
            metrics.config_reloads_total.labels(outcome)
        if not self._ports_free():
            return
        for role, index in self.names():
            self.spawn(role, index)

    def _ports_free(self) -> bool:
        """Fail the start when a front's port is taken. Several workers of a front bind with
        SO_REUSEPORT, which would also share the port with a stranger that set it: so the check
        is done here, once, without it, before any worker binds."""
        from twisted.internet.error import CannotListenError

        from .worker import check_can_listen

        for role, what in (("grpc", "the gRPC front"), ("http", "the JSON front")):
            section = getattr(self.config, role)
            if section is None or worker_count(self.config, role) < 2:
                continue  # a lone worker checks its port itself
            try:
                check_can_listen(section.listen)
            except CannotListenError as e:
                log.error("start_failed", what=f"{what} on {section.listen}", error=str(e), worker=role)
                if self.on_start_failure is not None:
                    self.on_start_failure(f"{what} on {section.listen}", str(e))
                return False
        return True

    def spawn(self, role: str, index: int = 0) -> None:
        proto = WorkerProcess(self, role, index)
        argv = [sys.executable, "-m", "adaptercar.runtime.worker", "--role", role, "-c", self.config_path]
        if worker_count(self.config, role) > 1:
            argv.append("--shared-port")
        if role == "companion":
            argv = [sys.executable, "-m", "adaptercar.companion", "-c", self.config_path]
        from ..tls import OPENSSL_ENV, openssl_roles

        env = {**os.environ, OPENSSL_ENV: "1" if role in openssl_roles(self.loaded) else "0"}
        self.reactor.spawnProcess(
            proto, sys.executable, argv, env=env, childFDs={0: "w", 1: 1, 2: 2, 3: "r"}
        )
        self.workers[proto.name] = proto
        log.info("worker_started", role=role, worker=proto.name, pid=proto.pid)

    def listening(self, role: str) -> None:
        self.listened.add(role)
        if not self.serving and self.listened >= set(self.roles()):
            self.serving = True

    def worker_ended(self, proc: WorkerProcess, reason: Failure) -> None:
        status = getattr(reason.value, "exitCode", None)
        sig = getattr(reason.value, "signal", None)
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR") and proc.pid is not None:
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(proc.pid)  # type: ignore[no-untyped-call]
        if self.workers.get(proc.name) is proc:
            del self.workers[proc.name]
        if self.stopping:
            log.info("worker_stopped", role=proc.role, worker=proc.name, pid=proc.pid,
                     exit_status=status, signal=sig)
            return
        if proc.retiring:
            log.info("worker_stopped", role=proc.role, worker=proc.name, pid=proc.pid,
                     exit_status=status, signal=sig, reason="reload")
            self._spawn_missing(proc.role)  # on its new listener
            return
        if not self.serving and proc.role not in self.listened and self.on_start_failure is not None:
            # At start-up, a worker that never listened has a taken port or a bad config,
            # which a restart cannot fix. (Later, a restart may succeed: keep trying.)
            fatal = proc.fatal or {}
            how = f"signal {sig}" if sig is not None else f"status {status}"
            what = str(fatal.get("what") or f"the {proc.role} worker")
            error = str(fatal.get("error") or f"it exited with {how} before listening")
            log.error("start_failed", what=what, error=error, worker=proc.role, worker_pid=proc.pid)
            self.on_start_failure(what, error)
            return
        n = self.restarts.get(proc.name, 0)
        if time.monotonic() - proc.started > 30:
            n = 0
        self.restarts[proc.name] = n + 1
        delay = min(10.0, 0.2 * (2**n))
        log.error("worker_died", role=proc.role, worker=proc.name, pid=proc.pid, exit_status=status,
                  signal=sig, restart_in_s=round(delay, 2))
        metrics.worker_restarts_total.labels(proc.role).inc()
        self.reactor.callLater(delay, self._respawn, proc.role, proc.index)

    def restart_backend(self, backend: str, asked_by: str) -> None:
        """`on_change: {restart: BACKEND}` from the companion: every worker gets it; those that
        own a pool of that name (the fronts' call pools, the companion's stats pool) restart it."""
        log.info("backend_restart_requested", backend=backend, asked_by=asked_by,
                 workers=sorted(self.workers))
        for w in list(self.workers.values()):
            w.send({"cmd": "restart", "backend": backend})

    def _spawn_missing(self, role: str) -> None:
        """Start the workers of `role` the configuration asks for and that do not run, once
        none of the role is retiring: the new ones may need the port the old ones hold."""
        if any(w.role == role and w.retiring for w in self.workers.values()):
            return
        for r, index in self.names():
            if r == role and worker_name(r, index) not in self.workers:
                self.spawn(r, index)

    def _respawn(self, role: str, index: int) -> None:
        if (not self.stopping and worker_name(role, index) not in self.workers
                and (role, index) in self.names()):
            self.spawn(role, index)

    # -- admin model -------------------------------------------------------------------------
    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Ready when every role has a ready worker and no listening worker is unready.

        A worker being restarted does not listen, so takes no connections: its siblings
        serve and the sidecar stays ready. One that listens takes its share, so it must be ready.
        """
        detail: dict[str, Any] = {"workers": {}}
        ready_roles: set[str] = set()
        ok = True
        for role, index in self.names():
            name = worker_name(role, index)
            w = self.workers.get(name)
            st = w.state if w is not None else {}
            ready = bool(w is not None and st.get("ready"))
            if ready:
                ready_roles.add(role)
            elif st.get("listening"):
                ok = False
            detail["workers"][name] = {
                "pid": w.pid if w else None,
                "ready": ready,
                "listening": st.get("listening", False),
                "generation": st.get("generation"),
                "backends": st.get("backends", {}),
            }
        return ok and ready_roles >= set(self.roles()), detail

    def config_view(self) -> dict[str, Any]:
        from ..compile import redacted_view

        return redacted_view(self.loaded)

    def ambassador_view(self) -> dict[str, Any]:
        """The ambassador worker reports its routes with every state message."""
        w = self.workers.get("ambassador")
        return (w.state.get("ambassador") if w is not None else None) or {"routes": []}

    def reload(self) -> defer.Deferred[dict[str, Any]]:
        from twisted.internet import threads

        from ..compile import load_all

        d = threads.deferToThread(load_all, self.config_path)

        def crashed(f: Failure) -> dict[str, Any]:
            # a bug in loading must not leave a SIGHUP reload as an unhandled Deferred error
            why = f"internal error: {type(f.value).__name__}: {f.value}"
            metrics.config_reloads_total.labels("error").inc()
            log.error("config_reload_failed", errors=[why])
            return {"ok": False, "errors": [why]}

        def loaded(new: Any) -> Any:
            errors = [p.format() for p in new.problems if p.severity == "error"]
            if errors:
                metrics.config_reloads_total.labels("error").inc()
                log.error("config_reload_failed", errors=errors)
                return {"ok": False, "errors": errors}
            from ..tls import openssl_roles

            old_tls, new_tls = openssl_roles(self.loaded), openssl_roles(new)
            old_listen = {role: (_listen_key(self.config, role), role in old_tls)
                          for role in ("grpc", "http", "ambassador", "companion")}
            self.loaded = new
            waits = []
            wanted = self.names()
            for w in list(self.workers.values()):
                role = w.role
                new_listen = (_listen_key(new.config, role), role in new_tls)
                if (role, w.index) not in wanted or new_listen != old_listen.get(role):
                    w.retiring = True  # listener moved or worker removed: restart (or stop) it
                    w.signal("TERM")
                    continue
                rd: defer.Deferred[dict[str, Any]] = defer.Deferred()
                w.pending_reloads.append(rd)
                w.send({"cmd": "reload"})
                rd.addTimeout(30, self.reactor)
                waits.append(rd)
            for role in self.roles():  # a new role, or more workers of one
                self._spawn_missing(role)
            dl = defer.DeferredList(waits, consumeErrors=True)

            def summarize(results: list[tuple[bool, Any]]) -> dict[str, Any]:
                errs = [str(r.get("error")) for okr, r in results if okr and not r.get("ok")]
                errs += [f"worker did not confirm: {r.value}" for okr, r in results if not okr]
                outcome = "error" if errs else "ok"
                metrics.config_reloads_total.labels(outcome).inc()
                log.info("config_reloaded", outcome=outcome, errors=errs)
                return {"ok": not errs, "errors": errs}

            return dl.addCallback(summarize)

        return d.addCallback(loaded).addErrback(crashed)

    # -- shutdown ----------------------------------------------------------------------------
    def stop(self) -> defer.Deferred[Any]:
        self.stopping = True
        ds = []
        for w in list(self.workers.values()):
            w.signal("TERM")
            ds.append(w.ended)
        d = defer.DeferredList(ds)
        drain = float(getattr(getattr(self.config, "shutdown", None), "drain_timeout", 10.0) or 10.0)
        d.addTimeout(drain + 5, self.reactor)

        def force(_: Any) -> None:
            for w in list(self.workers.values()):
                w.signal("KILL")

        d.addErrback(force)
        return d


def install_signals(reactor: Any, on_term: Any, on_hup: Any) -> None:
    signal.signal(signal.SIGTERM, lambda *_: reactor.callFromThread(on_term))
    signal.signal(signal.SIGINT, lambda *_: reactor.callFromThread(on_term))
    signal.signal(signal.SIGHUP, lambda *_: reactor.callFromThread(on_hup))
