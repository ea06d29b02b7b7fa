"""TLS: load and check certificate files, and turn them into contexts for the fronts and upstreams.

Two halves, so that nothing TLS costs memory when TLS is off (pyOpenSSL alone is ~11 MiB):
- loading (`load_server`, `load_client`) reads the PEM files and checks them with `cryptography`
  (present, readable, PEM, key matching its certificate). `adaptercar check` and every (re)load
  run it; each failure names the config key to blame, so it is reported as FILE:LINE.
- the context builders (`grpc_server_credentials`, `ReloadableServerTls`, `client_policy`)
  import grpc's or Twisted's TLS only when called, that is only when a `tls:` section exists.

Certificates are read at every config load, so a reload (SIGHUP, POST /reload) with renewed
files serves the new certificate on the next handshake: the fronts swap their context in place.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twisted.internet.interfaces import (
    IOpenSSLClientConnectionCreator,
    IOpenSSLServerConnectionCreator,
)
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer


class TlsFileError(ValueError):
    """A certificate or key file that cannot be used; `key` is the config key to blame."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


@dataclass(frozen=True)
class ServerMaterial:
    """A front's certificate chain and key (PEM), and the CAs that sign client certificates
    (mTLS: a client certificate is then required)."""

    cert: bytes
    key: bytes
    client_ca: bytes | None


@dataclass(frozen=True)
class ClientMaterial:
    """How to connect to a TLS upstream. `ca` None: the system's trusted CAs."""

    ca: bytes | None
    cert: bytes | None
    key: bytes | None
    server_name: str | None
    verify: bool


# --- which processes load pyOpenSSL ----------------------------------------------------------

OPENSSL_ENV = "ADAPTERCAR_OPENSSL"
"""Set to "0" by the supervisor for a worker that needs no pyOpenSSL (see `forbid_openssl`)."""


def openssl_roles(loaded: Any) -> set[str]:
    """The worker roles that need pyOpenSSL under this (problem-free) load: the JSON front with
    `http.tls`, the ambassador with an https upstream. The gRPC front's own TLS is grpc's
    (BoringSSL); an https SOAP backend needs none either: workers run the asyncio reactor, where
    `backends.http_pool` speaks TLS with Python's `ssl` (pyOpenSSL only on another reactor, which
    no worker runs)."""
    cfg = loaded.config
    roles: set[str] = set()
    if cfg.http is not None and cfg.http.tls is not None:
        roles.add("http")
    if any(route.upstream.tls is not None for route in cfg.ambassador):
        roles.add("ambassador")
    return roles


def forbid_openssl() -> None:
    """Make `import OpenSSL` fail in this process, as if pyOpenSSL were not installed.

    Twisted imports pyOpenSSL whenever it is installed (`twisted.internet.endpoints`,
    `twisted.web.client`), ~12 MiB per process; its TLS support is optional and it falls back
    cleanly. The supervisor and workers that need no TLS call this first, so TLS costs memory
    only where it is configured. A reload that changes a role's need restarts its worker.
    """
    import sys

    if sys.modules.get("OpenSSL") is None:
        sys.modules["OpenSSL"] = None  # type: ignore[assignment]


# --- loading and checking (cryptography only) ---------------------------------------------

