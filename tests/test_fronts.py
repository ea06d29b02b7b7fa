"""The gRPC and JSON fronts against a real sidecar process and the real ledger fixture.

Most tests share one single-process sidecar (module fixture) in front of one ledger, plus a
small extra service (`fx.v1.Fx`, written to a temp folder) that reaches templates the ledger
mapping does not use: `{meta.x-tenant}`, a `false` bool reply, and the fixture's `SLOW`
command for deadlines. Tests that need a backend that is down, or the supervisor's process
model, start their own sidecar.
"""

from __future__ import annotations

import json
import re
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from openapi_spec_validator import validate as validate_openapi

from adaptercar.mapping.errors import HTTP_STATUS, Code
from adaptercar.protos import ProtoSet, compile_protos
from tests.harness import (
    ROOT,
    Ledger,
    Sidecar,
    demo_like_config,
    free_port,
    start_ledger,
)

GRPC_MAX = 8192
HTTP_MAX = 4096

FX_PROTO = """\
syntax = "proto3";
package fx.v1;
import "google/api/annotations.proto";

service Fx {
  rpc Tenant(TenantRequest) returns (TenantReply) {
    option (google.api.http) = {get: "/v1/tenant"};
  }
  rpc Flag(FlagRequest) returns (FlagReply) {
    option (google.api.http) = {
      post: "/v1/flag"
      body: "*"
      additional_bindings {get: "/v1/flag/{value}/stored" response_body: "stored"}
      additional_bindings {get: "/v1/flag/{value}/echo" response_body: "echo_text"}
    };
  }
  rpc Slow(SlowRequest) returns (SlowReply) {
    option (google.api.http) = {get: "/v1/slow/{ms}"};
  }
}
message TenantRequest {}
message TenantReply { string tenant = 1; }
message FlagRequest { string value = 1; }
message FlagReply {
  bool stored = 1;
  int64 count = 2;
  string echo_text = 3;
  repeated string tags = 4;
}
message SlowRequest { int32 ms = 1; }
message SlowReply { string status = 1; }
"""

FX_MAPPING = """\
service: fx.v1.Fx
backend: ledger
methods:
  Tenant:
    request: "ECHO {meta.x-tenant}"
    response:
      - match: '^OK (?P<t>.*)$'
        fields: {tenant: "{t}"}
  Flag:
    request: "ECHO {value}"
    response:
      - match: '^OK (?P<v>true|false)$'
        fields: {stored: "{v}", echo_text: "{v}"}
  Slow:
    idempotent: true
    request: "SLOW {ms} PING"
    response:
      - match: '^PONG$'
        fields: {status: PONG}
"""


def write_fx(folder: Path) -> tuple[Path, Path]:
    protos = folder / "fxprotos"
    (protos / "fx" / "v1").mkdir(parents=True, exist_ok=True)
    (protos / "fx" / "v1" / "fx.proto").write_text(FX_PROTO)
    mapping = folder / "fx.yaml"
    mapping.write_text(FX_MAPPING)
    return protos, mapping


def fx_config(ledger_address: str, folder: Path) -> dict[str, Any]:
    protos, mapping = write_fx(folder)
    cfg = demo_like_config(ledger_address)
    cfg["protos"] = [str(ROOT / "protos"), str(protos)]
    cfg["mappings"] = [str(ROOT / "mappings" / "ledger.yaml"), str(mapping)]
    cfg["grpc"] = {"max_message_bytes": GRPC_MAX}
    cfg["http"] = {"max_body_bytes": HTTP_MAX}
    return cfg


