"""Fuzz: the JSON front of a real running sidecar (single process) in front of the real ledger.

Garbage, huge, deeply nested, non-UTF-8 bodies, wrong types, odd paths, query strings and
headers: every request gets an answer in time, with a JSON error body naming the problem
(`code`, `message`) when it is not a success, and never an INTERNAL error or a traceback. The
sidecar answers a plain call correctly afterwards. Bounded: a fixed number of examples, new random ones on every run (a failure prints its seed).
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.harness import Ledger, Sidecar, demo_like_config, start_ledger

MAX_BODY = 65536


@pytest.fixture(scope="module")
def sc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sidecar]:
    tmp = tmp_path_factory.mktemp("fuzzjson")
    ledger: Ledger = start_ledger(tmp)
    cfg = demo_like_config(ledger.address)
    cfg["http"] = {"max_body_bytes": MAX_BODY}
    cfg["log"] = {"level": "warning"}
    side = Sidecar(tmp / "sc", cfg, single_process=True)
    side.tmp.mkdir()
    side.start()
    yield side
    side.stop()
    ledger.stop()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["fromAccount", "to_account", "amountCents", "accountId", "text", "limit",
                         "x", ""]) | st.text(max_size=8), inner, max_size=5),
    max_leaves=20,
)
bodies = st.one_of(
    st.binary(max_size=300),  # garbage, often not UTF-8
    json_values.map(lambda v: json.dumps(v).encode()),  # valid JSON, wrong types and shapes
    st.fixed_dictionaries({}, optional={
        "fromAccount": json_values, "toAccount": json_values, "amountCents": json_values,
        "text": json_values, "accountId": json_values}).map(lambda v: json.dumps(v).encode()),
    st.integers(1, 200_000).map(lambda n: b"[" * n + b"]" * n),  # deeply nested
    st.integers(1, 100_000).map(lambda n: b'{"a":' * n + b"1" + b"}" * n),
    st.integers(MAX_BODY - 64, MAX_BODY * 3).map(lambda n: b'{"text": "' + b"x" * n + b'"}'),  # huge
    st.sampled_from([b"\xff\xfe{}", b'{"text": "\xed\xa0\x80"}', b'{"amountCents": 1e999}',
                     b'{"amountCents": "9' + b"9" * 400 + b'"}', b"\x00" * 50, b"",
                     b'{"fromAccount": "1001\\r\\nXFER 1001 1002 5", "toAccount": "1002", '
                     b'"amountCents": "1"}']),
)
segments = st.one_of(st.sampled_from(["1001", "2001", "9999"]), st.text(max_size=20)).map(
    lambda s: quote(s, safe=""))
targets = st.one_of(
    st.just("POST /v1/transfers"),
    segments.map(lambda s: f"POST /v1/accounts/{s}/notes"),
    segments.map(lambda s: f"GET /v1/accounts/{s}/balance"),
    st.tuples(segments, st.text(max_size=20)).map(
        lambda t: f"GET /v1/accounts/{t[0]}/transactions?limit={quote(t[1])}"),
    st.sampled_from(["POST /ledger.v1.Ledger/GetBalance", "POST /ledger.v1.Ledger/Transfer",
                     "PUT /v1/transfers", "GET /openapi.json", "GET /", "POST /nope"]),
    st.text(max_size=30).map(lambda s: "GET /" + quote(s, safe="/?=&")),
)
headers = st.fixed_dictionaries({}, optional={
    "Content-Type": st.sampled_from(["application/json", "text/plain", "application/x-www-form-urlencoded", ""]),
    "Grpc-Timeout": st.sampled_from(["1S", "500m", "abc", "99999999H", "0n", ""]),
    "X-Request-Id": st.text(alphabet="abcdef0123456789-", max_size=40),
})


@settings(max_examples=300, deadline=None, derandomize=False, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                 HealthCheck.data_too_large, HealthCheck.large_base_example])
@given(targets, bodies, headers)
def test_any_request_gets_a_clear_answer(sc: Sidecar, target: str, body: bytes,
                                         hdrs: dict[str, str]) -> None:
    method, path = target.split(" ", 1)
    conn = http.client.HTTPConnection("127.0.0.1", sc.ports["http"], timeout=10)
    try:
        try:
            conn.request(method, path, body=body if method != "GET" else None, headers=hdrs)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused while sending (a body over the bound): the answer is still readable
        try:
            r = conn.getresponse()
        except TimeoutError:
            pytest.fail(f"no answer within 10 s to {target} ({len(body)} bytes)")
        payload = r.read()
    finally:
        conn.close()
    event(f"status {r.status}")
    if r.status == 200:
        assert payload and json.loads(payload) is not None
        return
    doc = json.loads(payload)  # every error is JSON, never an HTML page or a traceback
    assert isinstance(doc, dict) and isinstance(doc.get("code"), int), doc
    assert isinstance(doc.get("message"), str) and doc["message"], doc
    assert doc["code"] != 13 and "Traceback" not in doc["message"], doc  # INTERNAL: a bug
    assert r.status < 500 or r.status in (502, 503, 504) or doc["code"] == 2, (r.status, doc)


def test_the_sidecar_still_answers_after_the_fuzzing(sc: Sidecar) -> None:
    status, body, _ = sc.http("GET", "/v1/accounts/2001/balance")
    assert status == 200 and body["currency"] == "USD"
    assert sc.proc is not None and sc.proc.poll() is None
    assert "Traceback" not in sc.log_text()
