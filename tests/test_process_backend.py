"""The process backend over real child processes: legacy stdin/stdout programs behind the sidecar.

Every test runs the real sidecar (mostly `--single-process` to stay fast) with real children —
the ratequote fixture (`legacy_fixtures/ratequote`, whose switches drive each failure) and GNU
`bc -q` — and talks to it with real gRPC and HTTP clients. What users rely on: callers of a
pool never get each other's answers; a crashed, hung or babbling child is replaced and the call
it had fails with the right code; its exit is logged with the status and stderr tail; a full
queue fails fast; stderr rules and exit statuses map errors; values that would inject a
second command never reach the program; no child outlives the sidecar.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import cache, partial
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from adaptercar.protos import ProtoSet, compile_protos
from legacy_fixtures.ratequote.ratequote import PRICES, REGIONS
from tests.harness import ROOT, Sidecar, until

CASES = Path(__file__).resolve().parent / "process_cases"
RATEQUOTE = (sys.executable, "-m", "legacy_fixtures.ratequote")
QUOTE = "ratequote.v1.RateQuote.Quote"
EVAL = "calc.v1.Calc.Eval"
ONCE = "rqdiag.v1.RateQuoteOnce"
OK = grpc.StatusCode.OK
NO_TABLE = "/nonexistent/ratequote/rates.txt"
# urllib's default for a POST body is a form (x-www-form-urlencoded), which the HTTP front
# reads as query parameters when the text holds '=' (see the report): say it is JSON
JSON = {"Content-Type": "application/json"}
pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX children and signals")


# --- configs -------------------------------------------------------------------------------------

def process_backend(command: tuple[str, ...] | list[str], **over: Any) -> dict[str, Any]:
    """A `process` backend block; `pool` overrides merge into the default pool."""
    proc: dict[str, Any] = {
        "command": list(command),
        "cwd": str(ROOT),
        "framing": {"delimiter": "\n"},
        "pool": {"size": 2},
        "timeout": "5s",  # generous: a loaded machine starts Python slowly; hang tests set 1s
        "env": {"PYTHONPATH": str(ROOT)},  # for `-m legacy_fixtures.ratequote`
    }
    pool = over.pop("pool", {})
    proc.update(over)
    proc["pool"] = {**proc["pool"], **pool}
    return {"process": proc}


def ratequote(*args: str, **over: Any) -> dict[str, Any]:
    return process_backend([*RATEQUOTE, *args], **over)


def config(backends: dict[str, Any], *mappings: Path) -> dict[str, Any]:
    return {
        "grpc": {},
        "http": {},
        "admin": {},
        "protos": [str(ROOT / "protos"), str(CASES / "protos")],
        "mappings": [str(m) for m in mappings] or [str(ROOT / "mappings" / "ratequote.yaml")],
        "log": {"level": "info", "fields": {"service": "test"}},
        "backends": backends,
        "shutdown": {"drain_timeout": "2s"},
    }


def rq_config(*args: str, **over: Any) -> dict[str, Any]:
    return config({"ratequote": ratequote(*args, **over)})


# --- clients and observations ----------------------------------------------------------------------

@cache
def protoset() -> ProtoSet:
    return compile_protos([ROOT / "protos", CASES / "protos"])


class Rpc:
    """gRPC calls as (code, reply, details): failures are results to assert on, not exceptions."""

    def __init__(self, sc: Sidecar) -> None:
        self.ps = protoset()
        self.channel = grpc.insecure_channel(f"127.0.0.1:{sc.ports['grpc']}")
        self._stubs: dict[str, tuple[Any, Any]] = {}

    def call(self, full_method: str, timeout: float = 10.0, **fields: Any) -> tuple[grpc.StatusCode, Any, str]:
        if full_method not in self._stubs:
            service, method = full_method.rsplit(".", 1)
            md = self.ps.services()[service].methods_by_name[method]
            req_cls, resp_cls = self.ps.message_class(md.input_type), self.ps.message_class(md.output_type)
            stub = self.channel.unary_unary(f"/{service}/{method}", request_serializer=req_cls.SerializeToString,
                                            response_deserializer=resp_cls.FromString)
            self._stubs[full_method] = (stub, req_cls)
        stub, req_cls = self._stubs[full_method]
        try:
            return OK, stub(req_cls(**fields), timeout=timeout), ""
        except grpc.RpcError as e:
            return e.code(), None, e.details() or ""  # type: ignore[attr-defined]

    def close(self) -> None:
        self.channel.close()


@pytest.fixture
def rpcs() -> Iterator[Callable[[Sidecar], Rpc]]:
    made: list[Rpc] = []

    def make(sc: Sidecar) -> Rpc:
        made.append(Rpc(sc))
        return made[-1]

    yield make
    for r in made:
        r.close()


def expected_quote(product: str, quantity: int, region: str) -> tuple[int, int, str]:
    currency, pct = REGIONS[region]
    unit = PRICES[product] * pct // 100
    return unit, unit * quantity, currency


def backend_state(sc: Sidecar, backend: str = "ratequote", worker: str = "single") -> dict[str, Any]:
    _, body = sc.admin("/readyz")
    return dict(body["workers"][worker]["backends"][backend])


SEEN: set[int] = set()  # every child pid a test saw, for the safety net below


def children(sc: Sidecar, backend: str = "ratequote") -> list[int]:
    """Every live child pid of `backend`, over all workers."""
    _, body = sc.admin("/readyz")
    pids = [pid for w in body["workers"].values() for pid in w.get("backends", {}).get(backend, {}).get("children", [])]
    SEEN.update(pids)
    return pids


@pytest.fixture(autouse=True)
def no_orphans() -> Iterator[None]:
    """After each test (and its sidecars' teardown): a child that outlived its sidecar — a test
    that failed half-way, or the known shutdown gap — is killed, so it cannot pile up."""
    yield
    for pid in list(SEEN):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
            parent = Path(f"/proc/{ppid}/cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            SEEN.discard(pid)
            continue
        if b"adaptercar" in parent:
            continue  # still a sidecar's child (a module-scoped sidecar lives on)
        SEEN.discard(pid)
        if alive(pid) and (b"legacy_fixtures.ratequote" in cmdline or cmdline.startswith(b"bc\0")):
            os.kill(pid, signal.SIGKILL)


def alive(pid: int) -> bool:
    """A zombie is gone for our purpose: it runs nothing and holds nothing but its pid."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"




def events(sc: Sidecar, name: str) -> list[dict[str, Any]]:
    return [r for r in sc.log_records() if r.get("event") == name]


def stderr_lines(sc: Sidecar, backend: str = "ratequote") -> list[dict[str, Any]]:
    """Children's stderr lines: logged as the companion logs legacy log files."""
    return [r for r in events(sc, "legacy_log") if r.get("source") == backend]


def at_least(sc: Sidecar, name: str, n: int) -> list[dict[str, Any]] | None:
    found = events(sc, name)
    return found if len(found) >= n else None


def gone(pid: int) -> bool:
    return not alive(pid)


def metric_settles(sc: Sidecar, name: str, check: Callable[[float], bool], **labels: str) -> float:
    """Metrics are flushed on a timer (metrics.Recorder): wait for the value to get there."""
    end = time.monotonic() + 5.0
    while True:
        value = sc.metric_value(name, **labels)
        if check(value) or time.monotonic() > end:
            assert check(value), f"{name}{labels} = {value}"
            return value
        time.sleep(0.1)


def assert_deadline(sc: Sidecar, took: float, timeout: float = 1.0) -> None:
    """DEADLINE_EXCEEDED at the deadline: never before it, and at most 1.5 s after it as the
    sidecar measured the call (its access log), which the load on the machine running the
    client skews least; the client's own clock only has to show the call never hung."""
    assert took >= timeout, took
    last = [r for r in events(sc, "access") if r["code"] == "DEADLINE_EXCEEDED"][-1]
    assert timeout * 1000 <= last["duration_ms"] < (timeout + 1.5) * 1000, last
    assert took < timeout + 5, took


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.monotonic()
    out = fn()
    return out, time.monotonic() - t0


def quote_http(sc: Sidecar, product: str, quantity: int, region: str = "EU") -> tuple[int, Any]:
    status, body, _ = sc.http("POST", "/v1/quotes", {"product": product, "quantity": quantity, "region": region})
    return status, body


def assert_quotes_work(sc: Sidecar, rpc: Rpc, n: int = 4) -> None:
    for i in range(n):
        product, region = ("WIDGET", "GADGET", "SPROCKET", "GIZMO")[i % 4], ("EU", "US", "APAC")[i % 3]
        code, reply, msg = rpc.call(QUOTE, product=product, quantity=i + 1, region=region)
        assert code == OK, msg
        assert (reply.unit_price_cents, reply.total_cents, reply.currency) == \
            expected_quote(product, i + 1, region)


# --- 1. a pool of two: every caller gets its own answer --------------------------------------------

def test_concurrent_calls_over_a_pool_of_two_reach_their_own_callers(sidecars: Any, rpcs: Any) -> None:
    sc = sidecars(rq_config("--stderr-noise"), single_process=True)
    rpc = rpcs(sc)
    pids = children(sc)
    assert len(pids) == 2 and all(alive(p) for p in pids)
    products, regions = list(PRICES), list(REGIONS)

    def one(i: int) -> None:
        product, region, quantity = products[i % 4], regions[i % 3], 1 + i * 7
        unit, total, currency = expected_quote(product, quantity, region)
        if i % 2:
            code, reply, msg = rpc.call(QUOTE, product=product, quantity=quantity, region=region)
            assert code == OK, msg
            assert (reply.unit_price_cents, reply.total_cents, reply.currency, reply.region) == \
                (unit, total, currency, region)
        else:
            status, body = quote_http(sc, product, quantity, region)
            assert status == 200, body
            assert body == {"unitPriceCents": str(unit), "totalCents": str(total), "currency": currency,
                            "region": region}

    with ThreadPoolExecutor(max_workers=40) as pool:
        for f in [pool.submit(one, i) for i in range(40)]:
            f.result()
    assert children(sc) == pids  # nobody was restarted
    # both children served: each logs a stderr line per request it rated (as a child_pid)
    served = {r["child_pid"] for r in stderr_lines(sc)}
    assert served == set(pids)
    assert {r["pid"] for r in stderr_lines(sc)} == {sc.proc.pid}  # the sidecar's own field
    metric_settles(sc, "adaptercar_backend_requests_total", lambda v: v == 40, backend="ratequote", outcome="ok")
    assert backend_state(sc)["busy"] == 0


def test_legacy_errors_keep_the_child(sidecars: Any, rpcs: Any) -> None:
    sc = sidecars(rq_config(), single_process=True)
    rpc = rpcs(sc)
    pids = children(sc)
    code, _, msg = rpc.call(QUOTE, product="NOPE", quantity=1, region="EU")
    assert (code, msg) == (grpc.StatusCode.NOT_FOUND, "unknown product NOPE")
    status, body = quote_http(sc, "WIDGET", 1, "MARS")
    assert status == 400 and body["message"] == "unknown region MARS", body
    assert_quotes_work(sc, rpc)
    assert children(sc) == pids


# --- 2. per-call mode: exit status and stderr in rules -------------------------------------------

def once_config(**over: Any) -> dict[str, Any]:
    """Per-call backends: `rq_once` answers (or crashes on BOOM, hangs on SLOWPOKE, with a
    stderr line per request); `rq_broken` exits 2 at once, for want of its rate table."""
    return config({
        "rq_once": ratequote("--stderr-noise", "--crash-on", "BOOM", "--hang-on", "SLOWPOKE",
                             mode="per-call", **over),
        "rq_broken": ratequote("--rates", NO_TABLE, mode="per-call"),
    }, CASES / "mappings" / "rqdiag.yaml")


def test_per_call_mode_maps_exit_status_and_stderr(sidecars: Any, rpcs: Any) -> None:
    sc = sidecars(once_config(), single_process=True)
    rpc = rpcs(sc)
    assert backend_state(sc, "rq_once")["children"] == []  # nothing runs between calls
    code, reply, msg = rpc.call(f"{ONCE}.Quote", product="WIDGET", quantity=2, region="EU")
    assert code == OK, msg
    # stdout rules see {exit_status} and {stderr} (the whole of it) too
    assert (reply.unit_price_cents, reply.total_cents, reply.exit_status, reply.stderr) == \
        (1250, 2500, 0, "ratequote: rating WIDGET")
    code, _, msg = rpc.call(f"{ONCE}.Quote", product="NOPE", quantity=1, region="EU")
    assert (code, msg) == (grpc.StatusCode.NOT_FOUND, "unknown product NOPE (exit status 0)")
    # exit status 3 and a stderr line fit one rule; its groups and {exit_status} fill the message
    code, _, msg = rpc.call(f"{ONCE}.Quote", product="BOOM", quantity=1, region="EU")
    assert (code, msg) == (grpc.StatusCode.FAILED_PRECONDITION, "ratequote exited 3: rate table corrupt at BOOM")
    status, body, _ = sc.http("POST", "/v1/once/quote", {"product": "BOOM", "quantity": 1, "region": "EU"})
    assert status == 400 and body["message"] == "ratequote exited 3: rate table corrupt at BOOM", body
    # a stderr rule alone (the program exits 2 before reading anything)
    code, _, msg = rpc.call(f"{ONCE}.QuoteBroken", product="WIDGET", quantity=1, region="EU")
    assert (code, msg) == (grpc.StatusCode.UNAVAILABLE, f"no rate table {NO_TABLE} (exit status 2)")
    # no rule for it: empty stdout is UNKNOWN, with the exit status and the stderr tail
    code, _, msg = rpc.call(f"{ONCE}.QuoteBare", product="WIDGET", quantity=1, region="EU")
    assert code == grpc.StatusCode.UNKNOWN, msg
    assert "exit status 2" in msg and "cannot read rate table" in msg, msg
    # per-call exits are answers, not crashes: nothing is restarted, nothing is unready
    assert sc.admin("/readyz")[0] == 200
    assert sc.metric_value("adaptercar_backend_restarts_total") == 0
    until(lambda: backend_state(sc, "rq_once")["children"] == [], 10, "every per-call child reaped")


def test_per_call_hung_program_is_killed_at_the_deadline(sidecars: Any, rpcs: Any) -> None:
    sc = sidecars(once_config(timeout="1s"), single_process=True)
    rpc = rpcs(sc)
    (code, _, msg), took = timed(lambda: rpc.call(f"{ONCE}.Quote", product="SLOWPOKE", quantity=1, region="EU"))
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED, msg
    assert_deadline(sc, took)
    killed = until(lambda: events(sc, "backend_child_killed"), 10, "the kill logged")
    pid = killed[0]["child_pid"]
    SEEN.add(pid)
    until(lambda: not alive(pid), 10, f"child {pid} gone")
    code, reply, msg = rpc.call(f"{ONCE}.Quote", product="GADGET", quantity=1, region="US")
    assert code == OK and reply.total_cents == expected_quote("GADGET", 1, "US")[1], msg


def test_per_call_mode_runs_at_most_pool_size_children(sidecars: Any) -> None:
    """Per-call children are bounded like pooled ones: pool.size at once, max_waiting queued,
    the rest RESOURCE_EXHAUSTED at once — a burst must not fork without limit."""
    sc = sidecars(once_config(pool={"size": 2, "max_waiting": 1}, timeout="3s"), single_process=True)
    most = 0
    stop = threading.Event()

    def watch() -> None:
        nonlocal most
        while not stop.is_set():
            most = max(most, len(backend_state(sc, "rq_once")["children"]))
            time.sleep(0.02)

    def slow(_: int) -> tuple[tuple[int, Any], float]:
        return timed(lambda: sc.http("POST", "/v1/once/quote", {"product": "SLOWPOKE", "quantity": 1,
                                                                 "region": "EU"})[:2])

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        with ThreadPoolExecutor(max_workers=6) as pool:
            results = list(pool.map(slow, range(6)))
    finally:
        stop.set()
        watcher.join()
    codes = sorted(status for (status, _), _ in results)
    assert codes == [429, 429, 429, 504, 504, 504], results
    assert all(took < 2.0 for (status, _), took in results if status == 429), results
    assert all(took >= 3.0 for (status, _), took in results if status == 504), results
    assert most <= 2, most


# --- 3. a crashing child -------------------------------------------------------------------------

def ratequote_mapping(tmp: Path, idempotent: bool) -> Path:
    """The repository's ratequote mapping, with `idempotent` as the test needs it."""
    mapping = yaml.safe_load((ROOT / "mappings" / "ratequote.yaml").read_text())
    mapping["methods"]["Quote"]["idempotent"] = idempotent
    path = tmp / f"ratequote-{idempotent}.yaml"
    path.write_text(yaml.safe_dump(mapping, sort_keys=False))
    return path


@pytest.mark.parametrize("idempotent", [False, True], ids=["once", "idempotent-retried-once"])
def test_child_crash_mid_call_is_unavailable_then_the_restarted_child_answers(
        idempotent: bool, tmp_path: Path, sidecars: Any, rpcs: Any) -> None:
    """A request that makes the program exit without answering: UNAVAILABLE. An idempotent
    call is first tried once more on a fresh child (as after EOF on a TCP backend), so this
    poison request costs two children then; any other call, one."""
    cfg = config({"ratequote": ratequote("--crash-on", "BOOM", pool={"size": 1})},
                 ratequote_mapping(tmp_path, idempotent))
    sc = sidecars(cfg, single_process=True)
    rpc = rpcs(sc)
    assert_quotes_work(sc, rpc, 2)
    [old] = children(sc)
    code, _, msg = rpc.call(QUOTE, product="BOOM", quantity=1, region="EU")
    assert code == grpc.StatusCode.UNAVAILABLE, msg
    assert "exit status 3" in msg and "rate table corrupt at BOOM" in msg, msg
    (code, reply, msg), took = timed(lambda: rpc.call(QUOTE, product="GIZMO", quantity=3, region="APAC"))
    assert code == OK, msg
    assert (reply.unit_price_cents, reply.total_cents) == expected_quote("GIZMO", 3, "APAC")[:2]
    assert took < 4.0, took
    [new] = children(sc)
    assert new != old and not alive(old)
    crashes = 2 if idempotent else 1
    exited = events(sc, "backend_child_exited")
    assert len(exited) == crashes and exited[0]["child_pid"] == old, exited
    for e in exited:
        assert e["level"] == "error" and e["status"] == "exit status 3"
        assert e["stderr_tail"] == ["ratequote: fatal: rate table corrupt at BOOM"]
    metric_settles(sc, "adaptercar_backend_restarts_total", lambda v: v == crashes, backend="ratequote",
                   reason="exit")
    assert backend_state(sc)["consecutive_failures"] == 0  # it answered since
    assert sc.admin("/readyz")[0] == 200


def test_calls_handed_to_a_child_as_it_exits_are_retried_if_idempotent(sidecars: Any, rpcs: Any) -> None:
    """A program that exits after every third request (as batch programs recycle themselves):
    a queued call is sent the instant a reply arrives, to a child about to exit. An idempotent
    call is tried again on the next child instead of failing for nothing it did."""
    sc = sidecars(rq_config("--crash-after", "3", pool={"size": 1}, timeout="5s"), single_process=True)
    rpc = rpcs(sc)

    def one(i: int) -> None:
        code, reply, msg = rpc.call(QUOTE, product="SPROCKET", quantity=i + 1, region="US")
        assert code == OK, msg
        assert reply.total_cents == expected_quote("SPROCKET", i + 1, "US")[1]

    with ThreadPoolExecutor(max_workers=9) as pool:
        for f in [pool.submit(one, i) for i in range(9)]:
            f.result()
    exited = until(lambda: (e := events(sc, "backend_child_exited")) and len(e) >= 3 and e, 10,
                        "three children recycled")
    assert all(e["status"] == "exit status 3" for e in exited)


def test_crash_loop_shows_in_readyz_metrics_and_logs_and_fails_fast(sidecars: Any, rpcs: Any) -> None:
    sc = sidecars(rq_config("--rates", NO_TABLE, restart={"base": "50ms", "max": "400ms"}, timeout="10s"),
                  single_process=True, wait_ready=False)
    rpc = rpcs(sc)
    state = until(lambda: (s := backend_state(sc))["consecutive_failures"] >= 4 and s, 10,
                       "a crash loop counted")
    assert state["ready"] is False and state["last_exit"] == "exit status 2", state
    status, body = sc.admin("/readyz")
    assert status == 503 and body["ready"] is False
    for _ in range(3):
        (code, _, msg), took = timed(lambda: rpc.call(QUOTE, product="WIDGET", quantity=1, region="EU"))
        assert code == grpc.StatusCode.UNAVAILABLE, msg
        assert took < 3.0, (took, msg)  # the 10 s timeout is never waited for
    status, body = quote_http(sc, "WIDGET", 1)
    assert status == 503, body
    metric_settles(sc, "adaptercar_backend_restarts_total", lambda v: v >= 4, backend="ratequote", reason="exit")
    exited = events(sc, "backend_child_exited")
    assert exited and all(e["status"] == "exit status 2" for e in exited)
    assert any("cannot read rate table" in line for line in exited[0]["stderr_tail"]), exited[0]
    until(lambda: any(e["in_s"] == 0.4 for e in events(sc, "backend_restart_scheduled")), 10,
               "the backoff at its cap")
    delays = [e["in_s"] for e in events(sc, "backend_restart_scheduled")]
    assert delays[0] == 0.05 and max(delays) == 0.4 and delays == sorted(delays), delays


# --- 4. a hung child -----------------------------------------------------------------------------

@pytest.mark.parametrize("extra", [[], ["--ignore-sigterm"]], ids=["sigterm", "needs-sigkill"])
def test_hung_child_is_killed_at_the_deadline_and_the_pool_recovers(extra: list[str], sidecars: Any,
                                                                    rpcs: Any) -> None:
    sc = sidecars(rq_config("--hang-on", "SLOWPOKE", *extra, timeout="1s"), single_process=True)
    rpc = rpcs(sc)
    before = children(sc)
    (code, _, msg), took = timed(lambda: rpc.call(QUOTE, product="SLOWPOKE", quantity=1, region="EU"))
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED, msg
    assert_deadline(sc, took)
    [killed] = until(lambda: events(sc, "backend_child_killed"), 10, "the kill logged")
    hung = killed["child_pid"]
    SEEN.add(hung)
    assert hung in before and "timed out" in killed["reason"]
    until(lambda: not alive(hung), 10, f"hung child {hung} gone")
    until(lambda: len(children(sc)) == 2, 10, "the pool refilled")
    assert hung not in children(sc)
    assert_quotes_work(sc, rpc, 6)
    (status, body), took = timed(lambda: quote_http(sc, "SLOWPOKE", 1))
    assert status == 504, (status, body)
    assert_deadline(sc, took)
    assert_quotes_work(sc, rpc, 2)
    metric_settles(sc, "adaptercar_backend_restarts_total", lambda v: v == 2, backend="ratequote", reason="killed")
    assert sc.metric_value("adaptercar_backend_restarts_total", reason="exit") == 0


# --- 5. unsolicited stdout -----------------------------------------------------------------------

@pytest.mark.parametrize(("product", "extra"), [
    ("GADGET", []),
    ("GADGET", ["--unsolicited-with-reply"]),
    ("NOPE", ["--unsolicited-with-reply"]),  # an error reply, then the stray line in the same read
], ids=["after-the-reply", "with-the-reply", "with-an-error-reply"])
def test_unsolicited_stdout_restarts_the_child_and_reaches_nobody(product: str, extra: list[str], sidecars: Any,
                                                                  rpcs: Any) -> None:
    """Every child prints an unrequested NOTICE line after its first reply: each is replaced,
    and no caller ever gets the NOTICE (it would be UNKNOWN) or a reply meant for another."""
    sc = sidecars(rq_config("--unsolicited-after", "1", *extra, pool={"size": 1}), single_process=True)
    rpc = rpcs(sc)
    seen: list[int] = []
    for i in range(3):
        [pid] = until(lambda: (p := children(sc)) and len(p) == 1 and p[0] not in seen and p, 10,
                           "a fresh child")
        seen.append(pid)
        code, reply, msg = rpc.call(QUOTE, product=product, quantity=2 + i, region="US")
        if product == "NOPE":
            assert (code, msg) == (grpc.StatusCode.NOT_FOUND, "unknown product NOPE")
        else:
            assert code == OK, msg
            assert reply.total_cents == expected_quote(product, 2 + i, "US")[1]
        killed = until(partial(at_least, sc, "backend_child_killed", i + 1), 10, "the babbling child killed")
        assert killed[-1]["child_pid"] == pid and "unsolicited" in killed[-1]["reason"], killed[-1]
        until(partial(gone, pid), 10, f"child {pid} gone")
    assert len(set(seen)) == 3
    code, reply, msg = rpc.call(QUOTE, product="GIZMO", quantity=1, region="EU")
    assert code == OK and reply.total_cents == 123456, msg
    assert "UNKNOWN" not in [r["code"] for r in events(sc, "access")]
    metric_settles(sc, "adaptercar_backend_restarts_total", lambda v: v >= 3, backend="ratequote", reason="killed")


# --- 5b. banner: a start-up handshake per child ----------------------------------------------------

def test_banner_is_read_before_the_first_call(sidecars: Any, rpcs: Any) -> None:
    sc = sidecars(rq_config("--banner", banner="^RATEQUOTE 2\\.1 READY$"), single_process=True)
    assert_quotes_work(sc, rpcs(sc), 6)
    assert sc.metric_value("adaptercar_backend_restarts_total") == 0


@pytest.mark.parametrize(("args", "banner", "why"), [
    (["--banner"], "^RATEQUOTE 3", "start-up handshake failed: banner: unexpected reply"),
    ([], "^RATEQUOTE", "start-up handshake (banner/on_connect) not done in 1.0s"),
], ids=["wrong-banner", "no-banner"])
def test_failed_start_up_handshake_is_retried_with_backoff(args: list[str], banner: str, why: str,
                                                           sidecars: Any, rpcs: Any) -> None:
    sc = sidecars(rq_config(*args, banner=banner, timeout="1s", restart={"base": "200ms", "max": "1s"}),
                  single_process=True, wait_ready=False)
    failed = until(lambda: events(sc, "backend_child_start_failed"), 10, "a failed start logged")
    assert failed[0]["level"] == "error" and failed[0]["reason"].startswith(why), failed[0]
    assert sc.admin("/readyz")[0] == 503
    time.sleep(1.0)
    # respawned with backoff, not in a hot loop: a handful of children a second at most
    assert len(events(sc, "backend_child_start_failed")) <= 8, len(events(sc, "backend_child_start_failed"))
    assert backend_state(sc)["consecutive_failures"] >= 2
    code, _, msg = rpcs(sc).call(QUOTE, product="WIDGET", quantity=1, region="EU")
    assert code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED), msg