class Env:
    """The shared sidecar plus typed gRPC access to both services."""

    def __init__(self, sc: Sidecar, ledger: Ledger, ps: ProtoSet) -> None:
        self.sc = sc
        self.ledger = ledger
        self.ps = ps
        self.channel = grpc.insecure_channel(f"127.0.0.1:{sc.ports['grpc']}")

    def stub(self, service: str, method: str) -> tuple[Callable[..., Any], type[Any]]:
        md = self.ps.services()[service].methods_by_name[method]
        req_cls = self.ps.message_class(md.input_type)
        resp_cls = self.ps.message_class(md.output_type)
        call = self.channel.unary_unary(
            f"/{service}/{method}",
            request_serializer=req_cls.SerializeToString,
            response_deserializer=resp_cls.FromString,
        )
        return call, req_cls

    def call(self, service: str, method: str, metadata: Any = None, timeout: float = 10.0,
             **fields: Any) -> Any:
        stub, req_cls = self.stub(service, method)
        return stub(req_cls(**fields), timeout=timeout, metadata=metadata)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp("fronts")
    led = start_ledger(tmp)
    sc = Sidecar(tmp, fx_config(led.address, tmp), single_process=True)
    try:
        sc.start()
        ps = compile_protos([ROOT / "protos", tmp / "fxprotos"])
        e = Env(sc, led, ps)
        yield e
        e.channel.close()
    finally:
        try:
            sc.stop()
        finally:
            led.stop()


def sent_since(ledger: Ledger, before: int) -> list[str]:
    """Frames the ledger received after `before`, minus the pool's own LOGIN handshakes
    (a connection closed by an earlier test's timeout is replaced at any moment)."""
    return [x for x in ledger.journal_lines()[before:] if not x.startswith("b'LOGIN ")]


def grpc_error(fn: Callable[[], Any]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as ei:
        fn()
    return ei.value


def access_line(sc: Sidecar, request_id: str, timeout: float = 5.0) -> dict[str, Any]:
    """The access log line of one call (the log is written right after the reply)."""
    end = time.monotonic() + timeout
    while True:
        found = [r for r in sc.log_records()
                 if r.get("event") == "access" and r.get("request_id") == request_id]
        if found or time.monotonic() > end:
            assert len(found) == 1, f"expected one access line for {request_id}, got {found}"
            return found[0]
        time.sleep(0.05)


# --------------------------------------------------------------------- 1. reflection, health

def reflect(channel: grpc.Channel, **req: Any) -> reflection_pb2.ServerReflectionResponse:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    responses = list(stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(**req)]), timeout=10))
    assert len(responses) == 1
    return responses[0]


def test_reflection_lists_services_and_serves_descriptors(env: Env) -> None:
    listed = reflect(env.channel, list_services="")
    names = {s.name for s in listed.list_services_response.service}
    assert {"ledger.v1.Ledger", "fx.v1.Fx", "grpc.health.v1.Health",
            "grpc.reflection.v1alpha.ServerReflection"} <= names

    found = reflect(env.channel, file_containing_symbol="ledger.v1.Ledger")
    files = [descriptor_pb2.FileDescriptorProto.FromString(b)
             for b in found.file_descriptor_response.file_descriptor_proto]
    ledger = next(f for f in files if f.name == "ledger/v1/ledger.proto")
    assert ledger.package == "ledger.v1"
    methods = {m.name for s in ledger.service if s.name == "Ledger" for m in s.method}
    assert {"GetBalance", "Transfer", "ListTransactions", "PutNote"} <= methods

    missing = reflect(env.channel, file_containing_symbol="no.such.Service")
    assert missing.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]


def health_status(channel: grpc.Channel, service: str) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
    return int(reply.status)


def wait_health(channel: grpc.Channel, service: str, want: int, timeout: float = 15.0) -> None:
    end = time.monotonic() + timeout
    got = health_status(channel, service)
    while got != want and time.monotonic() < end:
        time.sleep(0.1)
        got = health_status(channel, service)
    assert got == want, f"health of {service!r}: {got}, expected {want}"


SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def test_health_serving_when_backend_up(env: Env) -> None:
    wait_health(env.channel, "", SERVING)
    wait_health(env.channel, "ledger.v1.Ledger", SERVING)
    err = grpc_error(lambda: health_status(env.channel, "no.such.Service"))
    assert err.code() == grpc.StatusCode.NOT_FOUND


def test_backend_down_then_up(tmp_path: Path, sidecars: Any) -> None:
    """Down: health NOT_SERVING, calls UNAVAILABLE/503 fast; the ledger then starts on that
    port and health turns SERVING without a restart."""
    port = free_port()
    cfg = demo_like_config(f"127.0.0.1:{port}")
    sc = sidecars(cfg, single_process=True, wait_ready=False)
    ch = grpc.insecure_channel(f"127.0.0.1:{sc.ports['grpc']}")
    try:
        wait_health(ch, "", NOT_SERVING)
        wait_health(ch, "ledger.v1.Ledger", NOT_SERVING)

        client = sc.grpc_client()
        t0 = time.monotonic()
        err = grpc_error(lambda: client.call("ledger.v1.Ledger.GetBalance", account_id="1001"))
        assert err.code() == grpc.StatusCode.UNAVAILABLE, err.details()
        assert "unavailable" in (err.details() or "").lower()
        status, body, _ = sc.http("GET", "/v1/accounts/1001/balance")
        assert status == 503 and body["code"] == Code.UNAVAILABLE and body["details"] == []
        assert time.monotonic() - t0 < 5
        client.close()

        led = start_ledger(tmp_path, port=port)
        try:
            wait_health(ch, "", SERVING, timeout=20)
            wait_health(ch, "ledger.v1.Ledger", SERVING)
        finally:
            led.stop()
    finally:
        ch.close()


# --------------------------------------------------------------------- 2. metadata in templates

def test_metadata_reaches_templates(env: Env) -> None:
    reply = env.call("fx.v1.Fx", "Tenant", metadata=[("x-tenant", "acme-7")])
    assert reply.tenant == "acme-7"
    status, body, _ = env.sc.http("GET", "/v1/tenant", headers={"X-Tenant": "globex"})
    assert (status, body) == (200, {"tenant": "globex"})
    assert "b'ECHO acme-7'" in env.ledger.journal_lines()
    assert "b'ECHO globex'" in env.ledger.journal_lines()


# --------------------------------------------------------------------- 3. JSON front, success

def test_get_with_path_and_query(env: Env) -> None:
    status, body, hdrs = env.sc.http("GET", "/v1/accounts/1001/transactions?limit=2")
    assert status == 200, body
    assert hdrs["content-type"] == "application/json"
    rows = body["transactions"]
    assert len(rows) == 2
    assert set(rows[0]) == {"date", "amountCents", "memo"}
    assert all(isinstance(r["amountCents"], str) for r in rows)  # int64 as strings
    assert rows[0] == {"date": "19970228", "amountCents": "-500", "memo": "BANK CHARGES"}
    status, body, _ = env.sc.http("GET", "/v1/accounts/2001/transactions?limit=5")
    assert (status, body) == (200, {"transactions": []})  # repeated default included


def test_post_body_star(env: Env) -> None:
    _, before, _ = env.sc.http("GET", "/v1/accounts/1002/balance")
    status, body, _ = env.sc.http("POST", "/v1/transfers",
                                  body={"fromAccount": "1001", "to_account": "1002",
                                        "amountCents": "7"})
    assert status == 200, body
    assert re.fullmatch(r"TX\d+", body["transactionId"])
    _, after, _ = env.sc.http("GET", "/v1/accounts/1002/balance")
    assert int(after["balanceCents"]) == int(before["balanceCents"]) + 7


