"""Admission of calls to one backend: a concurrency limit, a bounded wait queue, and shedding.

A legacy backend has a fixed capacity (a handful of connections or children). Past it, more
waiting only adds latency and memory: a call that cannot start before its deadline, or that
finds the queue full, is refused at once (RESOURCE_EXHAUSTED, HTTP 429) so the caller can back
off or go elsewhere, and the sidecar's memory stays bounded under any burst.

`Admission` is the sans-IO core (no clock, no reactor: times are passed in), property-tested.
`Gate` is the thin shell the invokers use: it wraps a callback-style `start` (fronts/calls.py),
times calls, and fails queued calls at their deadline with a timer of the caller's reactor.

Deadline-aware: the core keeps a moving average of how long an admitted call holds its slot.
A call arriving when every slot is busy expects to wait about (position + 1) / limit of that
average; if that is past its deadline, it is refused now instead of timing out in the queue.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from enum import Enum
from typing import Any

from .mapping.errors import CallError, Code

_ALPHA = 0.2  # weight of the newest sample in the service-time average


class Verdict(Enum):
    RUN = "run"  # start now: a slot is taken
    WAIT = "wait"  # queued: `release` hands it a slot later, or it is withdrawn
    FULL = "queue_full"  # refused: the queue is full
    LATE = "deadline"  # refused: it could not start before its deadline


class Waiter:
    """A queued call. `payload` is the shell's; the core only reads `deadline`."""

    __slots__ = ("deadline", "payload", "queued")

    def __init__(self, deadline: float, payload: Any) -> None:
        self.deadline = deadline
        self.payload = payload
        self.queued = True


_NONE: list[Waiter] = []  # shared, never appended to


class Admission:
    """At most `limit` calls running and `queue` waiting, first come first served."""

    def __init__(self, limit: int, queue: int) -> None:
        if limit < 1 or queue < 0:
            raise ValueError(f"limit must be >= 1 and queue >= 0, got {limit}, {queue}")
        self.limit = limit
        self.queue = queue
        self.running = 0
        self.waiting = 0  # live waiters (withdrawn ones may still sit in _line until popped)
        self.service_time = 0.0  # moving average, seconds; 0: nothing measured yet
        self._line: deque[Waiter] = deque()

    def expected_wait(self, position: int) -> float:
        """Seconds until the waiter at `position` (0: first in line) should get a slot."""
        return (position + 1) * self.service_time / self.limit

    def offer(self, now: float, deadline: float, payload: Any = None) -> tuple[Verdict, Waiter | None]:
        """A call arrives. RUN takes a slot; WAIT returns the queued `Waiter`."""
        if deadline <= now:
            return Verdict.LATE, None
        if self.running < self.limit and not self.waiting:
            self.running += 1
            return Verdict.RUN, None
        if self.waiting >= self.queue:
            return Verdict.FULL, None
        if now + self.expected_wait(self.waiting) >= deadline:
            return Verdict.LATE, None
        w = Waiter(deadline, payload)
        self._line.append(w)
        self.waiting += 1
        return Verdict.WAIT, w

    def withdraw(self, w: Waiter) -> bool:
        """A queued call gives up (cancelled, or its deadline passed). False if it was not
        queued any more (already started or withdrawn)."""
        if not w.queued:
            return False
        w.queued = False
        self.waiting -= 1
        line = self._line
        if len(line) > 2 * self.waiting + 16:  # withdrawn entries: drop them, amortised O(1)
            self._line = deque(x for x in line if x.queued)
        return True

    def release(self, now: float, held: float | None) -> tuple[Waiter | None, list[Waiter]]:
        """A running call ends after holding its slot `held` seconds (None: not a measure of
        the backend, e.g. a request refused before it was sent). Returns the waiter that now
        takes the slot (if any) and the waiters found past their deadline on the way
        (withdrawn: the shell fails them)."""
        if held is not None:
            self.service_time = held if not self.service_time else (
                self.service_time + _ALPHA * (held - self.service_time))
        line = self._line
        if not line:  # the usual case: nobody waits
            self.running -= 1
            return None, _NONE
        expired: list[Waiter] = []
        while line:
            w = line.popleft()
            if not w.queued:
                continue
            w.queued = False
            self.waiting -= 1
            if w.deadline <= now:
                expired.append(w)
                continue
            return w, expired  # the slot passes from the ended call to this one
        self.running -= 1
        return None, expired


# --- shell ---------------------------------------------------------------------------------

Done = Callable[[Any, BaseException | None], None]
Start = Callable[[Any, Any, dict[str, Any], Done], Callable[[], None]]