# --- 6. queue overflow ---------------------------------------------------------------------------

def test_full_queue_fails_fast_with_resource_exhausted(sidecars: Any, rpcs: Any) -> None:
    sc = sidecars(rq_config("--hang-on", "SLOWPOKE", pool={"size": 1, "max_waiting": 2}, timeout="3s"),
                  single_process=True)
    rpc = rpcs(sc)
    with ThreadPoolExecutor(max_workers=3) as pool:
        hung = pool.submit(quote_http, sc, "SLOWPOKE", 1)
        until(lambda: backend_state(sc)["busy"] == 1, 10, "the child busy")
        queued = [pool.submit(quote_http, sc, "WIDGET", 2), pool.submit(quote_http, sc, "GADGET", 3)]
        until(lambda: backend_state(sc)["waiting"] == 2, 10, "two calls waiting")
        for product in ("WIDGET", "GIZMO", "SPROCKET"):
            (status, body), took = timed(partial(quote_http, sc, product, 1))
            assert status == 429 and took < 2.0, (status, body, took)  # not after the 3 s timeout
            assert "waiting" in body["message"], body
        (code, _, msg), took = timed(lambda: rpc.call(QUOTE, product="WIDGET", quantity=1, region="EU"))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and took < 2.0, (code, msg, took)
        assert hung.result()[0] == 504
        # the two that waited either made it onto the restarted child or timed out: never mixed up
        for f, (product, quantity) in zip(queued, [("WIDGET", 2), ("GADGET", 3)], strict=True):
            status, body = f.result()
            assert status in (200, 504), body
            if status == 200:
                assert body["totalCents"] == str(expected_quote(product, quantity, "EU")[1]), body
    assert_quotes_work(sc, rpc)
    metric_settles(sc, "adaptercar_backend_requests_total", lambda v: v == 4, backend="ratequote",
                   outcome="resource_exhausted")


