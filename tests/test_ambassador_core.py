"""Sans-IO ambassador rules: selection, backoff, retry conditions, budget, discovery model."""

from __future__ import annotations

import random
from types import SimpleNamespace
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from adaptercar.ambassador.discovery import Discovery, clamp_ttl
from adaptercar.ambassador.policy import RetryBudget, RetryPolicy, backoff, retry_after
from adaptercar.ambassador.selection import Endpoint, choose
from adaptercar.config.schema import Retry

endpoint_lists = st.lists(
    st.builds(Endpoint, host=st.sampled_from(["a", "b", "c", "d", "e", "f"]),
              port=st.integers(1, 4), priority=st.integers(0, 3), weight=st.integers(0, 5)),
    min_size=0, max_size=8, unique_by=lambda e: e.key)


@settings(max_examples=300)
@given(endpoint_lists, st.data(), st.integers(0, 2**32))
def test_never_picks_open_while_a_closed_one_exists(eps: list[Endpoint], data: st.DataObject,
                                                    seed: int) -> None:
    open_keys = data.draw(st.sets(st.sampled_from([e.key for e in eps]) if eps else st.nothing()))
    tried = data.draw(st.sets(st.sampled_from([e.key for e in eps]) if eps else st.nothing()))
    picked = choose(eps, lambda e: e.key in open_keys, random.Random(seed), tried)
    closed = [e for e in eps if e.key not in open_keys]
    if not closed:
        assert picked is None
        return
    assert picked is not None and picked.key not in open_keys
    fresh = [e for e in closed if e.key not in tried]
    pool = fresh or closed
    if fresh:
        assert picked.key not in tried  # a retry goes elsewhere when it can
    assert picked.priority == min(e.priority for e in pool)
    group = [e for e in pool if e.priority == picked.priority]
    if any(e.weight > 0 for e in group):
        assert picked.weight > 0


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(1, 10), min_size=1, max_size=4), st.integers(0, 2**32))
def test_long_run_frequencies_follow_weights(weights: list[int], seed: int) -> None:
    eps = [Endpoint(f"h{i}", 1, priority=1, weight=w) for i, w in enumerate(weights)]
    eps.append(Endpoint("lower", 1, priority=2, weight=100))  # never used while group 1 is up
    rng = random.Random(seed)
    n = 20000
    counts = {e.key: 0 for e in eps}
    for _ in range(n):
        pick = choose(eps, lambda e: False, rng)
        assert pick is not None
        counts[pick.key] += 1
    assert counts["lower:1"] == 0
    total = sum(weights)
    for i, w in enumerate(weights):
        p = w / total
        sd = (n * p * (1 - p)) ** 0.5
        assert abs(counts[f"h{i}:1"] - n * p) <= 5 * sd + 1


def test_whole_group_open_falls_to_next_priority_and_back() -> None:
    eps = [Endpoint("a", 1, 1, 60), Endpoint("b", 1, 1, 40), Endpoint("c", 1, 2, 100)]
    rng = random.Random(1)
    assert {choose(eps, lambda e: e.host in "ab", rng).key for _ in range(50)} == {"c:1"}  # type: ignore[union-attr]
    assert {choose(eps, lambda e: False, rng).key for _ in range(200)} == {"a:1", "b:1"}  # type: ignore[union-attr]
    assert choose(eps, lambda e: True, rng) is None
    assert choose([], lambda e: False, rng) is None


def test_weight_zero_only_when_nothing_else() -> None:
    rng = random.Random(2)
    eps = [Endpoint("z", 1, 0, 0), Endpoint("w", 1, 0, 1)]
    assert {choose(eps, lambda e: False, rng).key for _ in range(200)} == {"w:1"}  # type: ignore[union-attr]
    assert choose(eps, lambda e: e.host == "w", rng) == eps[0]


@given(st.integers(0, 200), st.floats(1e-4, 10), st.floats(1e-4, 100), st.integers(0, 2**32))
def test_backoff_always_within_bounds(n: int, base: float, cap: float, seed: int) -> None:
    b = backoff(n, base, cap, random.Random(seed))
    assert 0.0 <= b <= min(cap, base * 2.0 ** min(n, 62))


def test_backoff_grows_then_caps() -> None:
    rng = random.Random(3)
    assert max(backoff(0, 0.025, 1.0, rng) for _ in range(500)) <= 0.025
    assert max(backoff(3, 0.025, 1.0, rng) for _ in range(500)) > 0.1
    assert max(backoff(30, 0.025, 1.0, rng) for _ in range(500)) <= 1.0


