"""Every crm operation, over gRPC and over JSON, through the SOAP 1.1 port and the SOAP 1.2 port.

The fixture answers each request in the SOAP version it was sent in, and `--soap-version`
makes it refuse the other one (a VersionMismatch fault, as a service that speaks one version
does), so a test against the wrong port fails rather than passing on the 1.1 envelope."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from tests.test_soap_backend import _PS, call, config
from tests.test_soap_fixture import Crm, start_crm

PORTS = {"CustomerServiceSoap": "1.1", "CustomerServiceSoap12": "1.2"}


@pytest.fixture(params=sorted(PORTS))
def port(request: pytest.FixtureRequest) -> Iterator[tuple[str, Crm]]:
    """A fresh fixture per test (the calls change its customers), speaking only the port's
    SOAP version."""
    fx = start_crm("--soap-version", PORTS[request.param])
    yield request.param, fx
    fx.stop()


def _status(name: str) -> int:
    return _PS.pool.FindEnumTypeByName("crm.v1.Status").values_by_name[name].number  # type: ignore[no-any-return]


def test_every_operation_over_grpc_and_json(port: tuple[str, Crm], sidecars: Any) -> None:
    name, fx = port
    sc = sidecars(config(fx.url, port=name), single_process=True)
    # GetCustomerById
    got = call(sc, "GetCustomer", id=1)
    assert (got.id, got.name, got.email) == (1, "Ada Lovelace", "ada@example.com")
    status, body, _ = sc.http("GET", "/v1/customers/3")
    assert status == 200 and body == {"id": 3, "name": "Grace Hopper", "email": "grace@example.com"}
    # SearchCustomers: an array of a nested complex type, an optional limit
    found = call(sc, "SearchCustomers", name_prefix="Al")
    assert [(c.customer_id, c.full_name, c.contact.email) for c in found.customer] == [
        (2, "Alan Turing", "alan@example.com"), (4, "Alonzo Church", "alonzo@example.com")]
    status, body, _ = sc.http("POST", "/v1/customers:search", body={"name_prefix": "Al", "limit": 1})
    assert status == 200, body
    assert body == {"customer": [{"customerId": 2, "fullName": "Alan Turing",
                                  "contact": {"email": "alan@example.com", "phone": ""}}]}
    # UpdateEmail: applied, as the next read shows
    got = call(sc, "UpdateEmail", customer_id=3, email="grace@navy.example")
    assert (got.customer_id, got.email, got.updated) == (3, "grace@navy.example", True)
    assert call(sc, "GetCustomer", id=3).email == "grace@navy.example"
    status, body, _ = sc.http("POST", "/v1/customers/4/email", body={"email": "church@example.com"})
    assert status == 200 and body == {"customerId": 4, "email": "church@example.com", "updated": True}
    assert sc.http("GET", "/v1/customers/4")[1]["email"] == "church@example.com"
    # SetStatus: an enumeration both ways, a dateTime (+01:00 in the reply) as a Timestamp
    got = call(sc, "SetStatus", customer_id=2, status=_status("STATUS_ON_HOLD"))
    assert (got.customer_id, got.status, got.previous) == (
        2, _status("STATUS_ON_HOLD"), _status("STATUS_ACTIVE"))
    changed = got.changed_at.ToDatetime(tzinfo=dt.UTC)
    assert abs((changed - dt.datetime.now(dt.UTC)).total_seconds()) < 60
    status, body, _ = sc.http("POST", "/v1/customers/2/status", body={"status": "STATUS_CLOSED"})
    assert status == 200, body
    assert (body["customerId"], body["status"], body["previous"]) == (
        2, "STATUS_CLOSED", "STATUS_ON_HOLD")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", body["changedAt"]), body


def test_faults_of_every_operation_over_grpc_and_json(port: tuple[str, Crm], sidecars: Any) -> None:
    """The port's fault shape (1.1 faultcode/faultstring, 1.2 Code/Reason) → the same status."""
    name, fx = port
    sc = sidecars(config(fx.url, port=name), single_process=True)
    for method, fields, code in [
        ("GetCustomer", {"id": 99}, grpc.StatusCode.NOT_FOUND),
        ("UpdateEmail", {"customer_id": 99, "email": "x@example.com"}, grpc.StatusCode.NOT_FOUND),
        ("UpdateEmail", {"customer_id": 2, "email": "no address"}, grpc.StatusCode.INVALID_ARGUMENT),
        ("SetStatus", {"customer_id": 98, "status": _status("STATUS_CLOSED")},
         grpc.StatusCode.NOT_FOUND),
        ("SearchCustomers", {}, grpc.StatusCode.INVALID_ARGUMENT),  # required: nothing sent
        ("SetStatus", {"customer_id": 2}, grpc.StatusCode.INVALID_ARGUMENT),  # required enum
    ]:
        with pytest.raises(grpc.RpcError) as e:
            call(sc, method, **fields)
        assert e.value.code() == code, (method, fields, e.value.details())
    assert sc.http("GET", "/v1/customers/98")[0] == 404
    status, body, _ = sc.http("POST", "/v1/customers/97/status", body={"status": "STATUS_ACTIVE"})
    assert status == 404 and body["message"] == "customer 97 not found"
    status, body, _ = sc.http("POST", "/v1/customers/2/email", body={"email": "no address"})
    assert status == 400 and "invalid email address" in body["message"]
    status, body, _ = sc.http("POST", "/v1/customers:search", body={})
    assert status == 400 and body["message"] == "name_prefix is required"


def test_the_wrong_port_is_refused_by_a_one_version_service(sidecars: Any) -> None:
    """What makes the tests above able to fail: a 1.2-only service refuses the 1.1 port."""
    fx = start_crm("--soap-version", "1.2")
    try:
        sc = sidecars(config(fx.url, port="CustomerServiceSoap"), single_process=True)
        with pytest.raises(grpc.RpcError) as e:
            call(sc, "GetCustomer", id=1)
        assert e.value.code() == grpc.StatusCode.INTERNAL
        assert "SOAP 1.2 only" in (e.value.details() or "")
    finally:
        fx.stop()