def test_rpc_form_accepts_both_name_forms_and_prints_defaults(env: Env) -> None:
    for req in ({"accountId": "2001"}, {"account_id": "2001"}):
        status, body, _ = env.sc.http("POST", "/ledger.v1.Ledger/GetBalance", body=req)
        assert (status, body) == (200, {"accountId": "2001", "balanceCents": "0",
                                        "currency": "USD"})
    status, body, _ = env.sc.http("POST", "/fx.v1.Fx/Flag", body={"value": "false"})
    assert (status, body) == (200, {"stored": False, "count": "0", "echoText": "false",
                                    "tags": []})
    status, body, _ = env.sc.http("POST", "/v1/flag", body={"value": "true"})
    assert (status, body) == (200, {"stored": True, "count": "0", "echoText": "true",
                                    "tags": []})


def test_additional_bindings_and_response_body(env: Env) -> None:
    status, body, _ = env.sc.http("GET", "/v1/flag/false/stored")
    assert (status, body) == (200, False)
    status, body, _ = env.sc.http("GET", "/v1/flag/true/echo")
    assert (status, body) == (200, "true")


def test_openapi_document(env: Env) -> None:
    status, doc, hdrs = env.sc.http("GET", "/openapi.json")
    assert status == 200 and hdrs["content-type"] == "application/json"
    validate_openapi(doc)
    assert doc["openapi"].startswith("3.")
    paths = doc["paths"]
    assert "get" in paths["/v1/accounts/{account_id}/transactions"]
    assert "post" in paths["/v1/transfers"]
    assert "get" in paths["/v1/tenant"]
    assert "post" in paths["/ledger.v1.Ledger/GetBalance"]


# --------------------------------------------------------------------- 4. JSON errors

def assert_status(body: Any, code: Code, *fragments: str) -> None:
    assert isinstance(body, dict) and set(body) == {"code", "message", "details"}, body
    assert body["code"] == int(code), body
    assert body["details"] == []
    for frag in fragments:
        assert frag in body["message"], body


def test_malformed_json(env: Env) -> None:
    for raw in (b"{not json", b'{"fromAccount": "1001",', b"\xff\xfe"):
        status, body, hdrs = env.sc.http("POST", "/v1/transfers", raw=raw,
                                         headers={"content-type": "application/json"})
        assert status == 400 and hdrs["content-type"] == "application/json"
        assert_status(body, Code.INVALID_ARGUMENT)
    status, body, _ = env.sc.http("POST", "/v1/transfers", raw=b"[1, 2]")
    assert status == 400
    assert_status(body, Code.INVALID_ARGUMENT, "JSON object")


def test_wrong_types_name_the_field(env: Env) -> None:
    status, body, _ = env.sc.http("GET", "/v1/accounts/1001/transactions?limit=abc")
    assert status == 400
    assert_status(body, Code.INVALID_ARGUMENT, "limit")
    status, body, _ = env.sc.http("POST", "/ledger.v1.Ledger/ListTransactions",
                                  body={"accountId": "1001", "limit": "abc"})
    assert status == 400
    assert_status(body, Code.INVALID_ARGUMENT, "limit")
    status, body, _ = env.sc.http("POST", "/v1/transfers",
                                  body={"fromAccount": "1001", "toAccount": "1002",
                                        "amountCents": {}})
    assert status == 400
    assert_status(body, Code.INVALID_ARGUMENT, "amountCents")


def test_unknown_field(env: Env) -> None:
    status, body, _ = env.sc.http("POST", "/v1/transfers",
                                  body={"fromAccount": "1001", "bogus": 1})
    assert status == 400
    assert_status(body, Code.INVALID_ARGUMENT, "bogus")
    status, body, _ = env.sc.http("GET", "/v1/accounts/1001/transactions?bogus=1")
    assert status == 400
    assert_status(body, Code.INVALID_ARGUMENT, "bogus")


