"""Legacy binaries on stdin/stdout: a pool of long-lived children, or one child per call.

The same sans-IO core as TCP reads the replies (framing Decoder + ReplyReader); this shell
owns the children. Its rules mirror the TCP pool's: one call in flight per child, a child whose
state is unknown (timed out, unmatched reply, output while idle) is killed and replaced, so a
late or stray line can never reach the next caller. Children are always ended on shutdown.
As on TCP, an idempotent call is retried once if its child exits before printing anything for
it (a program that exits right after a reply takes the call handed to it in that instant with
it); per-call mode, like pooled, runs at most `pool.size` programs and queues `max_waiting`.
A failed start-up handshake counts as a crash, so a wrong banner respawns with backoff.
"""

from __future__ import annotations

import os
import signal
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer, protocol
from twisted.python.failure import Failure

from .. import metrics
from ..companion.tail import LogEmitter
from ..logs import log
from ..mapping.errors import CallError, Code, quote_raw
from ..mapping.framing import Decoder, Framing, FramingError
from .line import Call, ExpectReader, Reader, advance_handshake

STDERR_TAIL = 20
MAX_STDERR_LINE = 8192
CRASH_LOOP = 3  # consecutive early exits after which the backend is down (unready, fails fast)


@dataclass(frozen=True)
class ProcessSpec:
    name: str
    argv: tuple[str, ...]
    env: dict[str, str] = field(hash=False, compare=True)
    cwd: str = "."
    framing: Framing = None  # type: ignore[assignment]
    encoding: str = "utf-8"
    mode: str = "pooled"  # pooled | per-call
    pool_size: int = 2
    max_waiting: int = 256
    timeout: float = 2.0
    max_line_bytes: int = 65536
    max_reply_bytes: int = 1 << 20
    restart_base: float = 0.1
    restart_max: float = 10.0
    banner: Any = None  # re.Pattern | None
    on_connect: tuple[tuple[bytes, Any], ...] = ()


