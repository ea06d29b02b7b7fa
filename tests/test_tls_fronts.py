"""TLS and mTLS on the gRPC and JSON fronts: a real sidecar, real grpcio secure channels and
http.client over an SSLContext, certificates made at test time."""

from __future__ import annotations

import http.client
import json
import shutil
import socket
import ssl
from pathlib import Path
from typing import Any

import grpc
import pytest
import trustme

from tests.harness import GrpcClient, demo_like_config
from tests.tls_support import Certs, make_certs, write_leaf

BALANCE = "ledger.v1.Ledger.GetBalance"


def tls_config(ledger_address: str, certs: Certs, mtls: bool = False) -> dict[str, Any]:
    cfg = demo_like_config(ledger_address)
    tls = {"cert": certs.path("server.pem"), "key": certs.path("server.key")}
    if mtls:
        tls["client_ca"] = certs.path("ca.pem")
    cfg["grpc"] = {"tls": tls}
    cfg["http"] = {"tls": tls}
    return cfg


def grpc_client(sc: Any, certs: Certs, client: str | None = None) -> GrpcClient:
    """The harness's client on a secure channel (`client`: the stem of a client cert)."""
    key = cert = None
    if client is not None:
        key = Path(certs.path(f"{client}.key")).read_bytes()
        cert = Path(certs.path(f"{client}.pem")).read_bytes()
    creds = grpc.ssl_channel_credentials(Path(certs.path("ca.pem")).read_bytes(), key, cert)
    gc = GrpcClient(f"127.0.0.1:{sc.ports['grpc']}")
    gc.channel.close()
    gc.channel = grpc.secure_channel(f"localhost:{sc.ports['grpc']}", creds)
    return gc


def https(sc: Any, certs: Certs, path: str, client: str | None = None) -> tuple[int, Any]:
    ctx = ssl.create_default_context(cafile=certs.path("ca.pem"))
    if client is not None:
        ctx.load_cert_chain(certs.path(f"{client}.pem"), certs.path(f"{client}.key"))
    conn = http.client.HTTPSConnection("localhost", sc.ports["http"], context=ctx, timeout=10)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def served_subject(port: int, certs: Certs, alpn: str | None = None) -> str:
    """The common name (or trustme's OU) of the certificate a new connection is served."""
    ctx = ssl.create_default_context(cafile=certs.path("ca.pem"))
    if alpn:
        ctx.set_alpn_protocols([alpn])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname="localhost") as s:
        cert = s.getpeercert()
    return repr(cert["subject"])


def test_grpc_and_json_fronts_serve_tls(ledger: Any, sidecars: Any, tmp_path: Path) -> None:
    certs = make_certs(tmp_path / "certs")
    sc = sidecars(tls_config(ledger.address, certs))
    gc = grpc_client(sc, certs)
    try:
        got = gc.call(BALANCE, account_id="1001")
        assert got.account_id == "1001"
    finally:
        gc.close()
    status, body = https(sc, certs, "/v1/accounts/1001/balance")
    assert status == 200 and body["accountId"] == "1001", body
    # plaintext callers get no answer from a TLS front
    plain = sc.grpc_client()
    with pytest.raises(grpc.RpcError) as e:
        plain.call(BALANCE, account_id="1001", timeout=5)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    plain.close()
    with pytest.raises((OSError, http.client.HTTPException)):
        conn = http.client.HTTPConnection("127.0.0.1", sc.ports["http"], timeout=5)
        conn.request("GET", "/v1/accounts/1001/balance")
        resp = conn.getresponse()
        resp.read()
        raise AssertionError(f"plaintext got an HTTP answer: {resp.status}")


def test_mtls_rejects_callers_without_a_trusted_certificate(
        ledger: Any, sidecars: Any, tmp_path: Path) -> None:
    certs = make_certs(tmp_path / "certs")
    sc = sidecars(tls_config(ledger.address, certs, mtls=True))
    for client in (None, "other-client"):  # no certificate; one from a CA not trusted
        gc = grpc_client(sc, certs, client)
        with pytest.raises(grpc.RpcError) as e:
            gc.call(BALANCE, account_id="1001", timeout=5)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE, client
        gc.close()
        with pytest.raises((ssl.SSLError, OSError)):
            https(sc, certs, "/v1/accounts/1001/balance", client)
    gc = grpc_client(sc, certs, "client")
    try:
        assert gc.call(BALANCE, account_id="1001").account_id == "1001"
    finally:
        gc.close()
    status, body = https(sc, certs, "/v1/accounts/1001/balance", "client")
    assert status == 200 and body["accountId"] == "1001"