# --- 7. stderr noise -----------------------------------------------------------------------------

NOISY_MAPPING = """\
service: ratequote.v1.RateQuote
backend: ratequote
methods:
  Quote:
    idempotent: true  # the call after BOOM may be handed to the child as it exits: retried
    request: "{product:<10}{quantity:08d}{region:<4}"
    response:
      - stderr: 'fatal: (?P<why>.*)'
        error: {code: FAILED_PRECONDITION, message: "{why}"}
      - match: '^OK (?P<unit>\\d{12})(?P<total>\\d{14})(?P<currency>[A-Z]{3})(?P<region>\\S+)\\s*$'
        fields: {unit_price_cents: "{unit}", total_cents: "{total}", currency: "{currency}", region: "{region}"}
"""


def test_stderr_noise_is_logged_and_never_a_reply(tmp_path: Path, sidecars: Any, rpcs: Any) -> None:
    mapping = tmp_path / "noisy.yaml"
    mapping.write_text(NOISY_MAPPING)
    sc = sidecars(config({"ratequote": ratequote("--stderr-noise", "--crash-on", "BOOM")}, mapping),
                  single_process=True)
    rpc = rpcs(sc)
    pids = children(sc)
    assert_quotes_work(sc, rpc, 8)
    noise = until(lambda: [r for r in stderr_lines(sc) if r["msg"].startswith("ratequote: rating")]
                       if len(stderr_lines(sc)) >= 8 else None, 10, "the noise logged")
    assert [r["msg"] for r in noise] == [f"ratequote: rating {p}" for p in
                                          ("WIDGET", "GADGET", "SPROCKET", "GIZMO") * 2]
    assert all(r["backend"] == "ratequote" and r["child_pid"] in pids for r in noise)
    assert children(sc) == pids
    assert sc.metric_value("adaptercar_backend_restarts_total") == 0
    # a stderr line that fits a rule does end the call (then the child exits: a crash, restarted)
    code, _, msg = rpc.call(QUOTE, product="BOOM", quantity=1, region="EU")
    assert (code, msg) == (grpc.StatusCode.FAILED_PRECONDITION, "rate table corrupt at BOOM")
    assert_quotes_work(sc, rpc, 4)


