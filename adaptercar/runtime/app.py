"""Wiring: the service trees of a worker, of the single process, and of the supervisor.

This is the only module that knows every part; `cli` calls it and nothing else imports it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from twisted.application import service
from twisted.internet import defer

from ..logs import log
from . import reactor as reactor_setup


def _configure_logging(cfg: Any, **extra: Any) -> None:
    lg = getattr(cfg, "log", None)
    log.configure(getattr(lg, "level", "info"), dict(getattr(lg, "fields", {}) or {}), **extra)


def _drain_timeout(cfg: Any) -> float:
    return float(getattr(getattr(cfg, "shutdown", None), "drain_timeout", 10.0) or 10.0)


class Runtime:
    """The live state of one worker (or the single process): current set, pools, fronts."""

    def __init__(self, config_path: str, roles: list[str], loop: Any, reporter: Any = None,
                 shared_port: bool = False) -> None:
        from twisted.internet import reactor as _reactor

        reactor: Any = _reactor

        from ..compile import build_set, load_all
        from ..drain import Drain
        from ..fronts.calls import CurrentSet

        self.reactor = reactor
        self.config_path = config_path
        self.roles = roles
        self.loop = loop
        self.reporter = reporter
        self.shared_port = shared_port  # other workers serve the same front port (SO_REUSEPORT)
        self.drain = Drain()
        self.generation = 1
        loaded = load_all(config_path, run_examples=False)
        if loaded.errors:
            raise SystemExit("adaptercar: configuration has errors:\n" + "\n".join(p.format() for p in loaded.errors))
        self.loaded = loaded
        _configure_logging(loaded.config, role=",".join(roles), pid=os.getpid())
        cs = build_set(loaded, reactor, self.generation, self.drain)
        self._prepare(cs)
        self.current = CurrentSet(cs)
        self.grpc_front: Any = None
        self.front_tls: dict[str, Any] = {}  # front → its reloadable TLS (tls.py)
        self.ambassador: Any = None
        self.companion: Any = None
        self.top: Any = None
        self.listening = False

    def _prepare(self, cs: Any) -> None:
        """Build each front's per-set caches once, before the set is visible to calls."""
        if "grpc" in self.roles:
            from ..fronts.grpc_front import build_handler, reflection_servicer

            cs.grpc_handlers = {p: build_handler(e, lambda: self.loop) for p, e in cs.methods.items()}
            cs.reflection = reflection_servicer(sorted(cs.service_backends) or sorted(cs.protoset.services()),
                                                cs.protoset.pool)
        if "http" in self.roles:
            import json

            from ..fronts.http_routes import Router, RouteTarget
            from ..fronts.openapi import openapi_document

            targets = [RouteTarget(e.service, e.descriptor, cs.protoset.http_rule(e.descriptor))
                       for e in cs.methods.values()]
            cs.router = Router.build(targets)
            cs.openapi = json.dumps(openapi_document(cs.protoset, targets, "adaptercar")).encode()

    def service_tree(self) -> service.MultiService:
        from .worker import BackendsService, FrontsThenBackends, GrpcService, HttpService

        top = self.top = FrontsThenBackends()
        if self.serves_calls:
            BackendsService(self.current).setServiceParent(top)
        cfg = self.loaded.config
        drain_timeout = _drain_timeout(cfg)
        if "grpc" in self.roles and cfg.grpc is not None:
            from ..fronts.grpc_front import GrpcFront

            if "grpc" in self.loaded.tls:
                from ..tls import GrpcServerTls

                self.front_tls["grpc"] = GrpcServerTls(self.loaded.tls["grpc"])
            self.grpc_front = GrpcFront(self.current, cfg.grpc.listen, cfg.grpc.max_message_bytes,
                                        cfg.grpc.reflection, self.front_tls.get("grpc"), self.shared_port)
            GrpcService(self.grpc_front, self.loop, drain_timeout).setServiceParent(top)
        if "http" in self.roles and cfg.http is not None:
            from ..fronts.http_front import make_site

            if "http" in self.loaded.tls:
                from ..tls import ReloadableServerTls

                self.front_tls["http"] = ReloadableServerTls(self.loaded.tls["http"])
            HttpService(make_site(self.current, cfg.http.max_body_bytes, cfg.http), cfg.http.listen, self.drain,
                        drain_timeout, self.front_tls.get("http"), self.shared_port).setServiceParent(top)
        for role in ("ambassador", "companion"):
            duty = self._duty(role, cfg) if role in self.roles else None
            if duty is not None:
                setattr(self, role, duty)
                duty.setServiceParent(top)
        return top

    def _duty(self, role: str, cfg: Any) -> Any:
        """The service of the ambassador or companion role for this config; None when the
        config has none."""
        if role == "ambassador" and cfg.ambassador:
            from ..ambassador.service import AmbassadorService

            return AmbassadorService(cfg.ambassador, self.reactor, _drain_timeout(cfg))
        if role == "companion" and cfg.companion is not None:
            from ..companion.service import CompanionService

            return CompanionService(cfg.companion, self.loaded.specs, self.reactor)
        return None

    @defer.inlineCallbacks
    def rebuild_duties(self, old: Any, new: Any) -> Any:
        """Single process: replace the ambassador routes and companion duties whose section
        changed on reload (workers get the same effect from the supervisor restarting them).

        Old routes stop listening first, so a route may keep its port; calls in flight on
        them finish. Returns the errors (a new route that cannot listen), empty when fine.
        """
        from .supervisor import _listen_key

        errors: list[str] = []
        for role in ("ambassador", "companion"):
            if role not in self.roles or _listen_key(old, role) == _listen_key(new, role):
                continue
            current = getattr(self, role)
            if current is not None:
                if role == "ambassador":
                    # its ports first, so that a route may keep its port; its calls in flight
                    # then finish in the background while the new routes serve
                    yield current.stop_listening()
                    current.disownServiceParent()
                else:
                    yield defer.maybeDeferred(current.disownServiceParent)
                setattr(self, role, None)
            replacement = self._duty(role, new)
            if replacement is None:
                continue
            try:
                replacement.setServiceParent(self.top)
            except Exception as e:  # noqa: BLE001 - e.g. a new route's port is taken
                replacement.disownServiceParent()
                errors.append(f"{role}: {type(e).__name__}: {e}")
                continue
            setattr(self, role, replacement)
        return errors

    @property
    def serves_calls(self) -> bool:
        """False for the ambassador and companion workers: they need no call pools (stats
        polls use the companion's own small pools)."""
        return not set(self.roles) <= {"ambassador", "companion"}

    def state(self) -> dict[str, Any]:
        cs = self.current.get()
        backends = {n: b.state() for n, b in cs.backends.items()} if self.serves_calls else {}
        st = {"type": "state", "generation": cs.generation, "listening": self.listening,
              "ready": self.listening and all(b["ready"] for b in backends.values()), "backends": backends,
              "roles": self.roles}
        if self.ambassador is not None and not self.serves_calls:
            st["ambassador"] = self.ambassador.view()
        return st

    def reload(self) -> dict[str, Any]:
        from ..compile import build_set, load_all

        loaded = load_all(self.config_path, run_examples=False)
        if loaded.errors:
            return {"ok": False, "error": "; ".join(p.format() for p in loaded.errors)}
        old = self.current.get()
        self.generation += 1
        cs = build_set(loaded, self.reactor, self.generation, self.drain, reuse=old.backends)
        self._prepare(cs)
        for name, b in cs.backends.items():
            if old.backends.get(name) is not b and self.serves_calls:
                b.start()
        self.current.swap(cs)
        for front, holder in self.front_tls.items():  # renewed certificates: next handshake
            if front in loaded.tls:
                holder.update(loaded.tls[front])
        self.loaded = loaded
        _configure_logging(loaded.config, role=",".join(self.roles), pid=os.getpid())
        kept = set(map(id, cs.backends.values()))
        for b in old.backends.values():
            if id(b) not in kept:
                # calls in flight on the old set finish first: stop after the drain timeout
                self.reactor.callLater(_drain_timeout(loaded.config), b.stop)
        log.info("config_reloaded", generation=self.generation, methods=len(cs.methods))
        return {"ok": True}


