"""JWT verification of callers: keys from PEM, JWKS or a shared secret; one answer for every failure."""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from adaptercar.fronts.auth import UNAUTHENTICATED, AuthConfigError, load_verifier
from adaptercar.mapping.errors import CallError, Code


def rsa_pair() -> tuple[Any, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    return key, pem


def cfg(**jwt_fields: Any) -> Any:
    base = {"issuer": "https://idp.example", "audience": "ledger", "keys": None, "secret": None,
            "algorithms": ("RS256", "ES256"), "leeway": 0.0}
    base.update(jwt_fields)
    return SimpleNamespace(jwt=SimpleNamespace(**base), default="required")


def token(key: Any, alg: str = "RS256", kid: str | None = None, **claims: Any) -> str:
    now = int(time.time())
    body = {"iss": "https://idp.example", "aud": "ledger", "sub": "alice", "iat": now, "exp": now + 60}
    body.update(claims)
    return jwt.encode(body, key, algorithm=alg, headers={"kid": kid} if kid else None)


def denied(v: Any, header: str | None) -> str:
    with pytest.raises(CallError) as e:
        v.verify(header)
    assert e.value.code is Code.UNAUTHENTICATED
    assert e.value.message == UNAUTHENTICATED  # never why: that is for the log
    return str(e.value.reason)  # type: ignore[attr-defined]


def test_pem_key_accepts_a_good_token_and_returns_its_claims(tmp_path: Path) -> None:
    key, pem = rsa_pair()
    (tmp_path / "pub.pem").write_text(pem)
    v = load_verifier(cfg(keys=tmp_path / "pub.pem"))
    claims = v.verify("Bearer " + token(key))
    assert claims["sub"] == "alice"


def test_every_kind_of_bad_token_gets_the_same_answer(tmp_path: Path) -> None:
    key, pem = rsa_pair()
    other, _ = rsa_pair()
    (tmp_path / "pub.pem").write_text(pem)
    v = load_verifier(cfg(keys=tmp_path / "pub.pem"))
    assert "no bearer token" in denied(v, None)
    assert "not a bearer token" in denied(v, "Basic dXNlcjpwYXNz")
    assert "Expired" in denied(v, "Bearer " + token(key, exp=int(time.time()) - 5))
    assert "Audience" in denied(v, "Bearer " + token(key, aud="billing"))
    assert "Issuer" in denied(v, "Bearer " + token(key, iss="https://evil.example"))
    assert "Signature" in denied(v, "Bearer " + token(other))
    assert "Immature" in denied(v, "Bearer " + token(key, nbf=int(time.time()) + 300))
    assert denied(v, "Bearer not.a.jwt")
    none_alg = jwt.encode({"sub": "mallory", "exp": int(time.time()) + 60}, None, algorithm="none")
    assert denied(v, "Bearer " + none_alg)


def test_leeway_forgives_small_clock_skew(tmp_path: Path) -> None:
    key, pem = rsa_pair()
    (tmp_path / "pub.pem").write_text(pem)
    v = load_verifier(cfg(keys=tmp_path / "pub.pem", leeway=30.0))
    assert v.verify("Bearer " + token(key, exp=int(time.time()) - 5))["sub"] == "alice"


def test_jwks_picks_the_key_by_kid(tmp_path: Path) -> None:
    rkey, _ = rsa_pair()
    ekey = ec.generate_private_key(ec.SECP256R1())
    jwks = {"keys": [
        {**json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(rkey.public_key())), "kid": "r1"},
        {**json.loads(jwt.algorithms.ECAlgorithm.to_jwk(ekey.public_key())), "kid": "e1"},
    ]}
    (tmp_path / "jwks.json").write_text(json.dumps(jwks))
    v = load_verifier(cfg(keys=tmp_path / "jwks.json"))
    assert v.verify("Bearer " + token(rkey, kid="r1"))["sub"] == "alice"
    assert v.verify("Bearer " + token(ekey, alg="ES256", kid="e1"))["sub"] == "alice"
    assert "kid" in denied(v, "Bearer " + token(rkey, kid="e9"))
    assert denied(v, "Bearer " + token(rkey, kid="e1"))  # right kid, wrong key type


def test_shared_secret_hs256() -> None:
    v = load_verifier(cfg(secret="s3cret-s3cret-s3cret-s3cret-s3cret", algorithms=("HS256",)))
    assert v.verify("Bearer " + token("s3cret-s3cret-s3cret-s3cret-s3cret", alg="HS256"))["sub"] == "alice"
    assert denied(v, "Bearer " + token("another-secret-another-secret-xx", alg="HS256"))


def test_unreadable_or_malformed_keys_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(AuthConfigError, match="cannot read"):
        load_verifier(cfg(keys=tmp_path / "missing.json"))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(AuthConfigError, match="neither a PEM public key nor a JWKS"):
        load_verifier(cfg(keys=tmp_path / "bad.json"))
    (tmp_path / "empty.json").write_text('{"keys": []}')
    with pytest.raises(AuthConfigError, match="holds no keys"):
        load_verifier(cfg(keys=tmp_path / "empty.json"))