# --- 8. shutdown ---------------------------------------------------------------------------------

@pytest.mark.parametrize("single", [True, False], ids=["single-process", "supervisor"])
def test_shutdown_leaves_no_child_alive(single: bool, sidecars: Any) -> None:
    sc = sidecars(rq_config("--stderr-noise"), single_process=single)
    pids = until(lambda: (p := children(sc)) and len(p) == (2 if single else 4) and p, 10,
                      "every worker's children reported")
    assert all(alive(p) for p in pids)
    for i in range(4):
        assert quote_http(sc, "WIDGET", i + 1)[0] == 200
    # counted through the batched recorder, whichever process served the calls
    metric_settles(sc, "adaptercar_backend_requests_total", lambda v: v == 4, backend="ratequote", outcome="ok")
    assert sc.stop() == 0
    until(lambda: not any(alive(p) for p in pids), 10, f"children {pids} gone")


def test_shutdown_kills_a_hung_child_that_ignores_sigterm(sidecars: Any) -> None:
    sc = sidecars(rq_config("--hang-on", "SLOWPOKE", "--ignore-sigterm", pool={"size": 1}, timeout="30s"),
                  single_process=True)
    [pid] = children(sc)
    def hang() -> None:
        try:
            quote_http(sc, "SLOWPOKE", 1)
        except OSError:
            pass  # the sidecar went away under it

    call = threading.Thread(target=hang)
    call.start()
    try:
        until(lambda: backend_state(sc)["busy"] == 1, 10, "the child hung")
        assert sc.stop() == 0
        call.join(5)
        try:
            until(lambda: not alive(pid), 3, f"child {pid} gone")
        finally:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)  # the orphan this test exposes
    finally:
        call.join(5)


