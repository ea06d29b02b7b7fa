"""companion.stats against the real ledger fixture: its STATS reply becomes gauges.

The poller is driven by a `task.Clock` and sends over a plain blocking socket (a real
connection to the real fixture, with its banner and LOGIN), so no reactor has to run in the
test process; the pool path is covered end to end by the runtime tests.
"""

from __future__ import annotations

import socket
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import REGISTRY
from twisted.internet import defer, task

from adaptercar.companion.stats import (
    StatsConfigError,
    StatsPoller,
    StatsReader,
    StatsSpec,
    compile_stats,
)
from adaptercar.mapping import framing as fr
from tests.harness import Ledger, free_port

CRLF = fr.Delimited(b"\r\n")


def _entry(**over: Any) -> Any:
    response = SimpleNamespace(until=r"^\.$", each=SimpleNamespace(match=r"^(?P<name>\w+)=(?P<value>-?[0-9.]+)$"))
    base = {"backend": "ledger", "every": 5.0, "request": "STATS", "response": response,
            "metric": "legacy_{name}", "include": None}
    base.update(over)
    return SimpleNamespace(**base)


def _sender(port: int) -> Any:
    """Sends one poll over a fresh connection: banner, LOGIN, the request, the reader pumped."""

    def send(data: bytes, reader: StatsReader, timeout: float) -> defer.Deferred[Any]:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            dec = fr.Decoder(CRLF, 65536)

            def frame() -> bytes:
                while (f := dec.next_frame()) is None:
                    chunk = s.recv(4096)
                    if not chunk:
                        raise ConnectionError("closed")
                    dec.feed(chunk)
                return f

            assert frame().startswith(b"LEDGER READY")
            s.sendall(b"LOGIN demo demo\r\n")
            assert frame() == b"OK"
            s.sendall(data)
            while (result := reader.pump(dec)) is None:
                chunk = s.recv(4096)
                if not chunk:
                    raise ConnectionError("closed")
                dec.feed(chunk)
            return defer.succeed(result)

    return send


def _value(name: str, backend: str = "ledger") -> float | None:
    return REGISTRY.get_sample_value(name, {"backend": backend})


def test_reader_skips_frames_that_do_not_fit_filters_and_skips_non_numbers() -> None:
    spec = compile_stats(_entry(include=("a", "b", "c")), CRLF, "latin-1", 1.0)
    reader = StatsReader(spec)
    dec = fr.Decoder(CRLF, 1000)
    dec.feed(b"a=1\r\nnoise line\r\nb=1.2.3\r\nc=-2.5\r\nd=7\r\n")
    assert reader.pump(dec) is None  # no terminator yet
    dec.feed(b".\r\nnext reply\r\n")
    assert reader.pump(dec) == {"a": 1.0, "c": -2.5}
    assert dec.next_frame() == b"next reply"  # never reads past its own reply


@pytest.mark.parametrize("over, message", [
    ({"response": SimpleNamespace(until=r"^\.$", each=SimpleNamespace(match=r"^(?P<n>\w+)=(?P<value>.*)$"))},
     "named groups 'name' and 'value'"),
    ({"response": [SimpleNamespace(match="x")]}, "needs {until"),
    ({"response": SimpleNamespace(until="(", each=SimpleNamespace(match="(?P<name>a)(?P<value>b)"))},
     "does not compile"),
    ({"request": "STATS {nope}"}, "nope"),
])
def test_unusable_entries_are_refused_with_a_clear_message(over: dict[str, Any], message: str) -> None:
    with pytest.raises(StatsConfigError, match=message.replace("{", r"\{")):
        compile_stats(_entry(**over), CRLF, "latin-1", 1.0)


def test_stats_from_the_ledger_become_gauges_and_follow_changes(ledger: Ledger) -> None:
    clock = task.Clock()
    spec = compile_stats(_entry(backend="ledger-a", include=("accounts", "sessions", "uptime_seconds"),
                                metric="legacy_a_{name}"), CRLF, "latin-1", 2.0)
    poller = StatsPoller(spec, _sender(ledger.port), clock)
    poller.start()
    clock.advance(0)
    assert _value("legacy_a_accounts", "ledger-a") == 3
    assert _value("legacy_a_sessions", "ledger-a") == 1  # the poll's own connection
    first = _value("legacy_a_uptime_seconds", "ledger-a")
    assert first is not None and first > 0
    assert _value("legacy_a_transfers_total", "ledger-a") is None  # not in include
    assert _value("adaptercar_companion_stats_up", "ledger-a") == 1
    with socket.create_connection(("127.0.0.1", ledger.port)):  # one more session while polling
        clock.advance(5.0)
        # the sessions count follows; this check can fail if polls stopped after the first
        assert _value("legacy_a_sessions", "ledger-a") == 2
    second = _value("legacy_a_uptime_seconds", "ledger-a")
    assert second is not None and second > first
    poller.stop()
    assert not clock.getDelayedCalls()


def test_a_failed_poll_keeps_the_values_and_sets_up_to_zero_then_back(ledger: Ledger) -> None:
    clock = task.Clock()
    spec = compile_stats(_entry(backend="ledger-b", metric="legacy_b_{name}"), CRLF, "latin-1", 2.0)
    port = {"now": ledger.port}
    dead = free_port()

    def send(data: bytes, reader: StatsReader, timeout: float) -> defer.Deferred[Any]:
        return _sender(port["now"])(data, reader, timeout)

    poller = StatsPoller(spec, send, clock)
    poller.start()
    clock.advance(0)
    assert _value("adaptercar_companion_stats_up", "ledger-b") == 1
    assert _value("legacy_b_accounts", "ledger-b") == 3
    port["now"] = dead  # nothing listens there: connection refused
    clock.advance(5.0)
    assert _value("adaptercar_companion_stats_up", "ledger-b") == 0
    assert _value("legacy_b_accounts", "ledger-b") == 3  # the last value is kept
    port["now"] = ledger.port
    clock.advance(5.0)
    assert _value("adaptercar_companion_stats_up", "ledger-b") == 1
    poller.stop()


def test_an_invalid_metric_name_skips_that_name_only(ledger: Ledger) -> None:
    clock = task.Clock()
    spec = compile_stats(_entry(backend="ledger-c", metric="legacy-c-{name}"), CRLF, "latin-1", 2.0)
    poller = StatsPoller(spec, _sender(ledger.port), clock)
    poller.start()
    clock.advance(0)
    assert _value("adaptercar_companion_stats_up", "ledger-c") == 1
    poller.stop()


def test_spec_is_compiled_once_with_the_framed_request() -> None:
    spec = compile_stats(_entry(), CRLF, "latin-1", 1.0)
    assert isinstance(spec, StatsSpec) and spec.request == b"STATS\r\n"
