"""The admission core (sans-IO) and its Gate shell, driven by a fake clock: bounds hold under any
sequence of arrivals, ends, cancellations and clock steps; every call gets exactly one answer."""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adaptercar.admission import Admission, Gate, Verdict
from adaptercar.mapping.errors import CallError, Code

# --- core ----------------------------------------------------------------------------------

ops = st.lists(
    st.one_of(
        st.tuples(st.just("offer"), st.floats(0.0, 5.0)),  # deadline in seconds from now
        st.tuples(st.just("release"), st.floats(0.0, 2.0)),  # held for
        st.tuples(st.just("withdraw"), st.integers(0, 50)),
        st.tuples(st.just("tick"), st.floats(0.0, 1.0)),
    ),
    max_size=200,
)


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 5), st.integers(0, 6), ops)
def test_core_bounds_and_fifo(limit: int, queue: int, steps: list[tuple[str, Any]]) -> None:
    core = Admission(limit, queue)
    now = 0.0
    queued: list[Any] = []  # live waiters in arrival order
    for kind, arg in steps:
        if kind == "offer":
            verdict, w = core.offer(now, now + arg)
            if arg == 0.0:
                assert verdict is Verdict.LATE
            if verdict is Verdict.WAIT:
                assert w is not None and len(queued) < queue
                queued.append(w)
            elif verdict is Verdict.FULL:
                assert core.waiting == queue
            elif verdict is Verdict.RUN:
                assert not queued
        elif kind == "release" and core.running:
            nxt, expired = core.release(now, arg)
            live = [w for w in queued if w.queued or w is nxt or w in expired]
            # FIFO: the expired ones are the oldest, then the one that starts
            order = [*expired, *([nxt] if nxt is not None else [])]
            assert live[: len(order)] == order
            assert all(w.deadline <= now for w in expired)
            assert nxt is None or nxt.deadline > now
            queued = [w for w in queued if w.queued]
        elif kind == "withdraw" and queued:
            w = queued.pop(arg % len(queued))
            assert core.withdraw(w)
            assert not core.withdraw(w)
        elif kind == "tick":
            now += arg
        assert 0 <= core.running <= limit
        assert core.waiting == len(queued) <= queue
        assert core.waiting == 0 or core.running == limit  # nobody waits beside a free slot
        assert len(core._line) <= 2 * core.waiting + 17  # withdrawn entries do not pile up


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 8), st.floats(0.01, 2.0), st.integers(0, 40), st.floats(0.05, 10.0))
def test_core_sheds_a_call_that_cannot_start_before_its_deadline(
        limit: int, held: float, ahead: int, budget: float) -> None:
    core = Admission(limit, 1000)
    for _ in range(limit):
        assert core.offer(0.0, 100.0)[0] is Verdict.RUN
    nxt, _ = core.release(0.0, held)  # one measured call: the average is `held`
    assert nxt is None
    core.offer(0.0, 100.0)
    for _ in range(ahead):
        core.offer(0.0, 1e9)
    verdict, _ = core.offer(0.0, budget)
    expected = (ahead + 1) * held / limit
    assert (verdict is Verdict.LATE) == (expected >= budget)


def test_core_rejects_nonsense_limits() -> None:
    with pytest.raises(ValueError):
        Admission(0, 1)
    with pytest.raises(ValueError):
        Admission(1, -1)


# --- shell ---------------------------------------------------------------------------------

class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.timers: list[tuple[float, int, Timer]] = []
        self.seq = 0

    def __call__(self) -> float:
        return self.now

    def call_later(self, delay: float, fn: Any) -> Timer:
        t = Timer(self.now + delay, fn)
        self.seq += 1
        heapq.heappush(self.timers, (t.at, self.seq, t))
        return t

    def advance(self, dt: float) -> None:
        end = self.now + dt
        while self.timers and self.timers[0][0] <= end:
            at, _, t = heapq.heappop(self.timers)
            self.now = max(self.now, at)
            if t.live:
                t.live = False
                t.fn()
        self.now = end


@dataclass
class Timer:
    at: float
    fn: Any
    live: bool = True

    def active(self) -> bool:
        return self.live

    def cancel(self) -> None:
        assert self.live
        self.live = False


class Drain:
    def __init__(self) -> None:
        self.inflight = 0

    def enter(self) -> None:
        self.inflight += 1

    def leave(self) -> None:
        self.inflight -= 1
        assert self.inflight >= 0


@dataclass
class Ctx:
    deadline: float | None = None