def test_retry_conditions() -> None:
    pol = RetryPolicy(Retry())
    assert pol.reason("POST", "connect-failure") == "connect-failure"  # nothing reached upstream
    assert pol.reason("POST", "reset") is None
    assert pol.reason("POST", 503) is None
    assert pol.reason("GET", "reset") == "reset"
    assert pol.reason("GET", 503) == "503"
    assert pol.reason("GET", 504) == "504"
    assert pol.reason("GET", 500) is None
    only = RetryPolicy(Retry.model_validate({"on": [503], "methods": ["POST"]}))
    assert only.reason("GET", "connect-failure") is None
    assert only.reason("POST", 503) == "503"
    assert only.reason("GET", 503) is None


@settings(max_examples=200)
@given(st.floats(0, 1), st.floats(0, 5), st.lists(st.tuples(st.floats(0, 1), st.booleans()),
                                                 max_size=300))
def test_budget_bounds_retries_in_every_window(ratio: float, floor: float,
                                              steps: list[tuple[float, bool]]) -> None:
    budget = RetryBudget(ratio, floor)
    now = 1000.0
    events: list[tuple[float, str]] = []
    for dt, is_retry in steps:
        now += dt
        if is_retry:
            if budget.try_retry(now):
                events.append((now, "retry"))
        else:
            budget.request(now)
            events.append((now, "req"))
    # every granted retry fits ratio × requests + floor × 10 of its (whole-second) window
    for t, kind in events:
        if kind != "retry":
            continue
        lo = int(t) - RetryBudget.WINDOW
        req = sum(1 for u, k in events if k == "req" and lo < int(u) and u <= t)
        ret = sum(1 for u, k in events if k == "retry" and lo < int(u) and u <= t)
        assert ret <= ratio * req + floor * RetryBudget.WINDOW + 1e-9


def test_budget_storm_ratio() -> None:
    budget = RetryBudget(0.2, 0)
    granted = 0
    for i in range(1000):
        now = 50 + i * 0.005
        budget.request(now)
        granted += budget.try_retry(now) + budget.try_retry(now)
    assert 190 <= granted <= 200
    assert not RetryBudget(0.2, 0).try_retry(1.0)
    assert RetryBudget(0.0, 1).try_retry(1.0)


def test_budget_window_slides() -> None:
    budget = RetryBudget(0.5, 0)
    for _ in range(10):
        budget.request(100.0)
    assert sum(budget.try_retry(100.5) for _ in range(10)) == 5
    assert not budget.try_retry(111.0)  # the requests have left the window


def test_retry_after() -> None:
    assert retry_after(b"2", 0) == 2.0
    assert retry_after(None, 0) is None
    assert retry_after(b"soon", 0) is None
    assert retry_after(b"Thu, 01 Jan 1970 00:00:10 GMT", 4.0) == 6.0


def test_discovery_ttl_clamp_and_stale_if_error() -> None:
    assert clamp_ttl(0, 1, 60) == 1 and clamp_ttl(600, 1, 60) == 60 and clamp_ttl(5, 1, 60) == 5
    d = Discovery(min_ttl=1, max_ttl=60)
    a = [Endpoint("a", 1)]
    assert d.answer(a, 300, now=0) == "ok" and d.ttl_next == 60 and d.last_refresh == 0
    assert d.failure(now=60) == "error"
    assert d.endpoints == tuple(a) and d.ttl_next == 1
    assert d.answer([], 5, now=61) == "empty-held" and d.endpoints == tuple(a)
    assert d.ttl_next == 5  # asked again by the empty answer's TTL...
    assert d.answer([], 5, now=120) == "empty-held" and d.endpoints == tuple(a)
    assert d.answer([], 5, now=121) == "empty" and d.endpoints == ()  # ...held for the good one's
    assert d.answer(a, 5, now=70) == "ok" and d.endpoints == tuple(a)
    assert Discovery.static(a).endpoints == tuple(a)


def test_schema_retry_section_compiles() -> None:
    pol = RetryPolicy(SimpleNamespace(attempts=2, backoff=SimpleNamespace(base=0.01, max=0.1),
                                      on=("reset", 502), methods=("GET",)))
    assert pol.attempts == 2 and pol.on_status == {502} and pol.on_reset and not pol.on_connect


def test_breaker_opens_half_opens_one_trial_and_closes() -> None:
    import time as _time

    from twisted.internet import defer

    from adaptercar.ambassador.breaker import CLOSED, HALF_OPEN, OPEN, EndpointBreaker

    states: list[int] = []
    br = EndpointBreaker(failures=2, reset=0.2, on_change=states.append)

    def run(result: str, pending: defer.Deferred[str] | None = None) -> defer.Deferred[str | None]:
        async def attempt() -> str:
            return await pending if pending is not None else result

        return defer.ensureDeferred(br.run(attempt, lambda r: r == "fail"))

    assert run("fail").result == "fail" and br.state == CLOSED
    assert run("fail").result == "fail" and br.state == OPEN  # the tripping call keeps its result
    assert not br.available()
    assert run("ok").result is None  # refused while open: nothing was tried
    _time.sleep(0.25)
    assert br.available()
    trial: defer.Deferred[str] = defer.Deferred()
    d = run("", trial)
    assert br.state == HALF_OPEN and not br.available()  # only one trial at a time
    trial.callback("ok")
    assert d.result == "ok" and br.state == CLOSED and br.available()
    assert states == [OPEN, HALF_OPEN, CLOSED]
    # a cancelled trial says nothing good about the endpoint: it re-opens
    run("fail"), run("fail")
    _time.sleep(0.25)
    hang: defer.Deferred[str] = defer.Deferred()
    d = run("", hang)
    d.addErrback(lambda f: f.trap(defer.CancelledError))
    d.cancel()
    assert br.state == OPEN and not br.available()