class _Exit:
    code = 0


def _fail_start(exc: BaseException, what: str, reporter: Any = None) -> None:
    """A start-up failure (port taken, ...) is one clear line and exit status 1.

    A worker does not print the line itself: it reports it to the supervisor, which prints it
    once and stops the whole sidecar (a worker that cannot start would only fail again).
    """
    from twisted.internet import reactor as _reactor

    reactor: Any = _reactor

    msg = exc.value if hasattr(exc, "value") else exc  # a Failure or an exception
    log.error("start_failed", what=what, error=str(msg))
    if reporter is not None:
        reporter.send({"type": "fatal", "what": what, "error": str(msg)})
    else:
        print(f"adaptercar: cannot start {what}: {msg}", file=sys.stderr)
    _Exit.code = 1
    if reactor.running:
        reactor.stop()


def _run(top: service.MultiService, on_started: Any = None, signals: Any = None, reporter: Any = None) -> int:
    """Start the service tree once the reactor runs; our signal handlers go in after
    Twisted's own (it installs SIGTERM/SIGINT handlers and the SIGCHLD reaper at start)."""
    from twisted.internet import reactor as _reactor

    reactor: Any = _reactor

    @defer.inlineCallbacks
    def start() -> Any:
        if signals is not None:
            signals()
        top.running = 1
        for svc in list(top):  # in order: backends, fronts; a front's failure stops the start
            try:
                yield defer.maybeDeferred(svc.startService)
            except Exception as e:  # noqa: BLE001
                _fail_start(e, getattr(svc, "what", "the sidecar"), reporter)
                return
        if on_started is not None:
            on_started()

    def stop() -> defer.Deferred[Any]:
        # Calls that finish while draining are counted too: flush the batched metrics last.
        from .. import metrics

        return defer.maybeDeferred(top.stopService).addBoth(lambda _: metrics.recorder.flush())

    reactor.callWhenRunning(lambda: reactor.callLater(0, start))
    reactor.addSystemEventTrigger("before", "shutdown", stop)
    reactor.run()
    return _Exit.code