class Backend:
    """A backend with unbounded capacity of its own: the gate must do the bounding."""

    def __init__(self) -> None:
        self.running: dict[int, Any] = {}
        self.peak = 0

    def start(self, request: Any, ctx: Any, info: dict[str, Any], done: Any) -> Any:
        if request < 0:
            raise CallError(Code.INVALID_ARGUMENT, "bad")
        self.running[request] = done
        self.peak = max(self.peak, len(self.running))
        return lambda: self.running.pop(request, None)

    def finish(self, key: int) -> None:
        self.running.pop(key)(key, None)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 4), st.integers(0, 5), st.lists(st.one_of(
    st.tuples(st.just("call"), st.one_of(st.none(), st.floats(0.1, 3.0))),
    st.tuples(st.just("bad"), st.none()),
    st.tuples(st.just("finish"), st.integers(0, 100)),
    st.tuples(st.just("cancel"), st.integers(0, 100)),
    st.tuples(st.just("tick"), st.floats(0.0, 1.5)),
), max_size=120))
def test_gate_answers_every_call_once_within_bounds(limit: int, queue: int,
                                                    steps: list[tuple[str, Any]]) -> None:
    clock = FakeClock()
    shed: list[str] = []
    drain = Drain()
    gate = Gate("b", limit, queue, clock, clock.call_later, shed.append, drain)
    backend = Backend()
    start = gate.wrap(backend.start, 2.0)
    answers: dict[int, list[Any]] = {}
    cancels: dict[int, Any] = {}
    cancelled: set[int] = set()
    deadlines: dict[int, float] = {}
    n = 0
    for kind, arg in steps:
        if kind in ("call", "bad"):
            n += 1
            key = n if kind == "call" else -n
            answers[key] = []
            deadlines[key] = clock.now + (arg if arg is not None else 2.0)
            ctx = Ctx(None if arg is None else clock.now + arg)
            try:
                cancels[key] = start(key, ctx, {}, lambda r, e, k=key: answers[k].append((r, e)))
            except CallError as e:
                answers[key].append((None, e))
                if kind == "call":
                    assert e.code is Code.RESOURCE_EXHAUSTED
        elif kind == "finish" and backend.running:
            keys = sorted(backend.running)
            backend.finish(keys[arg % len(keys)])
        elif kind == "cancel" and cancels:
            keys = sorted(cancels)
            key = keys[arg % len(keys)]
            cancels.pop(key)()
            cancelled.add(key)
        elif kind == "tick":
            clock.advance(arg)
        assert len(backend.running) <= limit
        assert gate.core.waiting <= queue
        assert drain.inflight == gate.core.waiting  # shutdown waits for queued calls
    clock.advance(10.0)  # every deadline passes: queued calls are answered
    for key in list(backend.running):
        backend.finish(key)
    for key, got in answers.items():
        assert len(got) <= 1, (key, got)
        if key not in cancelled:
            assert len(got) == 1, key
        if got and isinstance(got[0][1], CallError) and got[0][1].code is Code.DEADLINE_EXCEEDED:
            assert clock.now >= deadlines[key]
    assert backend.peak <= limit
    assert gate.core.running == 0 and gate.core.waiting == 0 and drain.inflight == 0
    assert set(shed) <= {"queue_full", "deadline", "expired"}


def test_gate_starts_queued_calls_in_order_with_their_deadline() -> None:
    clock = FakeClock()
    gate = Gate("b", 1, 2, clock, clock.call_later, lambda r: None)
    seen: list[tuple[int, float | None]] = []
    dones: list[Any] = []

    def inner(request: Any, ctx: Any, info: dict[str, Any], done: Any) -> Any:
        seen.append((request, ctx.deadline))
        dones.append(done)
        return lambda: None

    start = gate.wrap(inner, 2.0)
    out: list[Any] = []
    for i in range(3):
        start(i, Ctx(), {}, lambda r, e: out.append((r, e)))
    with pytest.raises(CallError) as ei:
        start(9, Ctx(), {}, lambda r, e: None)
    assert ei.value.code is Code.RESOURCE_EXHAUSTED and "overloaded" in ei.value.message
    assert seen == [(0, None)]
    clock.advance(0.5)
    dones[0]("a", None)
    # the queued call starts with the deadline it arrived with: now (0) + its 2 s timeout
    assert seen[1] == (1, 2.0)
    clock.advance(2.0)  # call 2 waited past its deadline: DEADLINE_EXCEEDED, not a hang
    assert out[0] == ("a", None)
    assert isinstance(out[1][1], CallError) and out[1][1].code is Code.DEADLINE_EXCEEDED


# --- wiring: one gate per backend, kept across reloads while the pool is --------------------

def test_a_reloaded_backend_keeps_its_gate_while_its_pool_and_limits_stay() -> None:
    from adaptercar.compile import _gate
    from adaptercar.config.schema import Backend as BackendConfig

    class Reactor:
        def callLater(self, delay: float, fn: Any) -> Any:  # noqa: N802 - twisted's name
            raise AssertionError("not called here")

    def cfg(**over: Any) -> BackendConfig:
        return BackendConfig.model_validate({"line": {
            "address": "127.0.0.1:1", "framing": {"delimiter": "\n"},
            "pool": {"size": 3, "pipeline": 2, "max_waiting": 7}, **over}})

    pool, other_pool = object.__new__(Backend), object.__new__(Backend)
    assert _gate("b", cfg(), pool, Reactor(), None) is None  # neither key: the pool's own bounds
    g = _gate("b", cfg(queue=5), pool, Reactor(), None)
    assert g is not None and (g.core.limit, g.core.queue) == (6, 5)  # size × pipeline
    assert _gate("b", cfg(queue=5), pool, Reactor(), None) is g
    assert _gate("b", cfg(queue=5), other_pool, Reactor(), None) is not g
    g2 = _gate("b", cfg(max_concurrency=2), pool, Reactor(), None)
    assert g2 is not None and g2 is not g and (g2.core.limit, g2.core.queue) == (2, 7)


def test_gate_late_arrival_and_refused_requests_are_not_overload() -> None:
    clock = FakeClock()
    shed: list[str] = []
    gate = Gate("b", 1, 1, clock, clock.call_later, shed.append)
    backend = Backend()
    start = gate.wrap(backend.start, 2.0)
    clock.advance(5.0)
    with pytest.raises(CallError) as ei:  # the caller's deadline passed before it arrived
        start(1, Ctx(deadline=4.0), {}, lambda r, e: None)
    assert ei.value.code is Code.DEADLINE_EXCEEDED and shed == []
    with pytest.raises(CallError) as ei:  # refused before sending: no slot kept, no sample
        start(-2, Ctx(), {}, lambda r, e: None)
    assert ei.value.code is Code.INVALID_ARGUMENT
    assert gate.core.running == 0 and gate.core.service_time == 0.0
    start(3, Ctx(), {}, lambda r, e: None)
    clock.advance(0.5)
    backend.finish(3)
    assert gate.core.service_time == pytest.approx(0.5)
