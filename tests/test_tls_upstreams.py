"""TLS towards upstreams: a SOAP backend over https and an ambassador route to an https upstream,
each behind a real TLS server (tests.tls_support.TlsRelay) in front of the plaintext fixture."""

from __future__ import annotations

import http.client
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from legacy_fixtures.upstreams.http_upstream import HttpUpstream
from tests.harness import free_port
from tests.test_soap_backend import call, config
from tests.test_soap_fixture import Crm, start_crm
from tests.tls_support import Certs, TlsRelay, make_certs


@pytest.fixture(scope="module")
def crm() -> Iterator[Crm]:
    fx = start_crm()
    yield fx
    fx.stop()


@pytest.fixture
def certs(tmp_path: Path) -> Certs:
    return make_certs(tmp_path / "certs", "crm.internal", "api.internal")


def relay(target: str, certs: Certs, client_ca: str | None = None) -> TlsRelay:
    host, _, port = target.rpartition(":")
    return TlsRelay((host, int(port)), certs.path("server.pem"), certs.path("server.key"),
                    client_ca)


def crm_target(crm: Crm) -> str:
    return crm.url.split("//", 1)[1].split("/", 1)[0]


def test_soap_over_https_verifies_the_server(crm: Crm, certs: Certs, sidecars: Any) -> None:
    tls = relay(crm_target(crm), certs)
    try:
        endpoint = f"https://127.0.0.1:{tls.port}/crm"
        sc = sidecars(config(endpoint, tls={"ca": certs.path("ca.pem"),
                                            "server_name": "crm.internal"}), single_process=True)
        got = call(sc, "GetCustomer", id=1)
        assert (got.id, got.name) == (1, "Ada Lovelace")
        assert tls.sni == ["crm.internal"]
        # trusting another CA: the server's certificate is refused, the call is UNAVAILABLE
        wrong = sidecars(config(endpoint, tls={"ca": certs.path("other-ca.pem"),
                                               "server_name": "crm.internal"}), single_process=True)
        with pytest.raises(grpc.RpcError) as e:
            call(wrong, "GetCustomer", id=1)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "certificate verify failed" in (e.value.details() or ""), e.value.details()
        # the right CA, the wrong name: refused as well
        misnamed = sidecars(config(endpoint, tls={"ca": certs.path("ca.pem"),
                                                  "server_name": "elsewhere.internal"}),
                            single_process=True)
        with pytest.raises(grpc.RpcError) as e:
            call(misnamed, "GetCustomer", id=1)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        tls.stop()


def test_soap_client_certificate_and_verify_false(crm: Crm, certs: Certs, sidecars: Any) -> None:
    tls = relay(crm_target(crm), certs, client_ca=certs.path("ca.pem"))
    try:
        endpoint = f"https://127.0.0.1:{tls.port}/crm"
        sc = sidecars(config(endpoint, tls={"verify": False, "cert": certs.path("client.pem"),
                                            "key": certs.path("client.key")}),
                      single_process=True)
        assert call(sc, "GetCustomer", id=3).name == "Grace Hopper"
        assert tls.client_subjects, "the client certificate was presented"
        warnings = [r for r in sc.log_records() if r.get("event") == "tls_verify_disabled"]
        assert warnings and warnings[0]["level"] == "warning"
        assert warnings[0]["upstream"] == "backend crm"
        # without a client certificate the relay refuses the handshake
        anon = sidecars(config(endpoint, tls={"verify": False}), single_process=True)
        with pytest.raises(grpc.RpcError) as e:
            call(anon, "GetCustomer", id=3)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        tls.stop()


def test_ambassador_route_to_an_https_upstream_with_sni(certs: Certs, sidecars: Any) -> None:
    up = HttpUpstream("secure").start()
    tls = relay(up.address, certs, client_ca=certs.path("ca.pem"))
    try:
        port = free_port()
        route = {"name": "api", "listen": f"127.0.0.1:{port}", "protocol": "http",
                 "upstream": {"static": [tls.address],
                              "tls": {"ca": certs.path("ca.pem"), "server_name": "api.internal",
                                      "cert": certs.path("client.pem"),
                                      "key": certs.path("client.key")}},
                 "timeout": "3s", "retry": {"attempts": 1}}
        sidecars({"admin": {}, "ambassador": [route]}, single_process=True)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            conn.request("GET", "/item/1")
            resp = conn.getresponse()
            assert (resp.status, resp.read()) == (200, b"secure")
        finally:
            conn.close()
        assert tls.sni and set(tls.sni) == {"api.internal"}
        assert tls.client_subjects
        assert up.received[0].path == "/item/1"
    finally:
        tls.stop()
        up.stop()