def run_worker(role: str, config_path: str, shared_port: bool = False) -> int:
    from ..tls import OPENSSL_ENV, forbid_openssl

    if os.environ.get(OPENSSL_ENV) == "0":  # the supervisor knows this role needs no pyOpenSSL
        forbid_openssl()
    loop = reactor_setup.install()
    from twisted.internet import reactor as _reactor
    from twisted.internet import task

    reactor: Any = _reactor

    from .control import Reporter, listen_commands

    reporter = Reporter()
    try:
        rt = Runtime(config_path, [role], loop, reporter, shared_port)
    except SystemExit as e:  # the config changed under us: the supervisor says so, once
        reporter.send({"type": "fatal", "what": f"the {role} worker", "error": str(e)})
        return 1
    top = rt.service_tree()

    def on_command(cmd: dict[str, Any]) -> None:
        if cmd.get("cmd") == "reload":
            try:
                res = rt.reload()
            except Exception as e:  # noqa: BLE001 - report, keep serving the old set
                res = {"ok": False, "error": f"{type(e).__name__}: {e}"}
            reporter.send({"type": "reloaded", **res, "state": rt.state()})
        elif cmd.get("cmd") == "drain":
            terminate()

    def on_eof() -> None:
        if reactor.running:
            log.warning("supervisor_gone", role=role)
            terminate()

    def started() -> None:
        rt.listening = True
        listen_commands(on_command, on_eof)
        lc = task.LoopingCall(lambda: reporter.send(rt.state()))
        lc.start(0.5)

    drain_timeout = _drain_timeout(rt.loaded.config)

    def terminate() -> None:
        # Bounded shutdown whatever happens: past the drain timeout the worker exits anyway.
        def force() -> None:
            log.error("forced_exit", role=role, reason="drain timeout passed during shutdown")
            os._exit(0)

        reactor.callLater(drain_timeout + 2, force)
        if reactor.running:
            reactor.stop()

    def signals() -> None:
        import signal

        signal.signal(signal.SIGTERM, lambda *_: reactor.callFromThread(terminate))
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    return _run(top, lambda: reactor.callLater(0.2, started), signals, reporter)


class _SingleModel:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        st = self.rt.state()
        return bool(st["ready"]), {"workers": {"single": st}}

    def config_view(self) -> dict[str, Any]:
        from ..compile import redacted_view

        return redacted_view(self.rt.loaded)

    def ambassador_view(self) -> dict[str, Any]:
        amb = self.rt.ambassador
        return amb.view() if amb is not None else {"routes": []}

    @defer.inlineCallbacks
    def reload(self) -> Any:
        from .. import metrics

        old = self.rt.loaded.config
        try:
            res = self.rt.reload()
            errors = [res["error"]] if not res["ok"] else (
                yield self.rt.rebuild_duties(old, self.rt.loaded.config))
        except Exception as e:  # noqa: BLE001 - a bug in loading: the old set keeps serving
            errors = [f"internal error: {type(e).__name__}: {e}"]
        metrics.config_reloads_total.labels("error" if errors else "ok").inc()
        if errors:
            log.error("config_reload_failed", errors=errors)
        return {"ok": not errors, "errors": errors}