class Child(protocol.ProcessProtocol):
    """One legacy process. Pool mode: many calls, one at a time. Per-call mode: one call."""

    def __init__(self, pool: ProcessPool, call: Call | None = None) -> None:
        self.pool = pool
        spec = pool.spec
        self.decoder = Decoder(spec.framing, spec.max_line_bytes)
        self.call: Call | None = call
        self.per_call = call is not None
        self.pid: int | None = None
        self.ready = False
        self.dead = False
        self.killing = False
        self.retiring = False  # a restart was asked: killed once its call is answered
        self.kill_reason = ""
        self.born = time.monotonic()
        self.answered = 0
        self.err_buf = b""
        self.stderr_tail: deque[str] = deque(maxlen=STDERR_TAIL)
        self.stderr_all: list[str] = []  # per-call mode, up to max_reply_bytes
        self.stderr_bytes = 0
        self.start_failed = False  # banner/on_connect failed or timed out: counts as a crash
        self.handshake_timer: Any = None
        self.stdout_all = bytearray()
        self.handshake: deque[tuple[str, Any]] = deque()
        if not self.per_call:
            if spec.banner is not None:
                self.handshake.append(("expect", ExpectReader(spec.banner, spec.encoding, "banner")))
            for frame, expect in spec.on_connect:
                self.handshake.append(("send", frame))
                self.handshake.append(("expect", ExpectReader(expect, spec.encoding, "on_connect")))

    def _t(self) -> Any:
        return self.transport

    # -- Twisted callbacks -----------------------------------------------------------------
    def connectionMade(self) -> None:
        self.pid = self._t().pid
        if self.per_call:
            assert self.call is not None
            self.call.conn = self  # type: ignore[assignment]
            self._t().write(self.call.data)
            self._t().closeStdin()
            return
        if self.handshake:
            self.handshake_timer = self.pool.reactor.callLater(self.pool.spec.timeout, self._handshake_timeout)
        self._advance_handshake()

    def _handshake_timeout(self) -> None:
        self.handshake_timer = None
        if not self.ready:
            self.start_failed = True
            self.kill(f"start-up handshake (banner/on_connect) not done in {self.pool.spec.timeout}s")

    def outReceived(self, data: bytes) -> None:
        if self.dead or self.killing:
            return
        if self.per_call:
            self.stdout_all += data
            if len(self.stdout_all) > self.pool.spec.max_reply_bytes:
                self._fail_call(CallError(Code.INTERNAL, f"legacy reply exceeds max_reply_bytes "
                                                         f"({self.pool.spec.max_reply_bytes})", reusable=False))
                self.kill("reply too large")
            return
        self.decoder.feed(data)
        try:
            if not self.ready:
                self._advance_handshake()
                if not self.ready:
                    return
            call = self.call
            if call is None:
                if self.decoder.pending():
                    self.kill("unsolicited output while no call was outstanding")
                return
            call.got_bytes = True
            try:
                result = call.reader.pump(self.decoder)
            except CallError as e:
                self._fail_call(e)
                if not e.reusable:
                    self.kill(f"call failed with {e.code.name}")
                elif self.decoder.pending():
                    # output beyond the error reply would be read as the next caller's reply
                    self.kill("unsolicited output after a reply")
                else:
                    self.answered += 1
                    self._idle()
                return
            if result is None:
                return
            self.call = None
            self.answered += 1
            self.pool.record(call, None)
            call.finish(result)
            if self.decoder.pending():
                self.kill("unsolicited output after a reply")
                return
            self._idle()
        except FramingError as e:
            self._fail_call(CallError(Code.INTERNAL, f"legacy reply framing error: {e}", reusable=False))
            self.kill(f"framing error: {e}")

    def errReceived(self, data: bytes) -> None:
        self.err_buf += data
        if b"\n" not in self.err_buf and len(self.err_buf) <= MAX_STDERR_LINE:
            return
        *whole, rest = self.err_buf.split(b"\n")
        lines = [(raw.rstrip(b"\r"), False) for raw in whole]
        if len(rest) > MAX_STDERR_LINE:
            lines.append((rest[:MAX_STDERR_LINE], True))
            rest = b""
        self.err_buf = rest
        self._stderr_lines(lines)

    def _stderr_lines(self, lines: list[tuple[bytes, bool]]) -> None:
        """Logged as the companion logs a legacy log file (`legacy_log`, `source` = backend),
        then each line is offered to the call's stderr rules."""
        self.pool.stderr_log.emit(lines, {"child_pid": self.pid})
        for raw, _ in lines:
            self._stderr_line(raw.decode(self.pool.spec.encoding, "replace"))

    def _stderr_line(self, line: str) -> None:
        self.stderr_tail.append(line)
        if self.per_call:
            if self.stderr_bytes < self.pool.spec.max_reply_bytes:
                self.stderr_all.append(line)
                self.stderr_bytes += len(line) + 1
            return
        call = self.call
        on_stderr = getattr(call.reader, "on_stderr", None) if call is not None else None
        if call is None or on_stderr is None or self.killing:
            return
        # A stderr rule ends the call; the child stays (stdout it prints later while idle is
        # unsolicited and restarts it, so nothing can reach the next caller).
        try:
            result = on_stderr(line)
        except CallError as e:
            self._fail_call(e)
            if not e.reusable or self.decoder.pending():
                self.kill(f"call ended on stderr with {e.code.name}; stdout state unknown")
            else:
                self.answered += 1
                self._idle()
            return
        if result is not None:
            self.call = None
            self.answered += 1
            self.pool.record(call, None)
            call.finish(result)
            if self.decoder.pending():
                self.kill("call ended on stderr with a partial stdout frame pending")
            else:
                self._idle()

    def processEnded(self, reason: Failure) -> None:
        self.dead = True
        if self.handshake_timer is not None and self.handshake_timer.active():
            self.handshake_timer.cancel()
        if self.err_buf:
            self._stderr_lines([(self.err_buf.rstrip(b"\r"), False)])
            self.err_buf = b""
        status = getattr(reason.value, "exitCode", None)
        sig = getattr(reason.value, "signal", None)
        retry = self.call if self._retryable() else None
        if retry is not None:
            self.call = None
        elif self.per_call and self.call is not None and not self.killing:
            self._finish_per_call(status, sig)
        else:
            self._fail_call(CallError(
                Code.UNAVAILABLE,
                f"backend {self.pool.spec.name}: the legacy program exited "
                f"({_describe(status, sig)}) before answering; stderr: {quote_raw(chr(10).join(self.stderr_tail))}",
            ))
        self.pool.child_ended(self, status, sig)
        if retry is not None:
            self.pool.retry(retry)

    # -- helpers ---------------------------------------------------------------------------
    def _retryable(self) -> bool:
        """A pooled child that exits on its own with a call it printed nothing for: the same
        rule as EOF on a TCP connection — retried once on another child if idempotent. A
        program that exits right after a reply (or a fatal stderr line) is then not fatal
        to the call that was handed to it in that instant."""
        call = self.call
        return (call is not None and not self.per_call and not self.killing and call.idempotent
                and not call.retried and not call.got_bytes and not call.deferred.called)

    def _finish_per_call(self, status: int | None, sig: int | None) -> None:
        call = self.call
        assert call is not None
        self.call = None
        finish_eof = getattr(call.reader, "finish_eof", None)
        try:
            if finish_eof is None:
                raise CallError(Code.INTERNAL, "this mapping cannot read a per-call reply")
            dec = Decoder(self.pool.spec.framing, max(self.pool.spec.max_line_bytes, len(self.stdout_all) + 1))
            dec.feed(bytes(self.stdout_all))
            exit_status = status if status is not None else (-sig if sig else -1)
            result = finish_eof(dec, exit_status, "\n".join(self.stderr_all))
        except CallError as e:
            self.pool.record(call, e)
            call.fail(e)
            return
        except FramingError as e:
            err = CallError(Code.INTERNAL, f"legacy reply framing error: {e}")
            self.pool.record(call, err)
            call.fail(err)
            return
        self.pool.record(call, None)
        call.finish(result)

    def _fail_call(self, err: CallError) -> None:
        call, self.call = self.call, None
        if call is not None and not call.deferred.called:
            self.pool.record(call, err)
            call.fail(err)

    def _advance_handshake(self) -> None:
        try:
            if not advance_handshake(self.handshake, self.decoder, self._t().write):
                return
        except CallError as e:
            self.start_failed = True
            self.kill(f"start-up handshake failed: {e.message}")
            return
        if self.handshake_timer is not None and self.handshake_timer.active():
            self.handshake_timer.cancel()
        self.handshake_timer = None
        self.ready = True
        self._idle()

    def _idle(self) -> None:
        if not self.dead and not self.killing:
            self.pool.child_idle(self)

    def send(self, call: Call) -> None:
        self.call = call
        call.conn = self  # type: ignore[assignment]
        self._t().write(call.data)

    def kill(self, why: str) -> None:
        """SIGTERM now, SIGKILL if still alive a second later; the pool respawns on exit."""
        if self.dead or self.killing:
            return
        self.killing = True
        self.kill_reason = why
        log.info("backend_child_killed", backend=self.pool.spec.name, child_pid=self.pid, reason=why)
        try:
            self._t().signalProcess("TERM")
        except Exception:  # noqa: BLE001 - already gone
            return
        self.pool.reactor.callLater(1.0, self._force_kill)

    def _force_kill(self) -> None:
        if not self.dead:
            try:
                self._t().signalProcess("KILL")
            except Exception:  # noqa: BLE001
                pass