# --- 9. bc behind calc.proto ---------------------------------------------------------------------

def bc_config(env: dict[str, str] | None = None, size: int = 2) -> dict[str, Any]:
    backend = process_backend(["bc", "-q"], env=env or {}, pool={"size": size})
    return config({"bc": backend}, CASES / "mappings" / "calc.yaml")


@pytest.fixture(scope="module")
def bc_sidecar(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sidecar]:
    sc = Sidecar(tmp_path_factory.mktemp("bc"), bc_config({"BC_LINE_LENGTH": "0"}), single_process=True)
    try:
        yield sc.start()
    finally:
        sc.stop()


@pytest.fixture
def bc(bc_sidecar: Sidecar) -> Iterator[Rpc]:
    rpc = Rpc(bc_sidecar)
    yield rpc
    rpc.close()


def test_bc_evaluates_expressions(bc_sidecar: Sidecar, bc: Rpc) -> None:
    code, reply, msg = bc.call(EVAL, expression="2+3")
    assert (code, reply.value if reply else msg) == (OK, "5")
    status, body, _ = bc_sidecar.http("POST", "/v1/eval", {"expression": "scale=0; 7*6"}, headers=JSON)
    assert (status, body) == (200, {"value": "42"})
    code, reply, msg = bc.call(EVAL, expression="2^300")
    assert (code, reply.value if reply else msg) == (OK, str(2**300))  # one line: BC_LINE_LENGTH=0

    def one(i: int) -> None:
        code, reply, msg = bc.call(EVAL, expression=f"{i}*1000+{i}")
        assert (code, reply.value if reply else msg) == (OK, str(i * 1001))

    with ThreadPoolExecutor(max_workers=16) as pool:
        for f in [pool.submit(one, i) for i in range(1, 33)]:
            f.result()