def _listen_admin(site: Any, listen: str) -> Any:
    from twisted.internet import reactor as _reactor

    reactor: Any = _reactor

    host, _, port = listen.rpartition(":")
    return reactor.listenTCP(int(port), site, interface=host.strip("[]") or "127.0.0.1")


def run_single(config_path: str) -> int:
    loop = reactor_setup.install()
    from twisted.internet import reactor as _reactor

    reactor: Any = _reactor

    from .. import metrics
    from .admin import admin_site
    from .supervisor import install_signals

    rt = Runtime(config_path, ["grpc", "http", "ambassador", "companion"], loop)
    top = rt.service_tree()
    model = _SingleModel(rt)
    for outcome in ("ok", "error"):
        metrics.config_reloads_total.labels(outcome)  # shown at 0 from the start
    cfg = rt.loaded.config

    def started() -> None:
        rt.listening = True
        if cfg.admin is not None:
            try:
                _listen_admin(admin_site(model), cfg.admin.listen)
            except Exception as e:  # noqa: BLE001
                _fail_start(e, f"admin on {cfg.admin.listen}")
                return
        log.info("started", mode="single-process", grpc=getattr(cfg.grpc, "listen", None),
                 http=getattr(cfg.http, "listen", None), admin=getattr(cfg.admin, "listen", None))

    return _run(top, started, lambda: install_signals(reactor, reactor.stop, model.reload))


def run_supervisor(config_path: str) -> int:
    """`adaptercar run`: admin + metrics aggregation + worker processes."""
    import shutil
    import tempfile

    mpdir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not mpdir:
        mpdir = tempfile.mkdtemp(prefix="adaptercar-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = mpdir
    else:
        shutil.rmtree(mpdir, ignore_errors=True)
        Path(mpdir).mkdir(parents=True, exist_ok=True)
    if "prometheus_client" in sys.modules:
        raise RuntimeError("prometheus_client imported before PROMETHEUS_MULTIPROC_DIR was set")
    from ..tls import forbid_openssl

    forbid_openssl()  # the supervisor speaks no TLS (its checks of TLS files use cryptography)
    reactor_setup.install()
    from twisted.internet import reactor as _reactor

    reactor: Any = _reactor

    from ..compile import load_all
    from .admin import admin_site
    from .supervisor import Supervisor, install_signals

    loaded = load_all(config_path, run_examples=False)
    if loaded.errors:
        print("adaptercar: configuration has errors:", file=sys.stderr)
        for p in loaded.errors:
            print(p.format(), file=sys.stderr)
        return 1
    _configure_logging(loaded.config, role="supervisor", pid=os.getpid())
    stopping = {"done": False}

    def on_term(reason: str = "signal") -> None:
        if stopping["done"]:
            return
        stopping["done"] = True
        log.info("shutdown", reason=reason)
        sup.stop().addBoth(lambda _: reactor.stop() if reactor.running else None)

    def on_start_failure(what: str, error: str) -> None:
        """A worker could not start (its port is taken, ...): retrying cannot help."""
        if stopping["done"]:
            return
        print(f"adaptercar: cannot start {what}: {error}", file=sys.stderr)
        _Exit.code = 1
        on_term("start_failed")

    sup = Supervisor(str(config_path), loaded, reactor, on_start_failure)

    def start() -> None:
        install_signals(reactor, on_term, sup.reload)
        cfg = loaded.config
        if cfg.admin is not None:
            try:
                _listen_admin(admin_site(sup), cfg.admin.listen)
            except Exception as e:  # noqa: BLE001
                _fail_start(e, f"admin on {cfg.admin.listen}")
                return
        sup.start()
        log.info("started", mode="supervisor", grpc=getattr(cfg.grpc, "listen", None),
                 http=getattr(cfg.http, "listen", None), admin=getattr(cfg.admin, "listen", None))

    reactor.callWhenRunning(lambda: reactor.callLater(0, start))
    reactor.run()
    shutil.rmtree(mpdir, ignore_errors=True)
    return _Exit.code