def _describe(status: int | None, sig: int | None) -> str:
    if sig:
        try:
            return f"killed by {signal.Signals(sig).name}"
        except ValueError:
            return f"killed by signal {sig}"
    return f"exit status {status}"


class ProcessPool:
    def __init__(self, spec: ProcessSpec, reactor: Any) -> None:
        self.spec = spec
        self.reactor: Any = reactor
        self.children: list[Child] = []
        self.idle: deque[Child] = deque()
        self.waiting: deque[Call] = deque()
        self.failures = 0
        self.last_exit = ""
        self.respawn_call: Any = None
        self.stopping = False
        self.spawn_ok: bool | None = None
        self.retired_alive = False  # old children serve on after a restart until a new one is ready
        self._enders: dict[int, list[defer.Deferred[None]]] = {}
        self.stderr_log = LogEmitter(spec.name, None, {"source": spec.name, "backend": spec.name,
                                                       "stream": "stderr"}, encoding=spec.encoding)

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        if self.spec.mode == "pooled":
            for _ in range(self.spec.pool_size):
                self._spawn()
        self._gauge()

    def stop(self) -> defer.Deferred[None]:
        self.stopping = True
        if self.respawn_call is not None and self.respawn_call.active():
            self.respawn_call.cancel()
        for call in list(self.waiting):
            call.fail(CallError(Code.UNAVAILABLE, "sidecar shutting down"))
        self.waiting.clear()
        ends = []
        for child in list(self.children):
            d: defer.Deferred[None] = defer.Deferred()
            self._enders.setdefault(id(child), []).append(d)
            ends.append(d)
            child.kill("sidecar shutting down")
        return defer.DeferredList(ends).addCallback(lambda _: None)  # type: ignore[arg-type]

    def restart(self) -> None:
        """New children for new calls (`on_change: {restart: BACKEND}`). The replacements start
        now; the old children keep taking calls until the first replacement has passed its
        banner/on_connect handshake (so the backend never goes unready in between), then an
        idle old child is ended at once and a busy one once its call is answered. An old child
        still in its own handshake is ended at once: it would start with the superseded config.
        Per-call mode starts the program for every call anyway: nothing to do."""
        if self.stopping or self.spec.mode == "per-call":
            return
        old = [c for c in self.children if not c.dead and not c.killing and not c.retiring]
        log.info("backend_restart", backend=self.spec.name, children=len(old))
        self.failures = 0  # the change may be the fix of a crash loop: start at once
        if self.respawn_call is not None and self.respawn_call.active():
            self.respawn_call.cancel()
        for child in old:
            child.retiring = True
        self.retired_alive = bool(old)
        for _ in range(self.spec.pool_size):
            self._spawn()
        for child in old:
            if not child.ready:
                child.kill("restart requested")
        self._gauge()

    def _end_retired(self) -> None:
        """A replacement is ready: old idle children go now, busy ones after their call."""
        self.retired_alive = False
        for child in list(self.children):
            if child.retiring and child.call is None and not child.dead:
                if child in self.idle:
                    self.idle.remove(child)
                child.kill("restart requested")

    @property
    def ready(self) -> bool:
        if self.spec.mode == "per-call":
            return self.spawn_ok is not False
        # After a restart whose new children fail to start, the old ones still serve: ready.
        return any(c.ready and not c.killing and (self.failures < CRASH_LOOP or c.retiring)
                   for c in self.children)

    def state(self) -> dict[str, Any]:
        return {
            "ready": self.ready,
            "children": [c.pid for c in self.children if not c.dead],
            "busy": sum(1 for c in self.children if c.call is not None),
            "waiting": len(self.waiting),
            "consecutive_failures": self.failures,
            "last_exit": self.last_exit,
        }

    def _gauge(self) -> None:
        live = [c for c in self.children if not c.dead and not c.killing]
        busy = sum(1 for c in live if c.call is not None)
        metrics.backend_pool_connections.labels(self.spec.name, "idle").set(len(live) - busy)
        metrics.backend_pool_connections.labels(self.spec.name, "busy").set(busy)
        metrics.backend_up.labels(self.spec.name).set(1 if self.ready else 0)

    def _spawn(self, call: Call | None = None) -> Child:
        child = Child(self, call)
        self.children.append(child)
        try:
            self.reactor.spawnProcess(
                child, self.spec.argv[0], list(self.spec.argv), env=self.spec.env, path=self.spec.cwd,
                childFDs={0: "w", 1: "r", 2: "r"},
            )
            self.spawn_ok = True
        except OSError as e:
            self.spawn_ok = False
            self.children.remove(child)
            log.error("backend_spawn_failed", backend=self.spec.name, error=str(e))
            if call is not None:
                err = CallError(Code.UNAVAILABLE, f"backend {self.spec.name}: cannot start {self.spec.argv[0]}: {e}")
                self.record(call, err)
                call.fail(err)
            else:
                self.failures += 1
                self._schedule_respawn()
        return child

    def child_ended(self, child: Child, status: int | None, sig: int | None) -> None:
        if child in self.children:
            self.children.remove(child)
        if child in self.idle:
            self.idle.remove(child)
        for d in self._enders.pop(id(child), []):
            d.callback(None)
        self._gauge()
        if self.stopping:
            return
        if child.per_call:
            while self.waiting and self._live() < self.spec.pool_size:
                call = self.waiting.popleft()
                if not call.deferred.called:
                    self._spawn(call)
            return
        how = _describe(status, sig)
        self.last_exit = how
        if child.start_failed:
            reason = "killed"
            log.error("backend_child_start_failed", backend=self.spec.name, child_pid=child.pid,
                      reason=child.kill_reason, stderr_tail=list(child.stderr_tail))
        elif child.killing:
            reason = "killed"
            log.info("backend_child_replaced", backend=self.spec.name, child_pid=child.pid, reason=child.kill_reason)
        else:
            reason = "exit"
            lived = time.monotonic() - child.born
            log.error("backend_child_exited", backend=self.spec.name, child_pid=child.pid, status=how,
                      lived_s=round(lived, 3), stderr_tail=list(child.stderr_tail))
        metrics.backend_restarts_total.labels(self.spec.name, reason).inc()
        if child.start_failed:
            self.failures += 1  # a wrong or missing banner: never useful, respawn with backoff
        elif not child.killing:
            # a crash after useful work is one failure; dying at once again and again is a loop
            lived_well = child.answered > 0 or time.monotonic() - child.born > 10
            self.failures = 1 if lived_well else self.failures + 1
        if self.failures >= CRASH_LOOP and self._live() == 0:
            # known down: calls queued for a child must not wait out their timeout for it
            waiting, self.waiting = self.waiting, deque()
            for call in waiting:
                err = CallError(Code.UNAVAILABLE, f"backend {self.spec.name} is crash-looping ({how})")
                self.record(call, err)
                call.fail(err)
        self._schedule_respawn()

    def _schedule_respawn(self) -> None:
        if self.stopping:
            return
        missing = self.spec.pool_size - self._current()
        if missing <= 0:
            return
        delay = 0.0 if self.failures == 0 else min(
            self.spec.restart_max, self.spec.restart_base * (2 ** min(self.failures - 1, 10))
        )
        if delay == 0.0:
            for _ in range(missing):
                self._spawn()
            return
        if self.respawn_call is not None and self.respawn_call.active():
            return
        self.respawn_call = self.reactor.callLater(delay, self._respawn)
        log.warning("backend_restart_scheduled", backend=self.spec.name, in_s=round(delay, 3),
                    consecutive_failures=self.failures)

    def _respawn(self) -> None:
        self.respawn_call = None
        missing = self.spec.pool_size - self._current()
        for _ in range(max(0, missing)):
            self._spawn()

    def child_idle(self, child: Child) -> None:
        if child.retiring:
            if any(c.ready and not c.retiring and not c.killing for c in self.children):
                child.kill("restart requested")
                self._gauge()
                return
        elif self.retired_alive:
            self._end_retired()
        while self.waiting:
            call = self.waiting.popleft()
            if call.deferred.called:
                continue
            child.send(call)
            self._gauge()
            return
        if child not in self.idle:
            self.idle.append(child)
        self._gauge()

    # -- calls -----------------------------------------------------------------------------
    def call(self, data: bytes, reader: Reader, timeout: float, idempotent: bool) -> defer.Deferred[Any]:
        call = Call(data, reader, idempotent)
        call.timer = self.reactor.callLater(max(0.0, timeout), self._timeout, call)
        if self.stopping:
            call.fail(CallError(Code.UNAVAILABLE, "sidecar shutting down"))
            return call.deferred
        if self.spec.mode == "per-call":
            # pool.size programs at once, the rest wait boundedly: a burst must not fork without limit
            if self._live() < self.spec.pool_size:
                self._spawn(call)
            else:
                self._queue(call)
            return call.deferred
        if not self._dispatch(call) and not self._fail_if_down(call):
            self._queue(call)
        return call.deferred

    def retry(self, call: Call) -> None:
        """Once, first in line (it already waited its turn), still within its own timeout."""
        call.retried = True
        call.conn = None
        if call.deferred.called:
            return
        if self.stopping:
            call.fail(CallError(Code.UNAVAILABLE, "sidecar shutting down"))
            return
        if not self._dispatch(call) and not self._fail_if_down(call):
            self.waiting.appendleft(call)

    def _dispatch(self, call: Call) -> bool:
        while self.idle:
            child = self.idle.popleft()
            if child.dead or child.killing or child.call is not None:
                continue
            child.send(call)
            self._gauge()
            return True
        return False

    def _fail_if_down(self, call: Call) -> bool:
        if self._live() == 0 and self.failures >= CRASH_LOOP:
            err = CallError(Code.UNAVAILABLE, f"backend {self.spec.name} is crash-looping ({self.last_exit})")
            self.record(call, err)
            call.fail(err)
            return True
        return False

    def _live(self) -> int:
        return sum(1 for c in self.children if not c.dead)

    def _current(self) -> int:
        """Live children of the current generation (not retiring after a restart)."""
        return sum(1 for c in self.children if not c.dead and not c.retiring)

    def _queue(self, call: Call) -> bool:
        if len(self.waiting) >= self.spec.max_waiting:
            err = CallError(Code.RESOURCE_EXHAUSTED, f"backend {self.spec.name}: all {self.spec.pool_size} "
                                                     f"children busy and {len(self.waiting)} calls waiting")
            self.record(call, err)
            call.fail(err)
            return False
        self.waiting.append(call)
        return True

    def _timeout(self, call: Call) -> None:
        call.timer = None
        err = CallError(Code.DEADLINE_EXCEEDED, f"backend {self.spec.name} did not answer in time")
        self.record(call, err)
        if call in self.waiting:
            self.waiting.remove(call)
            call.fail(err)
            return
        child = call.conn
        call.fail(err)
        if isinstance(child, Child):
            if child.call is call:
                child.call = None
            child.kill("call timed out; the program is hung or slow")

    def record(self, call: Call, err: CallError | None) -> None:
        # an answer proves the program works, unless an old child gave it while the restarted
        # ones fail to start: their backoff must not be reset by every call the old one serves
        works = call.conn is None or not call.conn.retiring
        if err is None:
            outcome = "ok"
            if works:
                self.failures = 0
        elif err.code in (Code.UNAVAILABLE, Code.DEADLINE_EXCEEDED, Code.RESOURCE_EXHAUSTED):
            outcome = err.code.name.lower()
        elif err.reusable:
            outcome = "legacy_error"
            if works:
                self.failures = 0  # an error the program answered: it works
        else:
            outcome = "protocol_error"
        metrics.recorder.backend_call(self.spec.name, outcome, time.monotonic() - call.started)


def child_env(extra: dict[str, str], base: Any = None) -> dict[str, str]:
    """spawnProcess gives the child only the env it is handed: start from our own."""
    return {**(os.environ if base is None else base), **extra}