def test_bc_errors_on_stderr_map_to_invalid_argument(bc_sidecar: Sidecar, bc: Rpc) -> None:
    pids = children(bc_sidecar, "bc")
    code, _, msg = bc.call(EVAL, expression="2+")
    assert code == grpc.StatusCode.INVALID_ARGUMENT and msg.startswith("bc cannot read the expression: "), msg
    assert msg.endswith("syntax error"), msg
    status, body, _ = bc_sidecar.http("POST", "/v1/eval", {"expression": "1/0"}, headers=JSON)
    assert (status, body["message"]) == (400, "division by zero"), body
    code, reply, msg = bc.call(EVAL, expression="10/4")
    assert (code, reply.value if reply else msg) == (OK, "2")  # bc's scale 0: still in step
    assert children(bc_sidecar, "bc") == pids  # an error on stderr is an answer, not a crash


def test_bc_injection_is_refused_and_the_child_survives(bc_sidecar: Sidecar, bc: Rpc) -> None:
    pids = children(bc_sidecar, "bc")
    for attempt in ("2+3\nquit", "2+3\rquit", "quit\n"):
        code, _, msg = bc.call(EVAL, expression=attempt)
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "line break" in msg, msg
    status, body, _ = bc_sidecar.http("POST", "/v1/eval", {"expression": "2+3\nquit"}, headers=JSON)
    assert status == 400, body
    code, reply, msg = bc.call(EVAL, expression="6*7")
    assert (code, reply.value if reply else msg) == (OK, "42")
    assert children(bc_sidecar, "bc") == pids and all(alive(p) for p in pids)
    assert bc_sidecar.metric_value("adaptercar_backend_restarts_total", backend="bc") == 0


