"""The soap backend end to end: real grpcio and HTTP clients → sidecar → crm fixture (zeep)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from adaptercar.protos import compile_protos
from tests.harness import ROOT, free_port
from tests.test_soap_fixture import Crm, start_crm

CRM_DIR = ROOT / "tests" / "wsdl" / "crm"
WSDL = str(ROOT / "legacy_fixtures" / "crm" / "crm.wsdl")
_PS = compile_protos([CRM_DIR / "protos"])


def config(endpoint: str, **soap: Any) -> dict[str, Any]:
    return {
        "grpc": {}, "http": {}, "admin": {},
        "protos": [str(CRM_DIR / "protos")],
        "mappings": [str(CRM_DIR / "crm.yaml")],
        "log": {"level": "info"},
        "backends": {"crm": {"soap": {"wsdl": WSDL, "endpoint": endpoint, "timeout": "2s", **soap}}},
    }


def call(sc: Any, method: str, timeout: float = 10.0, **fields: Any) -> Any:
    md = _PS.services()["crm.v1.Customers"].methods_by_name[method]
    req_cls, resp_cls = _PS.message_class(md.input_type), _PS.message_class(md.output_type)
    with grpc.insecure_channel(f"127.0.0.1:{sc.ports['grpc']}") as ch:
        stub = ch.unary_unary(f"/crm.v1.Customers/{method}", request_serializer=req_cls.SerializeToString,
                              response_deserializer=resp_cls.FromString)
        return stub(req_cls(**fields), timeout=timeout)


@pytest.fixture(scope="module")
def crm() -> Iterator[Crm]:
    fx = start_crm("--test-hooks", "--slow", "4")
    yield fx
    fx.stop()


@pytest.mark.parametrize("port", ["CustomerServiceSoap", "CustomerServiceSoap12"])
def test_get_customer_and_not_found_over_grpc_and_json(crm: Crm, sidecars: Any, port: str) -> None:
    sc = sidecars(config(crm.url, port=port), single_process=True)
    got = call(sc, "GetCustomer", id=1)
    assert (got.id, got.name, got.email) == (1, "Ada Lovelace", "ada@example.com")
    status, body, _ = sc.http("GET", "/v1/customers/3")
    assert status == 200 and body == {"id": 3, "name": "Grace Hopper", "email": "grace@example.com"}
    with pytest.raises(grpc.RpcError) as e:
        call(sc, "GetCustomer", id=99)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    assert e.value.details() == "customer 99 not found"
    status, body, _ = sc.http("GET", "/v1/customers/98")
    assert status == 404, body
    found = call(sc, "SearchCustomers", name_prefix="Al")
    assert [(c.customer_id, c.full_name, c.contact.email) for c in found.customer] == [
        (2, "Alan Turing", "alan@example.com"), (4, "Alonzo Church", "alonzo@example.com")]
    assert len(call(sc, "SearchCustomers", name_prefix="Al", limit=1).customer) == 1
    assert list(call(sc, "SearchCustomers", name_prefix="Zz").customer) == []
    with pytest.raises(grpc.RpcError) as e:
        call(sc, "UpdateEmail", customer_id=2, email="no address")
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "invalid email" in (e.value.details() or "")
    with pytest.raises(grpc.RpcError) as e:  # required by the schema: refused before sending
        call(sc, "SearchCustomers")
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "name_prefix is required" in (e.value.details() or "")


@pytest.mark.parametrize("digest", [False, True])
def test_username_token_accepted_and_rejected(sidecars: Any, digest: bool) -> None:
    fx = start_crm("--wsse", "alice:s3cret")
    try:
        good = sidecars(config(fx.url, wsse={"username": "alice", "password": "s3cret", "digest": digest}),
                        single_process=True)
        assert call(good, "GetCustomer", id=2).name == "Alan Turing"
        bad = sidecars(config(fx.url, wsse={"username": "alice", "password": "nope", "digest": digest}),
                       single_process=True)
        with pytest.raises(grpc.RpcError) as e:
            call(bad, "GetCustomer", id=2)
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert e.value.details() == "authentication failed"
    finally:
        fx.stop()


def test_basic_auth_accepted_rejected_and_hidden(sidecars: Any) -> None:
    fx = start_crm("--basic-auth", "bob:pa55")
    try:
        good = sidecars(config(fx.url, basic_auth={"username": "bob", "password": "${CRM_PASS}"}),
                        single_process=True, env={"CRM_PASS": "pa55"})
        assert call(good, "GetCustomer", id=3).name == "Grace Hopper"
        shown = good.admin("/config")[1]["config"]["backends"]["crm"]["soap"]["basic_auth"]
        assert shown == {"username": "bob", "password": "***"}
        bad = sidecars(config(fx.url, basic_auth={"username": "bob", "password": "wrong"}),
                       single_process=True)
        with pytest.raises(grpc.RpcError) as e:
            call(bad, "GetCustomer", id=3)
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "HTTP 401" in (e.value.details() or "")
        status, _, _ = bad.http("GET", "/v1/customers/3")
        assert status == 401
        none = sidecars(config(fx.url), single_process=True)
        with pytest.raises(grpc.RpcError) as e:
            call(none, "GetCustomer", id=3)
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        fx.stop()


def test_template_value_of_the_wrong_type_is_refused_before_sending(sidecars: Any,
                                                                   tmp_path: Path) -> None:
    mapping = yaml.safe_load((CRM_DIR / "crm.yaml").read_text())
    mapping["methods"]["GetCustomer"]["request"] = {"customerId": "{id}x"}
    (tmp_path / "crm.yaml").write_text(yaml.safe_dump(mapping))
    cfg = config(f"http://127.0.0.1:{free_port()}/crm")  # nobody there: a call sent is UNAVAILABLE
    cfg["mappings"] = [str(tmp_path / "crm.yaml")]
    sc = sidecars(cfg, single_process=True, wait_ready=False)  # never ready: nobody there
    with pytest.raises(grpc.RpcError) as e:
        call(sc, "GetCustomer", id=1)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert e.value.details() == "customerId (rendered from '{id}x'): '1x' is not an xsd:int"
    status, body, _ = sc.http("GET", "/v1/customers/2")
    assert status == 400 and "'2x' is not an xsd:int" in body["message"]


def test_backend_down_is_unavailable(sidecars: Any) -> None:
    sc = sidecars(config(f"http://127.0.0.1:{free_port()}/crm"), single_process=True,
                  wait_ready=False)
    state = wait_for(lambda: _readyz(sc), lambda r: r[1]["workers"]["single"]["backends"]["crm"]
                     ["last_error"])
    assert state[0] == 503 and state[1]["ready"] is False
    assert "connect probe: ConnectionRefusedError" in \
        state[1]["workers"]["single"]["backends"]["crm"]["last_error"]
    t0 = time.monotonic()
    with pytest.raises(grpc.RpcError) as e:
        call(sc, "GetCustomer", id=1)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    assert time.monotonic() - t0 < 1.5  # refused: fails fast, not at the timeout
    status, body, _ = sc.http("GET", "/v1/customers/1")
    assert status == 503, body


def _readyz(sc: Any) -> tuple[int, Any]:
    return sc.admin("/readyz")  # type: ignore[no-any-return]


def wait_for(get: Any, good: Any, timeout: float = 10.0) -> Any:
    end = time.monotonic() + timeout
    while True:
        value = get()
        if good(value) or time.monotonic() > end:
            return value
        time.sleep(0.1)


def test_readiness_follows_the_endpoint(sidecars: Any) -> None:
    port = free_port()
    fx = start_crm("--port", str(port))
    try:
        sc = sidecars(config(fx.url), single_process=True)  # ready: the connect probe passed
        assert _readyz(sc)[0] == 200
        fx.stop()
        with pytest.raises(grpc.RpcError) as e:
            call(sc, "GetCustomer", id=1)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        status, body = wait_for(lambda: _readyz(sc), lambda r: r[0] == 503, timeout=3)
        assert status == 503 and body["workers"]["single"]["backends"]["crm"]["ready"] is False
        fx = start_crm("--port", str(port))
        status, _ = wait_for(lambda: _readyz(sc), lambda r: r[0] == 200, timeout=10)
        assert status == 200  # the next probe (every 5 s) saw it back
        assert call(sc, "GetCustomer", id=1).id == 1
    finally:
        fx.stop()


def test_stale_keep_alive_connection_is_retried_only_for_idempotent_methods(sidecars: Any) -> None:
    fx = start_crm("--drop-idle", "0.3")  # resets a connection reused after 0.3 s idle
    try:
        sc = sidecars(config(fx.url), single_process=True)
        assert call(sc, "GetCustomer", id=1).id == 1  # leaves a connection in the pool
        time.sleep(0.6)
        # it is reset without a reply; UpdateEmail is not idempotent: the caller decides
        with pytest.raises(grpc.RpcError) as e:
            call(sc, "UpdateEmail", customer_id=3, email="grace@navy.example")
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "not retried: the method is not idempotent" in (e.value.details() or "")
        assert call(sc, "GetCustomer", id=3).email == "grace@example.com"  # never applied
        time.sleep(0.6)
        # the same again for GetCustomer, which is idempotent: sent again on a fresh connection
        assert call(sc, "GetCustomer", id=2).name == "Alan Turing"
        time.sleep(0.6)
        status, body, _ = sc.http("GET", "/v1/customers/4")
        assert status == 200 and body["name"] == "Alonzo Church"
    finally:
        fx.stop()


def test_slow_backend_deadline_and_other_calls_still_served(crm: Crm, sidecars: Any) -> None:
    sc = sidecars(config(crm.url, timeout="1500ms"), single_process=True)
    outcome: dict[str, Any] = {}

    def slow() -> None:
        t0 = time.monotonic()
        try:
            call(sc, "GetCustomer", id=7777)
        except grpc.RpcError as e:
            outcome["code"] = e.code()
        outcome["took"] = time.monotonic() - t0

    th = threading.Thread(target=slow)
    th.start()
    time.sleep(0.3)
    t0 = time.monotonic()
    for cid in (1, 2, 3):  # answered while the slow call is outstanding
        assert call(sc, "GetCustomer", id=cid).id == cid
    assert time.monotonic() - t0 < 1.0
    assert th.is_alive()
    th.join(10)
    assert outcome["code"] == grpc.StatusCode.DEADLINE_EXCEEDED
    assert 1.2 < outcome["took"] < 3.5
    # the caller's own deadline is shorter than the backend timeout: it wins
    with pytest.raises(grpc.RpcError) as e:
        call(sc, "GetCustomer", timeout=0.5, id=7777)
    assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert call(sc, "GetCustomer", id=4).name == "Alonzo Church"


def test_xxe_in_reply_reads_no_local_file(crm: Crm, sidecars: Any) -> None:
    sc = sidecars(config(crm.url))  # the process model: each worker loads the WSDL itself
    assert call(sc, "GetCustomer", id=1).name == "Ada Lovelace"
    with pytest.raises(grpc.RpcError) as e:
        call(sc, "GetCustomer", id=6666)
    passwd = Path("/etc/passwd").read_text().splitlines()[0]
    details = e.value.details() or ""
    assert e.value.code() == grpc.StatusCode.UNKNOWN
    assert "DTD" in details and passwd not in details
    status, body, _ = sc.http("GET", "/v1/customers/6666")
    assert status == 500 and passwd not in str(body)
    assert passwd not in sc.log_text()


def test_reply_size_is_bounded(crm: Crm, sidecars: Any) -> None:
    sc = sidecars(config(crm.url, max_reply_bytes=600), single_process=True)
    assert call(sc, "GetCustomer", id=1).id == 1  # a small reply fits
    with pytest.raises(grpc.RpcError) as e:
        call(sc, "SearchCustomers", name_prefix="A")
    assert e.value.code() == grpc.StatusCode.INTERNAL
    assert "max_reply_bytes" in (e.value.details() or "")
    assert call(sc, "GetCustomer", id=2).id == 2  # the aborted connection is not reused
