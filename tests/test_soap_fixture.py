"""The crm fixture answers a real zeep client over loopback HTTP, both SOAP versions."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import zeep
from zeep.wsse.username import UsernameToken

from tests.harness import ROOT, env_with_root

WSDL = str(ROOT / "legacy_fixtures" / "crm" / "crm.wsdl")
PORTS = ("CustomerServiceSoap", "CustomerServiceSoap12")


@dataclass
class Crm:
    proc: subprocess.Popen[bytes]
    address: str

    @property
    def url(self) -> str:
        return f"http://{self.address}/crm"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_crm(*args: str) -> Crm:
    argv = [sys.executable, "-m", "legacy_fixtures.crm", "--port", "0", *args]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=env_with_root(), cwd=ROOT)
    assert proc.stdout is not None
    line = proc.stdout.readline().decode().strip()
    if not line.startswith("LISTENING "):
        proc.kill()
        raise RuntimeError(f"crm did not start: {line!r}")
    return Crm(proc, line.split()[1])


@pytest.fixture
def crm() -> Iterator[Crm]:
    fx = start_crm("--test-hooks", "--slow", "3")
    yield fx
    fx.stop()


def _service(crm: Crm, port: str, wsse: object = None) -> object:
    client = zeep.Client(WSDL, wsse=wsse)
    svc = client.bind("CustomerService", port)
    svc._binding_options["address"] = crm.url
    return svc


@pytest.mark.parametrize("port", PORTS)
def test_operations_and_faults(crm: Crm, port: str) -> None:
    svc: object = _service(crm, port)
    got = svc.GetCustomerById(customerId=1)  # type: ignore[attr-defined]
    assert (got.customerId, got.fullName, got.contact.email) == (1, "Ada Lovelace", "ada@example.com")
    found = svc.SearchCustomers(namePrefix="Al")  # type: ignore[attr-defined]
    assert [c.customerId for c in found] == [2, 4]
    assert svc.SearchCustomers(namePrefix="Al", limit=1)[0].fullName == "Alan Turing"  # type: ignore[attr-defined]
    with pytest.raises(zeep.exceptions.Fault) as e:
        svc.GetCustomerById(customerId=99)  # type: ignore[attr-defined]
    assert e.value.message == "customer 99 not found"
    assert e.value.code.split(":")[-1] == ("Client" if port == PORTS[0] else "Sender")
    with pytest.raises(zeep.exceptions.Fault, match="invalid email"):
        svc.UpdateEmail(customerId=2, email="not an address")  # type: ignore[attr-defined]
    ok = svc.UpdateEmail(customerId=2, email="turing@example.com")  # type: ignore[attr-defined]
    assert ok.updated is True
    changed = svc.SetStatus(customerId=4, status="on-hold")  # type: ignore[attr-defined]
    assert (changed.status, changed.previous) == ("on-hold", "active")
    assert changed.changedAt.utcoffset() == dt.timedelta(hours=1)  # a zone clients must convert
    with pytest.raises(zeep.exceptions.Fault, match="invalid status 'asleep'"):
        svc.SetStatus(customerId=4, status="asleep")  # type: ignore[attr-defined]


@pytest.mark.parametrize("digest", [False, True])
def test_username_token_checked(digest: bool) -> None:
    fx = start_crm("--wsse", "alice:s3cret")
    try:
        good = _service(fx, PORTS[0], UsernameToken("alice", "s3cret", use_digest=digest))
        assert good.GetCustomerById(customerId=3).fullName == "Grace Hopper"  # type: ignore[attr-defined]
        bad = _service(fx, PORTS[0], UsernameToken("alice", "wrong", use_digest=digest))
        with pytest.raises(zeep.exceptions.Fault, match="authentication failed"):
            bad.GetCustomerById(customerId=3)  # type: ignore[attr-defined]
        with pytest.raises(zeep.exceptions.Fault, match="UsernameToken is required"):
            _service(fx, PORTS[0]).GetCustomerById(customerId=3)  # type: ignore[attr-defined]
    finally:
        fx.stop()