def _read(key: str, path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise TlsFileError(key, f"cannot read {path}: {e.strerror or e}") from None


def _certs(key: str, path: Path) -> tuple[bytes, list[Any]]:
    from cryptography import x509

    data = _read(key, path)
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        certs = []
    if not certs:
        raise TlsFileError(key, f"{path} holds no PEM certificate "
                                "(expected -----BEGIN CERTIFICATE-----)")
    return data, certs


def _key(key: str, path: Path) -> tuple[bytes, Any]:
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    data = _read(key, path)
    try:
        return data, load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as e:
        raise TlsFileError(key, f"{path} holds no usable private key ({e}; expected an "
                                "unencrypted PEM key)") from None


def _public(obj: Any) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    der: bytes = obj.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return der


def _pair(cert_path: Path, key_path: Path) -> tuple[bytes, bytes]:
    cert_pem, certs = _certs("cert", cert_path)
    key_pem, private = _key("key", key_path)
    if _public(certs[0]) != _public(private):
        raise TlsFileError("key", f"{key_path} is not the key of the certificate in {cert_path}")
    return cert_pem, key_pem


def load_server(cfg: Any) -> ServerMaterial:
    """`cfg`: a schema `ServerTls`. Raises TlsFileError."""
    cert, key = _pair(cfg.cert, cfg.key)
    ca = _certs("client_ca", cfg.client_ca)[0] if cfg.client_ca is not None else None
    return ServerMaterial(cert, key, ca)


def load_client(cfg: Any) -> ClientMaterial:
    """`cfg`: a schema `ClientTls`. Raises TlsFileError."""
    ca = _certs("ca", cfg.ca)[0] if cfg.ca is not None else None
    cert = key = None
    if cfg.cert is not None and cfg.key is not None:
        cert, key = _pair(cfg.cert, cfg.key)
    return ClientMaterial(ca, cert, key, cfg.server_name, cfg.verify)


# --- gRPC front ------------------------------------------------------------------------------

class GrpcServerTls:
    """grpc's dynamic credentials: grpc asks `_fetch` at each new handshake whether the
    certificate changed; `update` (a reload) hands it the new one. Whether client certificates
    are required is fixed for the listener's life (a change restarts the gRPC worker)."""

    def __init__(self, material: ServerMaterial) -> None:
        import grpc

        self._pending: Any = None
        self.credentials = grpc.dynamic_ssl_server_credentials(
            self._config(material), self._fetch,
            require_client_authentication=material.client_ca is not None)
        self.material = material

    @staticmethod
    def _config(material: ServerMaterial) -> Any:
        import grpc

        return grpc.ssl_server_certificate_configuration(
            [(material.key, material.cert)], root_certificates=material.client_ca)

    def _fetch(self) -> Any:
        # called on a grpc core thread; one attribute swap, no lock needed
        pending, self._pending = self._pending, None
        return pending

    def update(self, material: ServerMaterial) -> None:
        if material != self.material:
            self.material = material
            self._pending = self._config(material)


# --- JSON front (Twisted) --------------------------------------------------------------------

def _server_options(material: ServerMaterial) -> Any:
    from OpenSSL.crypto import FILETYPE_PEM
    from twisted.internet import ssl

    chain = [ssl.Certificate.loadPEM(pem).original for pem in _split_pem(material.cert)]
    ca = [ssl.Certificate.loadPEM(pem).original for pem in _split_pem(material.client_ca or b"")]
    key = ssl.KeyPair.load(material.key, FILETYPE_PEM).original
    return ssl.CertificateOptions(
        privateKey=key, certificate=chain[0], extraCertChain=chain[1:],
        verify=bool(ca), caCerts=ca or None, requireCertificate=bool(ca),
    )


def _split_pem(data: bytes) -> list[bytes]:
    end = b"-----END CERTIFICATE-----"
    return [part.strip() + b"\n" + end + b"\n" for part in data.split(end)[:-1]]


@implementer(IOpenSSLServerConnectionCreator)
class ReloadableServerTls:
    """Twisted's server connection creator, whose certificate a reload can replace: each new
    connection takes the options current at its accept."""

    def __init__(self, material: ServerMaterial) -> None:
        self.material = material
        self.options = _server_options(material)

    def update(self, material: ServerMaterial) -> None:
        if material != self.material:
            self.options = _server_options(material)
            self.material = material

    def serverConnectionForTLS(self, protocol: Any) -> Any:  # noqa: N802 - twisted's name
        return self.options.serverConnectionForTLS(protocol)


def server_tls_factory(site: Any, creator: ReloadableServerTls) -> Any:
    """The JSON front's site behind TLS, for the worker to listen with."""
    from twisted.protocols.tls import TLSMemoryBIOFactory

    return TLSMemoryBIOFactory(creator, False, site)  # type: ignore[arg-type]  # zope interface


# --- upstreams (SOAP, ambassador HTTP routes) -------------------------------------------------

@implementer(IOpenSSLClientConnectionCreator)
class _NoVerify:
    """`verify: false`: encrypt, send SNI, check nothing (logged as a warning at start)."""

    def __init__(self, options: Any, server_name: str) -> None:
        self.options = options
        self.server_name = server_name.encode("idna")

    def clientConnectionForTLS(self, protocol: Any) -> Any:  # noqa: N802 - twisted's name
        conn = self.options.clientConnectionForTLS(protocol)
        conn.set_tlsext_host_name(self.server_name)
        return conn


@implementer(IPolicyForHTTPS)
class ClientPolicy:
    """A `twisted.web.client.Agent` HTTPS policy from one `tls:` section: trust `ca` (or the
    system's CAs), present the client certificate if any, send `server_name` (default: the URL's
    host) as SNI and check the server's certificate against it."""

    def __init__(self, material: ClientMaterial) -> None:
        self.material = material
        self._creators: dict[str, Any] = {}

    def creatorForNetloc(self, hostname: bytes, port: int) -> Any:  # noqa: N802 - twisted's name
        name = self.material.server_name or hostname.decode("ascii", "replace")
        creator = self._creators.get(name)
        if creator is None:
            creator = self._creators[name] = self._creator(name)
        return creator

    def _creator(self, name: str) -> Any:
        from twisted.internet import ssl

        m = self.material
        client_cert = None
        if m.cert is not None and m.key is not None:
            client_cert = ssl.PrivateCertificate.loadPEM(_split_pem(m.cert)[0] + m.key)
        if not m.verify:
            kwargs: dict[str, Any] = {"verify": False}
            if client_cert is not None:
                kwargs.update(privateKey=client_cert.privateKey.original,
                              certificate=client_cert.original)
            return _NoVerify(ssl.CertificateOptions(**kwargs), name)
        trust: Any = ssl.platformTrust()
        if m.ca is not None:
            trust = ssl.trustRootFromCertificates(
                [ssl.Certificate.loadPEM(pem) for pem in _split_pem(m.ca)])
        return ssl.optionsForClientTLS(name, trustRoot=trust, clientCertificate=client_cert)


def client_policy(material: ClientMaterial, where: str) -> ClientPolicy:
    """The Agent policy for one upstream; `where` names it in the warning for `verify: false`."""
    if not material.verify:
        from .logs import log

        log.warning("tls_verify_disabled", upstream=where)
    return ClientPolicy(material)


def describe_failure(reason: Any) -> str | None:
    """A one-line account of a TLS handshake failure (OpenSSL's error list), or None."""
    try:
        from OpenSSL import SSL
    except ImportError:  # pragma: no cover - TLS extras missing: nothing can be a TLS error
        return None
    value = getattr(reason, "value", reason)
    if isinstance(value, SSL.Error):
        parts = [str(item[-1]) for item in (value.args[0] if value.args else [])
                 if isinstance(item, tuple) and item]
        return "TLS handshake failed: " + ("; ".join(parts) or str(value))
    return None
