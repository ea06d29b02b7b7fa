"""JWT authentication end to end: over gRPC and JSON, and a verified claim in a legacy frame."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from adaptercar.protos import compile_protos
from tests.harness import ROOT, Ledger, ledger_backend

PROTO = """syntax = "proto3";
package who.v1;
import "google/api/annotations.proto";
service Who {
  rpc WhoAmI(WhoAmIRequest) returns (WhoAmIReply) { option (google.api.http) = { get: "/v1/whoami" }; }
  rpc Hello(WhoAmIRequest) returns (WhoAmIReply) { option (google.api.http) = { get: "/v1/hello" }; }
}
message WhoAmIRequest { string name = 1; }
message WhoAmIReply { string text = 1; }
"""

MAPPING = """service: who.v1.Who
backend: ledger
methods:
  WhoAmI:
    request: "ECHO {claims.sub}"
    response:
      - match: '^OK (?P<t>.*)$'
        fields: {text: "{t}"}
  Hello:
    auth: none
    request: "ECHO hello {name}"
    response:
      - match: '^OK (?P<t>.*)$'
        fields: {text: "{t}"}
"""


def _key() -> tuple[Any, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    return key, pem


def _token(key: Any, **claims: Any) -> str:
    now = int(time.time())
    body = {"iss": "https://idp.test", "aud": "ledger", "sub": "alice", "exp": now + 300}
    body.update(claims)
    return jwt.encode(body, key, algorithm="RS256")


@pytest.fixture
def setup(ledger: Ledger, sidecars: Any, tmp_path: Path) -> Any:
    key, pem = _key()
    (tmp_path / "protos").mkdir()
    (tmp_path / "protos" / "who.proto").write_text(PROTO)
    (tmp_path / "who.yaml").write_text(MAPPING)
    (tmp_path / "pub.pem").write_text(pem)
    cfg = {
        "grpc": {}, "http": {}, "admin": {},
        "protos": [str(tmp_path / "protos")], "mappings": [str(tmp_path / "who.yaml")],
        "backends": {"ledger": ledger_backend(ledger.address)},
        "auth": {"jwt": {"issuer": "https://idp.test", "audience": "ledger",
                         "keys": f"file:{tmp_path / 'pub.pem'}", "algorithms": ["RS256"]}},
    }
    sc = sidecars(cfg, single_process=True)
    ps = compile_protos([tmp_path / "protos"])
    return sc, key, ps


def _grpc(sc: Any, ps: Any, method: str, token: str | None) -> tuple[Any, str]:
    md = ps.services()["who.v1.Who"].methods_by_name[method]
    req, resp = ps.message_class(md.input_type), ps.message_class(md.output_type)
    with grpc.insecure_channel(f"127.0.0.1:{sc.ports['grpc']}") as ch:
        stub = ch.unary_unary(f"/who.v1.Who/{method}", request_serializer=req.SerializeToString,
                              response_deserializer=resp.FromString)
        md_ = [("authorization", f"Bearer {token}")] if token else None
        try:
            return grpc.StatusCode.OK, stub(req(name="bob"), timeout=5, metadata=md_).text
        except grpc.RpcError as e:
            return e.code(), e.details()


def test_valid_token_puts_its_subject_into_the_legacy_frame(setup: Any, ledger: Ledger) -> None:
    sc, key, ps = setup
    assert _grpc(sc, ps, "WhoAmI", _token(key)) == (grpc.StatusCode.OK, "alice")
    status, body, _ = sc.http("GET", "/v1/whoami", headers={"Authorization": f"Bearer {_token(key, sub='carol')}"})
    assert (status, body) == (200, {"text": "carol"})
    assert "b'ECHO alice'" in ledger.journal_lines()


@pytest.mark.parametrize("case", ["none", "expired", "wrong-audience", "wrong-key", "garbage"])
def test_bad_or_missing_tokens_are_unauthenticated_and_reach_nothing(setup: Any, ledger: Ledger, case: str) -> None:
    sc, key, ps = setup
    other, _ = _key()
    token = {
        "none": None,
        "expired": _token(key, exp=int(time.time()) - 10),
        "wrong-audience": _token(key, aud="billing"),
        "wrong-key": _token(other),
        "garbage": "not-a-jwt",
    }[case]
    code, details = _grpc(sc, ps, "WhoAmI", token)
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert details == "missing or invalid credentials"  # no detail leaks to the caller
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    status, body, _ = sc.http("GET", "/v1/whoami", headers=headers)
    assert status == 401 and body["code"] == 16
    assert not [line for line in ledger.journal_lines() if "ECHO" in line]


def test_a_method_with_auth_none_needs_no_token(setup: Any) -> None:
    sc, _, ps = setup
    assert _grpc(sc, ps, "Hello", None) == (grpc.StatusCode.OK, "hello bob")


def test_a_caller_cannot_forge_claims_through_the_request(setup: Any, ledger: Ledger) -> None:
    sc, key, _ = setup
    status, body, _ = sc.http("GET", "/v1/whoami?name=mallory",
                              headers={"Authorization": f"Bearer {_token(key)}"})
    assert (status, body) == (200, {"text": "alice"})


def test_check_reports_unreadable_keys(tmp_path: Path) -> None:
    import subprocess
    import sys

    import yaml

    cfg = {"auth": {"jwt": {"keys": f"file:{tmp_path / 'nope.json'}"}}}
    (tmp_path / "adaptercar.yaml").write_text(yaml.safe_dump(cfg))
    r = subprocess.run([sys.executable, "-m", "adaptercar.cli", "check", "-c", str(tmp_path / "adaptercar.yaml")],
                       capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "auth.jwt.keys" in r.stderr, r.stderr
