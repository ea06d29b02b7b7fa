"""JWT authentication of callers, shared by both fronts.

Keys are loaded once per config load (a PEM file, or a JWKS file whose keys are picked by
`kid`), and tokens are checked with pyjwt against the configured algorithms, issuer,
audience, `exp`/`nbf` with leeway. Every failure is the same UNAUTHENTICATED answer to the
caller — why it failed goes to the log, never to a possibly hostile client.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt

from ..mapping.errors import CallError, Code

UNAUTHENTICATED = "missing or invalid credentials"


class AuthConfigError(ValueError):
    """The key material cannot be loaded: a `check`/start-up error, not a call error."""


@dataclass
class Verifier:
    algorithms: tuple[str, ...]
    issuer: str | None
    audience: str | tuple[str, ...] | None
    leeway: float
    secret: str | None = None
    keys_by_kid: dict[str, Any] = field(default_factory=dict)
    single_key: Any = None
    default: str = "required"
    _options: dict[str, Any] = field(init=False, repr=False)
    _algorithms: list[str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._options = {"require": ["exp"], "verify_aud": self.audience is not None}
        self._algorithms = list(self.algorithms)

    def verify(self, authorization: str | None) -> dict[str, Any]:
        """Claims of a valid bearer token; raises CallError(UNAUTHENTICATED, reason in
        `.__cause__`-free message) otherwise. `reason` is kept for the log."""
        if not authorization:
            raise _denied("no bearer token")
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise _denied("authorization is not a bearer token")
        token = token.strip()
        try:
            key = self._key_for(token)
            claims: dict[str, Any] = jwt.decode(
                token, key=key, algorithms=self._algorithms, issuer=self.issuer,
                audience=self.audience, leeway=self.leeway, options=self._options,  # type: ignore[arg-type]
            )
        except (jwt.PyJWTError, TypeError, ValueError) as e:
            # pyjwt raises TypeError when the token's alg does not fit the key's type
            raise _denied(f"{type(e).__name__}: {e}") from None
        return claims

    def _key_for(self, token: str) -> Any:
        if self.secret is not None:
            return self.secret
        if self.single_key is not None:
            return self.single_key
        header = jwt.get_unverified_header(token)
        kid = header.get("kid")
        if kid is None and len(self.keys_by_kid) == 1:
            return next(iter(self.keys_by_kid.values()))
        key = self.keys_by_kid.get(str(kid))
        if key is None:
            raise jwt.InvalidKeyError(f"no key with kid {kid!r}")
        return key


def _denied(reason: str) -> CallError:
    err = CallError(Code.UNAUTHENTICATED, UNAUTHENTICATED)
    err.reason = reason  # type: ignore[attr-defined]  # for the access log only
    return err


def load_verifier(auth_cfg: Any) -> Verifier:
    """Build the verifier from `auth:`; raises AuthConfigError with a readable message."""
    j = auth_cfg.jwt
    v = Verifier(tuple(j.algorithms), j.issuer, j.audience, float(j.leeway), default=auth_cfg.default)
    if j.secret is not None:
        v.secret = j.secret
        return v
    if not isinstance(j.keys, Path):
        raise AuthConfigError("JWKS over https is not supported yet: use keys: file:PATH")
    try:
        text = j.keys.read_text()
    except OSError as e:
        raise AuthConfigError(f"cannot read {j.keys}: {e.strerror}") from None
    if "-----BEGIN" in text:
        # a PEM public key, parsed once: given the text, pyjwt parses it again on every call
        from cryptography.hazmat.primitives.serialization import load_pem_public_key

        try:
            v.single_key = load_pem_public_key(text.encode())
        except ValueError:
            v.single_key = text  # not one cryptography reads as a public key: pyjwt decides
        return v
    try:
        jwks = json.loads(text)
        for k in jwks["keys"]:
            key = jwt.PyJWK(k).key
            v.keys_by_kid[str(k.get("kid", len(v.keys_by_kid)))] = key
    except (ValueError, KeyError, TypeError, jwt.PyJWTError) as e:
        raise AuthConfigError(f"{j.keys} is neither a PEM public key nor a JWKS: {e}") from None
    if not v.keys_by_kid:
        raise AuthConfigError(f"{j.keys}: the JWKS holds no keys")
    return v