def test_bc_wrapped_output_is_never_taken_for_a_value(sidecars: Any, rpcs: Any) -> None:
    """Without BC_LINE_LENGTH=0, bc wraps long numbers at 70 columns with a backslash: the first
    line is not the value, the mapping says so (UNKNOWN), and the rest never reaches a caller."""
    sc = sidecars(bc_config(size=1), single_process=True)
    rpc = rpcs(sc)
    [first] = children(sc, "bc")
    code, reply, msg = rpc.call(EVAL, expression="2^300")
    assert code == grpc.StatusCode.UNKNOWN, (reply, msg)
    assert str(2**300)[:60] in msg and "\\" in msg, msg
    for i in range(3):
        code, reply, msg = rpc.call(EVAL, expression=f"2+{i}")
        assert (code, reply.value if reply else msg) == (OK, str(2 + i))
    [second] = children(sc, "bc")
    assert second != first and not alive(first)


# --- 10. `adaptercar check` runs process examples --------------------------------------------------

def write_project(tmp: Path, mutate: Callable[[dict[str, Any], dict[str, Any]], None] | None = None) -> Path:
    calc = yaml.safe_load((CASES / "mappings" / "calc.yaml").read_text())
    diag = yaml.safe_load((CASES / "mappings" / "rqdiag.yaml").read_text())
    if mutate is not None:
        mutate(calc, diag)
    (tmp / "mappings").mkdir()
    (tmp / "mappings" / "calc.yaml").write_text(yaml.safe_dump(calc, sort_keys=False))
    (tmp / "mappings" / "rqdiag.yaml").write_text(yaml.safe_dump(diag, sort_keys=False))
    cfg = config({
        "bc": process_backend(["bc", "-q"], env={"BC_LINE_LENGTH": "0"}),
        "rq_once": ratequote("--stderr-noise", mode="per-call"),
        "rq_broken": ratequote("--rates", NO_TABLE, mode="per-call"),
    }, tmp / "mappings")
    cfg["protos"] = [str(CASES / "protos")]
    for role in ("grpc", "http", "admin"):
        del cfg[role]
    (tmp / "adaptercar.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return tmp / "adaptercar.yaml"


def check(path: Path) -> tuple[int, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "adaptercar.cli", "check", "-c", path.name], cwd=path.parent,
                          env=env, capture_output=True, text=True, timeout=60, check=False)
    text = done.stdout + done.stderr
    assert "Traceback" not in text, text
    return done.returncode, text