class Gate:
    """One backend's admission in one worker, shared by every method mapped to it (and kept
    across reloads while the backend's pool is). `on_shed(reason)` counts refusals."""

    def __init__(self, name: str, limit: int, queue: int, clock: Callable[[], float],
                 call_later: Callable[..., Any], on_shed: Callable[[str], None],
                 drain: Any = None) -> None:
        self.name = name
        # `drain.enter()`/`leave()` around a call's wait, so shutdown waits for queued calls too
        # (the backend invoker counts it again once it runs)
        self.drain = drain
        self.core = Admission(limit, queue)
        self.clock = clock
        self.call_later = call_later
        self.on_shed = on_shed
        self._ended: deque[float | None] = deque()
        self._handing_on = False

    def refuse(self, verdict: Verdict) -> CallError:
        self.on_shed(verdict.value)
        core = self.core
        if verdict is Verdict.FULL:
            return CallError(Code.RESOURCE_EXHAUSTED, f"backend {self.name} overloaded: "
                             f"{core.running} calls running and {core.waiting} waiting")
        return CallError(Code.RESOURCE_EXHAUSTED, f"backend {self.name} overloaded: the call "
                         "could not start before its deadline")

    def wrap(self, inner: Start, default_timeout: float) -> Start:
        """`inner` behind this gate. A call's deadline is its caller's, else now + the
        method's timeout; a queued call keeps that deadline once it starts."""
        core = self.core
        clock = self.clock

        def start(request: Any, ctx: Any, info: dict[str, Any], done: Done) -> Callable[[], None]:
            now = clock()
            deadline = ctx.deadline
            if deadline is None:
                deadline = now + default_timeout
            elif deadline <= now:  # not overload: the caller's time was up on arrival
                raise CallError(Code.DEADLINE_EXCEEDED, "deadline expired before the call was sent")
            verdict, waiter = core.offer(now, deadline)
            if verdict is Verdict.RUN:
                return self._run(inner, request, ctx, info, done, now, sync=True)
            if waiter is None:
                raise self.refuse(verdict)
            return self._queue(inner, waiter, request, ctx, info, done, deadline)

        return start

    def _run(self, inner: Start, request: Any, ctx: Any, info: dict[str, Any], done: Done,
             t0: float, sync: bool) -> Callable[[], None]:
        """Start a call that holds a slot; the slot is released exactly once, when it ends."""
        held = [True]

        def release(measured: bool = True) -> None:
            if held[0]:
                held[0] = False
                self._released(t0, measured)

        def finished(result: Any, err: BaseException | None) -> None:
            release()
            done(result, err)

        try:
            cancel = inner(request, ctx, info, finished)
        except BaseException as e:
            release(measured=False)
            if sync:
                raise  # refused before anything was sent: the front answers at once
            done(None, e)  # started from the queue: nobody is left to catch it
            return _nothing

        def give_up() -> None:  # the caller left: it may never hear `done`, free the slot now
            cancel()
            release()

        return give_up

    def _queue(self, inner: Start, waiter: Waiter, request: Any, ctx: Any, info: dict[str, Any],
               done: Done, deadline: float) -> Callable[[], None]:
        cancel: list[Callable[[], None]] = []
        drain = self.drain
        if drain is not None:
            drain.enter()

        def left_queue() -> None:
            if drain is not None:
                drain.leave()

        def late() -> None:  # withdrawn already
            if timer.active():
                timer.cancel()
            left_queue()
            self.on_shed("expired")
            done(None, CallError(Code.DEADLINE_EXCEEDED, f"backend {self.name} overloaded: "
                                 "the deadline passed while the call waited to start"))

        def expire() -> None:
            if self.core.withdraw(waiter):
                late()

        timer = self.call_later(max(0.0, deadline - self.clock()), expire)

        def go(now: float) -> None:
            if timer.active():
                timer.cancel()
            c = ctx if ctx.deadline is not None else _with_deadline(ctx, deadline)
            try:
                cancel.append(self._run(inner, request, c, info, done, now, sync=False))
            finally:
                left_queue()  # after the invoker counted the running call

        def give_up() -> None:
            if self.core.withdraw(waiter):
                if timer.active():
                    timer.cancel()
                left_queue()
            elif cancel:
                cancel[0]()

        waiter.payload = (go, late)
        return give_up

    def _released(self, t0: float, measured: bool = True) -> None:
        """Hand the slot on. Iterative: a call started here may end at once (a backend known
        to be down) and release again; that must not recurse once per queued call."""
        core = self.core
        if not core._line and not self._handing_on:  # nobody waits: no slot to hand on
            core.release(0.0, self.clock() - t0 if measured else None)
            return
        self._ended.append(self.clock() - t0 if measured else None)
        if self._handing_on:
            return
        self._handing_on = True
        try:
            while self._ended:
                now = self.clock()
                nxt, expired = self.core.release(now, self._ended.popleft())
                for w in expired:
                    w.payload[1]()
                if nxt is not None:
                    nxt.payload[0](now)
        finally:
            self._handing_on = False


def _with_deadline(ctx: Any, deadline: float) -> Any:
    from dataclasses import replace

    return replace(ctx, deadline=deadline)


def _nothing() -> None:
    pass