def test_breaker_counts_consecutive_failures_on_its_fast_path() -> None:
    """While closed with nothing counted, a try skips pybreaker; failures still count."""
    from twisted.internet import defer

    from adaptercar.ambassador.breaker import CLOSED, OPEN, EndpointBreaker

    br = EndpointBreaker(failures=3, reset=30.0)

    def run(result: str) -> defer.Deferred[str | None]:
        async def attempt() -> str:
            if result == "raise":
                raise ConnectionError("boom")
            return result

        return defer.ensureDeferred(br.run(attempt, lambda r: r == "fail"))

    for _ in range(5):  # a success in between resets the count: never three in a row
        run("fail"), run("fail")
        assert run("ok").result == "ok" and br.state == CLOSED and br.cb.fail_counter == 0
    hang: defer.Deferred[str] = defer.Deferred()

    async def waiting() -> str:
        return await hang

    cancelled = defer.ensureDeferred(br.run(waiting, lambda r: False))
    cancelled.addErrback(lambda f: f.trap(defer.CancelledError))
    cancelled.cancel()  # says nothing about the endpoint
    assert br.cb.fail_counter == 0 and br.state == CLOSED
    raised = run("raise")
    assert raised.result.check(ConnectionError)  # an unexpected error is counted, then raised
    raised.addErrback(lambda f: None)
    assert br.cb.fail_counter == 1
    run("fail")
    assert run("fail").result == "fail" and br.state == OPEN


def test_endpoint_authority_for_host_rewrite() -> None:
    assert Endpoint("10.0.0.1", 8080, name="pay-1.svc.local").authority == b"pay-1.svc.local:8080"
    assert Endpoint("10.0.0.1", 80, name="pay-1").authority == b"pay-1"  # the default port is implied
    assert Endpoint("::1", 8080).authority == b"[::1]:8080"  # no name: the address


def test_host_header_config_problem_is_located(tmp_path: Any) -> None:
    from adaptercar.config.load import load_config

    path = tmp_path / "adaptercar.yaml"
    path.write_text("ambassador:\n  - name: p\n    listen: 127.0.0.1:0\n"
                    "    upstream: {static: [127.0.0.1:1]}\n    host_header: 'a b'\n")
    [problem] = load_config(path).problems
    assert problem.format().endswith(
        "adaptercar.yaml:5: ambassador[0].host_header: expected keep, upstream or a host name "
        "such as api.example.com, got 'a b'"), problem.format()


class _Consumer:
    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes) -> None:
        self.data += data


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 300), st.booleans()), max_size=40), st.integers(64, 1024),
       st.booleans())
def test_body_stream_delivers_in_order_with_bounded_memory(steps: list[tuple[int, bool]],
                                                          limit: int, late_start: bool) -> None:
    from adaptercar.ambassador.body import BodyStream

    caller = {"paused": False}
    stream = BodyStream(None, lambda: caller.update(paused=True),
                        lambda: caller.update(paused=False), limit=limit)
    reader, consumer = stream.reader_for_try(), _Consumer()
    if not late_start:
        reader.startProducing(consumer)
    sent = bytearray()
    for i, (size, upstream_slow) in enumerate(steps):
        if upstream_slow:
            reader.pauseProducing()
        else:
            reader.resumeProducing()
        if caller["paused"]:
            assert stream.received - reader.pos > limit // 2  # paused only with a backlog
            reader.resumeProducing()
            if reader.consumer is None:
                reader.startProducing(consumer)
            continue  # a paused caller sends nothing
        data = bytes([i % 251]) * size
        stream.feed(data)
        sent += data
        assert sum(map(len, stream.chunks)) <= limit + 2 * 300  # never the whole body
    if reader.consumer is None:
        reader.startProducing(consumer)
    reader.resumeProducing()
    stream.finish()
    assert bytes(consumer.data) == bytes(sent) and not caller["paused"]
    assert stream.can_replay == (len(sent) <= limit or stream.start == 0)
    if len(sent) <= limit:  # small enough to keep: a retry sends it whole again
        again = _Consumer()
        stream.reader_for_try().startProducing(again)
        assert bytes(again.data) == bytes(sent)