def test_unknown_path_and_wrong_verb(env: Env) -> None:
    status, body, hdrs = env.sc.http("GET", "/v1/nothing/here")
    assert status == 404 and hdrs["content-type"] == "application/json"
    assert_status(body, Code.NOT_FOUND, "/v1/nothing/here")
    status, body, _ = env.sc.http("POST", "/ledger.v1.Ledger/NoSuchMethod", body={})
    assert status == 404
    assert_status(body, Code.NOT_FOUND)

    status, body, hdrs = env.sc.http("DELETE", "/v1/transfers")
    assert status == 405
    assert hdrs["allow"] == "POST"
    assert body["code"] == Code.UNIMPLEMENTED and body["details"] == []
    status, body, hdrs = env.sc.http("GET", "/ledger.v1.Ledger/GetBalance")
    assert status == 405 and hdrs["allow"] == "POST"


def test_oversized_body(env: Env) -> None:
    big = json.dumps({"accountId": "1001", "text": "x" * (HTTP_MAX * 4)}).encode()
    before = len(env.ledger.journal_lines())
    status, body, _ = env.sc.http("POST", "/v1/accounts/1001/notes", raw=big)
    assert status == 413
    assert_status(body, Code.RESOURCE_EXHAUSTED, str(HTTP_MAX))
    # a body far larger than the limit: still one clear error, and the sidecar lives on
    huge = b'{"text": "' + b"y" * (4 * 1024 * 1024) + b'"}'
    status, body, _ = env.sc.http("POST", "/v1/accounts/1001/notes", raw=huge, timeout=30)
    assert status == 413
    assert_status(body, Code.RESOURCE_EXHAUSTED)
    chunked = urllib.request.Request(
        f"http://127.0.0.1:{env.sc.ports['http']}/v1/accounts/1001/notes",
        data=iter([b"z" * 3000] * 10), method="POST",
        headers={"Transfer-Encoding": "chunked"})
    with pytest.raises(urllib.error.HTTPError) as ei:
        urllib.request.urlopen(chunked, timeout=10)
    assert ei.value.code == 413
    assert sent_since(env.ledger, before) == []  # nothing reached the ledger
    status, body, _ = env.sc.http("GET", "/v1/accounts/2001/balance")
    assert status == 200


def test_legacy_errors_map_to_http_status(env: Env) -> None:
    status, body, _ = env.sc.http("GET", "/v1/accounts/9999/balance")
    assert status == 404
    assert_status(body, Code.NOT_FOUND, "no such account 9999")
    status, body, _ = env.sc.http("POST", "/v1/transfers",
                                  body={"fromAccount": "2001", "toAccount": "1001",
                                        "amountCents": "500"})
    assert status == 400
    assert_status(body, Code.FAILED_PRECONDITION, "insufficient funds")
    status, body, _ = env.sc.http("POST", "/v1/transfers",
                                  body={"fromAccount": "1001", "toAccount": "1002",
                                        "amountCents": "-5"})
    assert status == 400
    assert_status(body, Code.INVALID_ARGUMENT, "bad amount")


def test_deadline_exceeded_is_504(env: Env) -> None:
    t0 = time.monotonic()
    status, body, _ = env.sc.http("GET", "/v1/slow/3000", headers={"Grpc-Timeout": "300m"})
    assert status == 504
    assert_status(body, Code.DEADLINE_EXCEEDED)
    assert time.monotonic() - t0 < 1.5  # the header's 300 ms, not the backend's 2 s timeout
    status, body, _ = env.sc.http("GET", "/v1/slow/0", headers={"Grpc-Timeout": "soon"})
    assert status == 400
    assert_status(body, Code.INVALID_ARGUMENT, "Grpc-Timeout")


# The table exactly as DESIGN.md ("Fronts") states it.
DESIGN_TABLE = """
    OK 200, CANCELLED 499, UNKNOWN 500, INVALID_ARGUMENT 400,
    DEADLINE_EXCEEDED 504, NOT_FOUND 404, ALREADY_EXISTS 409, PERMISSION_DENIED 403,
    RESOURCE_EXHAUSTED 429, FAILED_PRECONDITION 400, ABORTED 409, OUT_OF_RANGE 400,
    UNIMPLEMENTED 501, INTERNAL 500, UNAVAILABLE 503, DATA_LOSS 500, UNAUTHENTICATED 401.
"""