def test_reload_serves_renewed_certificates(ledger: Any, sidecars: Any, tmp_path: Path) -> None:
    certs = make_certs(tmp_path / "certs")
    sc = sidecars(tls_config(ledger.address, certs))
    before = served_subject(sc.ports["http"], certs)
    assert served_subject(sc.ports["grpc"], certs, "h2") == before
    # renew in place (same paths, new files), as cert-manager or a ConfigMap update does
    renewed = certs.ca.issue_cert("localhost", "127.0.0.1", common_name="renewed")
    staging = tmp_path / "staging"
    staging.mkdir()
    write_leaf(renewed, staging, "server")
    for name in ("server.pem", "server.key"):
        shutil.copy(staging / name, certs.folder / name)
    status, body = sc.admin("/reload", method="POST")
    assert status == 200, body
    for port, alpn in ((sc.ports["http"], None), (sc.ports["grpc"], "h2")):
        subject = served_subject(port, certs, alpn)
        assert "renewed" in subject and subject != before
    gc = grpc_client(sc, certs)
    try:
        assert gc.call(BALANCE, account_id="1001").account_id == "1001"
    finally:
        gc.close()


def test_a_reload_with_a_broken_key_keeps_the_old_certificate(
        ledger: Any, sidecars: Any, tmp_path: Path) -> None:
    certs = make_certs(tmp_path / "certs")
    sc = sidecars(tls_config(ledger.address, certs), single_process=True)
    before = served_subject(sc.ports["http"], certs)
    other = trustme.CA().issue_cert("localhost")  # a key that does not match the certificate
    other.private_key_pem.write_to_path(certs.path("server.key"))
    status, body = sc.admin("/reload", method="POST")
    assert status != 200 or body.get("ok") is False, body
    assert "is not the key of the certificate" in json.dumps(body)
    assert served_subject(sc.ports["http"], certs) == before
    status, body = https(sc, certs, "/v1/accounts/1001/balance")
    assert status == 200


def _tree(pid: int) -> list[int]:
    out = [pid]
    for task in Path(f"/proc/{pid}/task").iterdir():
        children = (task / "children").read_text().split()
        for child in children:
            out += _tree(int(child))
    return out


def _maps_openssl(pid: int) -> bool:
    """True when the process has pyOpenSSL's libraries (cryptography's bindings) mapped."""
    try:
        return "cryptography" in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


def test_without_tls_no_process_loads_pyopenssl(ledger: Any, sidecars: Any) -> None:
    """pyOpenSSL is installed (TLS support), yet costs no memory when TLS is off: Twisted
    would import it in every process; the supervisor and workers forbid it (~12 MiB each)."""
    sc = sidecars(demo_like_config(ledger.address))
    assert sc.http("GET", "/v1/accounts/1001/balance")[0] == 200
    pids = _tree(sc.proc.pid)
    assert len(pids) >= 3  # the supervisor and its two workers
    assert [pid for pid in pids if _maps_openssl(pid)] == []


def test_with_tls_only_the_tls_front_worker_loads_pyopenssl(
        ledger: Any, sidecars: Any, tmp_path: Path) -> None:
    import subprocess
    import sys

    certs = make_certs(tmp_path / "certs")
    cfg = tls_config(ledger.address, certs)
    del cfg["grpc"]["tls"]
    sc = sidecars(cfg)
    assert https(sc, certs, "/v1/accounts/1001/balance")[0] == 200
    roles = {}
    for pid in _tree(sc.proc.pid)[1:]:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        if b"--role" in argv:
            roles[argv[argv.index(b"--role") + 1].decode()] = pid
    probe = ("import sys; sys.modules['OpenSSL'] = None; "
             "from adaptercar.tls import forbid_openssl; forbid_openssl(); "
             "import twisted.internet.endpoints, twisted.web.client; print('ok')")
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          check=True).stdout.strip() == "ok"  # Twisted works without it
    environ = Path(f"/proc/{roles['grpc']}/environ").read_bytes().split(b"\0")
    assert b"ADAPTERCAR_OPENSSL=0" in environ
    environ = Path(f"/proc/{roles['http']}/environ").read_bytes().split(b"\0")
    assert b"ADAPTERCAR_OPENSSL=1" in environ
    assert _maps_openssl(roles["http"])