def test_check_runs_stderr_and_exit_status_examples(tmp_path: Path) -> None:
    code, text = check(write_project(tmp_path))
    assert code == 0, text
    assert "adaptercar.yaml: OK (4 methods mapped, 3 backends)" in text


def _break_examples(calc: dict[str, Any], diag: dict[str, Any]) -> None:
    calc["methods"]["Eval"]["examples"][1]["expect"] = {"error": "NOT_FOUND"}  # a stderr example, pooled
    diag["methods"]["Quote"]["examples"][1]["exit_status"] = 4  # no rule for 4: stdout is empty
    diag["methods"]["Quote"]["examples"][0]["expect"]["stderr"] = "something else"
    calc["methods"]["Eval"]["examples"].append(  # exit statuses are not seen in pool mode
        {"request": {"expression": "1"}, "reply": "1", "exit_status": 0, "expect": {"value": "1"}})
    calc["methods"]["Eval"]["examples"].append(  # the call ends at stderr: stdout would be left over
        {"request": {"expression": "1"}, "reply": "1", "stderr": "Divide by zero",
         "expect": {"error": "INVALID_ARGUMENT"}})


def test_check_fails_wrong_process_examples(tmp_path: Path) -> None:
    code, text = check(write_project(tmp_path, _break_examples))
    assert code == 1, text
    lines = [line for line in text.splitlines() if ": note: " not in line]
    assert any("methods.Eval.examples[1]: example failed: expected error NOT_FOUND, got INVALID_ARGUMENT: "
               "bc cannot read the expression: (standard_in) 1: syntax error" in line for line in lines), text
    assert any("methods.Quote.examples[1]: example failed: expected error FAILED_PRECONDITION, got UNKNOWN: "
               "the program printed nothing (exit status 4)" in line for line in lines), text
    assert any("methods.Quote.examples[0]: example failed: stderr: expected 'something else', "
               "got 'ratequote: rating WIDGET'" in line for line in lines), text
    assert any("methods.Eval.examples[3].exit_status: an exit status is only seen in `mode: per-call`"
               in line for line in lines), text
    assert any("methods.Eval.examples[4]: example failed: expected error INVALID_ARGUMENT, got INTERNAL: "
               "the mapping left 2 byte(s) of the example reply unread" in line for line in lines), text
    assert "5 problem(s) found" in text, text


def test_per_call_children_spawned_from_the_grpc_front_do_not_abort(sidecars: Any) -> None:
    """Forking after `import grpc` ran grpc's fork handlers in the child, which then died
    (SIGABRT/SIGSEGV) before exec in about one call in six under concurrent gRPC load;
    adaptercar turns grpc's fork support off (adaptercar/__init__.py)."""
    example = ROOT / "docs" / "examples" / "bc"
    cfg = yaml.safe_load((example / "adaptercar.yaml").read_text())
    cfg.update({"grpc": {}, "http": {}, "admin": {}, "protos": [str(example / "protos")],
                "mappings": [str(example / "mapping.yaml")]})
    sc = sidecars(cfg, single_process=True)
    ps = compile_protos([example / "protos"])
    md = ps.services()["calc.v1.Calc"].methods_by_name["Factor"]
    req_cls, resp_cls = ps.message_class(md.input_type), ps.message_class(md.output_type)
    channel = grpc.insecure_channel(f"127.0.0.1:{sc.ports['grpc']}")
    stub = channel.unary_unary("/calc.v1.Calc/Factor", request_serializer=req_cls.SerializeToString,
                               response_deserializer=resp_cls.FromString)
    field = md.input_type.fields[0].name

    def one(_: int) -> str:
        try:
            stub(req_cls(**{field: "360"}), timeout=10)
            return "OK"
        except grpc.RpcError as e:
            return f"{e.code().name}: {e.details()}"

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(150)))
    channel.close()
    assert [r for r in results if r != "OK"] == []


def test_check_refuses_a_program_that_is_not_executable(tmp_path: Path) -> None:
    script = tmp_path / "tool.sh"
    script.write_text("#!/bin/sh\necho hi\n")  # exists, but no execute bit
    cfg = {"protos": [], "mappings": [],
           "backends": {"tool": {"process": {"command": [str(script)], "framing": {"delimiter": "\n"}}}}}
    path = tmp_path / "adaptercar.yaml"
    path.write_text(yaml.safe_dump(cfg))
    r = subprocess.run([sys.executable, "-m", "adaptercar.cli", "check", "-c", str(path)],
                       capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 1
    assert f"backends.tool.process.command[0]: program '{script}' is not an executable file" in r.stderr
    assert "Traceback" not in r.stderr