def parse_table(text: str) -> dict[str, int]:
    pairs = re.findall(r"\b([A-Z_]{2,}) (\d{3})\b", text)
    table = dict(pairs)
    assert len(table) == len(pairs), "a code appears twice"
    return {k: int(v) for k, v in table.items()}


def test_http_status_table_equals_design() -> None:
    expected = parse_table(DESIGN_TABLE)
    assert {c.name: s for c, s in HTTP_STATUS.items()} == expected
    assert set(expected) == {c.name for c in Code}  # every gRPC code has a status
    # the user docs, once written, must state the same table
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("**/*.md"))]:
        text = doc.read_text() if doc.exists() else ""
        m = re.search(r"OK 200,.*?UNAUTHENTICATED 401", text, re.S)
        if m:
            assert parse_table(m.group(0)) == expected, doc


# --------------------------------------------------------------------- 5. gRPC errors

def test_grpc_error_codes(env: Env) -> None:
    err = grpc_error(lambda: env.call("ledger.v1.Ledger", "GetBalance", account_id="9999"))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert err.details() == "no such account 9999"

    before = len(env.ledger.journal_lines())
    err = grpc_error(lambda: env.call("ledger.v1.Ledger", "GetBalance",
                                      account_id="1001\r\nXFER 1001 2001 100"))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "injection" in (err.details() or "")
    assert sent_since(env.ledger, before) == []  # never sent

    err = grpc_error(lambda: env.call("ledger.v1.Ledger", "Transfer", from_account="2001",
                                      to_account="1001", amount_cents=100))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION

    rid = uuid.uuid4().hex
    err = grpc_error(lambda: env.call("fx.v1.Fx", "Slow", ms=3000, timeout=0.5,
                                      metadata=[("x-request-id", rid)]))
    assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    line = access_line(env.sc, rid)
    assert line["code"] == "DEADLINE_EXCEEDED"  # not CANCELLED
    assert line["duration_ms"] < 1500  # the caller's deadline capped the backend's 2 s


def test_grpc_oversized_message_is_resource_exhausted(env: Env) -> None:
    before = len(env.ledger.journal_lines())
    err = grpc_error(lambda: env.call("ledger.v1.Ledger", "GetBalance",
                                      account_id="1" * (GRPC_MAX + 100)))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert sent_since(env.ledger, before) == []
    assert env.call("ledger.v1.Ledger", "GetBalance", account_id="2001").currency == "USD"


def test_grpc_malformed_request_bytes_are_invalid_argument(env: Env) -> None:
    """Bytes that are not a GetBalanceRequest (a truncated varint, a wrong wire type) get
    INVALID_ARGUMENT naming the message, an access line, and reach no backend."""
    before = len(env.ledger.journal_lines())
    call = env.channel.unary_unary("/ledger.v1.Ledger/GetBalance")
    for garbage in (b"\xff\xff\xff", b"\x0a\x05ab", b"\x0b"):
        rid = uuid.uuid4().hex
        err = grpc_error(lambda g=garbage, r=rid: call(g, timeout=5,  # type: ignore[misc]
                                                       metadata=[("x-request-id", r)]))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, garbage
        assert "ledger.v1.GetBalanceRequest" in (err.details() or "")
        line = access_line(env.sc, rid)
        assert (line["front"], line["code"]) == ("grpc", "INVALID_ARGUMENT")
    assert sent_since(env.ledger, before) == []
    assert env.call("ledger.v1.Ledger", "GetBalance", account_id="2001").currency == "USD"