def test_ambassador_upstream_with_an_untrusted_certificate_is_unavailable(
        certs: Certs, sidecars: Any) -> None:
    up = HttpUpstream("secure").start()
    tls = relay(up.address, certs)
    try:
        port = free_port()
        route = {"name": "api", "listen": f"127.0.0.1:{port}", "protocol": "http",
                 "upstream": {"static": [tls.address],
                              "tls": {"ca": certs.path("other-ca.pem"),
                                      "server_name": "api.internal"}},
                 "timeout": "3s", "retry": {"attempts": 2, "backoff": {"base": "10ms"}}}
        sidecars({"admin": {}, "ambassador": [route]}, single_process=True)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            conn.request("GET", "/item/1")
            resp = conn.getresponse()
            resp.read()
            assert resp.status == 503
            assert resp.getheader("x-adaptercar-reason") == "upstream-unavailable"
        finally:
            conn.close()
        assert up.received == []  # nothing reached the upstream through the refused handshake
    finally:
        tls.stop()
        up.stop()


def test_https_soap_workers_do_not_load_pyopenssl(crm: Crm, certs: Certs, sidecars: Any) -> None:
    """The SOAP backend's client speaks TLS with Python's `ssl` on the workers' asyncio reactor:
    the gRPC and JSON workers serve an https SOAP backend with pyOpenSSL forbidden (~11 MiB
    each saved), and calls over both fronts still verify the server's certificate."""
    from tests.test_tls_fronts import _tree

    tls = relay(crm_target(crm), certs)
    try:
        endpoint = f"https://127.0.0.1:{tls.port}/crm"
        sc = sidecars(config(endpoint, tls={"ca": certs.path("ca.pem"),
                                            "server_name": "crm.internal"}))
        assert call(sc, "GetCustomer", id=1).name == "Ada Lovelace"
        status, body, _ = sc.http("GET", "/v1/customers/3")
        assert (status, body["name"]) == (200, "Grace Hopper")
        assert tls.sni and set(tls.sni) == {"crm.internal"}
        roles = {}
        for pid in _tree(sc.proc.pid)[1:]:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if b"--role" in argv:
                roles[argv[argv.index(b"--role") + 1].decode()] = pid
        assert {"grpc", "http"} <= set(roles)
        for role in ("grpc", "http"):
            environ = Path(f"/proc/{roles[role]}/environ").read_bytes().split(b"\0")
            assert b"ADAPTERCAR_OPENSSL=0" in environ, role
    finally:
        tls.stop()


def test_openssl_roles_https_soap_needs_none(certs: Certs, tmp_path: Path) -> None:
    """The rule the supervisor applies: pyOpenSSL for the JSON front's `http.tls` and for an
    ambassador route's `upstream.tls`, never for an https SOAP backend (Python's `ssl`)."""
    import yaml

    from adaptercar.compile import load_all
    from adaptercar.tls import openssl_roles

    def roles(cfg: dict[str, Any]) -> set[str]:
        path = tmp_path / "adaptercar.yaml"
        path.write_text(yaml.safe_dump(cfg))
        loaded = load_all(path, environ={})
        assert loaded.errors == []
        return openssl_roles(loaded)

    tls = {"ca": certs.path("ca.pem"), "server_name": "crm.internal"}
    soap = config("https://127.0.0.1:9/crm", tls=tls)
    for role in ("grpc", "http", "admin"):
        soap[role] = {"listen": f"127.0.0.1:{free_port()}"}
    assert roles(soap) == set()
    soap["http"]["tls"] = {"cert": certs.path("server.pem"), "key": certs.path("server.key")}
    assert roles(soap) == {"http"}
    route = {"name": "api", "listen": f"127.0.0.1:{free_port()}", "protocol": "http",
             "upstream": {"static": ["127.0.0.1:9"], "tls": tls}}
    assert roles({"admin": {}, "ambassador": [route]}) == {"ambassador"}