def test_grpc_unknown_method_is_unimplemented(env: Env) -> None:
    for path in ("/ledger.v1.Ledger/NoSuchMethod", "/no.such.Service/Get"):
        call = env.channel.unary_unary(path)
        rid = uuid.uuid4().hex
        err = grpc_error(lambda c=call, r=rid: c(b"", timeout=5,  # type: ignore[misc]
                                                 metadata=[("x-request-id", r)]))
        assert err.code() == grpc.StatusCode.UNIMPLEMENTED
        line = access_line(env.sc, rid)
        assert line["front"] == "grpc" and line["code"] == "UNIMPLEMENTED"
        assert line["method"] == path


# --------------------------------------------------------------------- 6. access log

ACCESS_KEYS = {"ts", "level", "event", "front", "method", "code", "duration_ms", "backend_ms",
               "request_id", "attempts", "service"}


def test_access_log_lines(env: Env) -> None:
    rid_g, rid_h, rid_e = (uuid.uuid4().hex for _ in range(3))
    env.call("ledger.v1.Ledger", "GetBalance", account_id="2001",
             metadata=[("x-request-id", rid_g)])
    env.sc.http("GET", "/v1/accounts/2001/balance", headers={"X-Request-Id": rid_h})
    env.sc.http("GET", "/v1/accounts/9999/balance", headers={"X-Request-Id": rid_e})

    g = access_line(env.sc, rid_g)
    assert ACCESS_KEYS <= set(g)
    assert (g["front"], g["method"], g["code"]) == ("grpc", "/ledger.v1.Ledger/GetBalance", "OK")
    assert isinstance(g["duration_ms"], float) and g["duration_ms"] >= 0
    assert isinstance(g["backend_ms"], float) and g["backend_ms"] <= g["duration_ms"]

    h = access_line(env.sc, rid_h)
    assert ACCESS_KEYS <= set(h)
    assert (h["front"], h["method"], h["code"]) == ("http", "/ledger.v1.Ledger/GetBalance", "OK")
    assert isinstance(h["backend_ms"], float) and h["backend_ms"] <= h["duration_ms"]

    e = access_line(env.sc, rid_e)
    assert (e["front"], e["code"]) == ("http", "NOT_FOUND")
    assert e["error"] == "no such account 9999"


def test_supervisor_mode_fronts(ledger: Ledger, sidecars: Any) -> None:
    """The process model: each front in its own worker, answering and logging the same way."""
    sc = sidecars(demo_like_config(ledger.address))
    ch = grpc.insecure_channel(f"127.0.0.1:{sc.ports['grpc']}")
    try:
        wait_health(ch, "ledger.v1.Ledger", SERVING)
        names = {s.name for s in reflect(ch, list_services="").list_services_response.service}
        assert "ledger.v1.Ledger" in names
        rid_g, rid_h = uuid.uuid4().hex, uuid.uuid4().hex
        client = sc.grpc_client()
        reply = client.call("ledger.v1.Ledger.GetBalance", account_id="2001",
                            metadata=[("x-request-id", rid_g)])
        assert reply.currency == "USD"
        err = grpc_error(lambda: client.call("ledger.v1.Ledger.GetBalance", account_id="9999"))
        assert err.code() == grpc.StatusCode.NOT_FOUND
        client.close()
        status, body, _ = sc.http("GET", "/v1/accounts/1001/transactions?limit=2",
                                  headers={"X-Request-Id": rid_h})
        assert status == 200 and len(body["transactions"]) == 2
        status, body, _ = sc.http("GET", "/v1/accounts/9999/balance")
        assert status == 404 and body["code"] == Code.NOT_FOUND
        g, h = access_line(sc, rid_g), access_line(sc, rid_h)
        assert (g["front"], g["code"]) == ("grpc", "OK") and g["role"] == "grpc"
        assert (h["front"], h["code"]) == ("http", "OK") and h["role"] == "http"
        assert g["pid"] != h["pid"]
    finally:
        ch.close()
    assert sc.stop() == 0
