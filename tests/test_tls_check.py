"""`adaptercar check` on TLS sections: paths relative to the config folder, and each unusable
certificate or key file reported as FILE:LINE with what is wrong."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.harness import ROOT
from tests.test_check import check
from tests.tls_support import Certs, make_certs

WSDL = ROOT / "legacy_fixtures" / "crm" / "crm.wsdl"


def project(tmp_path: Path, text: str) -> tuple[Path, Certs]:
    certs = make_certs(tmp_path / "certs")
    shutil.copy(WSDL, tmp_path / "crm.wsdl")
    (tmp_path / "adaptercar.yaml").write_text(text)
    return tmp_path / "adaptercar.yaml", certs


GOOD = """\
grpc:
  listen: 127.0.0.1:0
  tls: {cert: certs/server.pem, key: certs/server.key, client_ca: certs/ca.pem}
http:
  listen: 127.0.0.1:0
  tls: {cert: certs/server.pem, key: certs/server.key}
backends:
  crm:
    soap:
      wsdl: crm.wsdl
      endpoint: https://crm.internal:8443/crm
      tls: {ca: certs/ca.pem, cert: certs/client.pem, key: certs/client.key}
ambassador:
  - name: pay
    listen: 127.0.0.1:0
    upstream:
      static: [pay.internal:443]
      tls: {ca: certs/ca.pem, server_name: pay.internal, verify: false}
"""


def test_relative_tls_paths_pass_and_verify_false_is_noted(tmp_path: Path) -> None:
    project(tmp_path, GOOD)
    r = check("adaptercar.yaml", tmp_path)
    assert r.code == 0, r.text
    assert r.out == [
        "adaptercar.yaml:18: ambassador[0].upstream.tls.verify: note: certificates of this "
        "upstream are not checked",
        "adaptercar.yaml: OK (0 methods mapped, 1 backends)",
    ]


@pytest.mark.parametrize(("edit", "expected"), [
    (("certs/server.pem, key", "certs/missing.pem, key"),
     "adaptercar.yaml:3: grpc.tls.cert: cannot read {dir}/certs/missing.pem: "
     "No such file or directory"),
    (("{cert: certs/server.pem, key: certs/server.key}",
      "{cert: certs/server.key, key: certs/server.key}"),
     "adaptercar.yaml:6: http.tls.cert: {dir}/certs/server.key holds no PEM certificate "
     "(expected -----BEGIN CERTIFICATE-----)"),
    (("key: certs/server.key, client_ca", "key: certs/client.key, client_ca"),
     "adaptercar.yaml:3: grpc.tls.key: {dir}/certs/client.key is not the key of the "
     "certificate in {dir}/certs/server.pem"),
    (("client_ca: certs/ca.pem", "client_ca: certs"),
     "adaptercar.yaml:3: grpc.tls.client_ca: cannot read {dir}/certs: Is a directory"),
    (("tls: {ca: certs/ca.pem, cert", "tls: {ca: certs/nope.pem, cert"),
     "adaptercar.yaml:12: backends.crm.soap.tls.ca: cannot read {dir}/certs/nope.pem: "
     "No such file or directory"),
    (("https://crm.internal", "http://crm.internal"),
     "adaptercar.yaml:12: backends.crm.soap.tls: 'tls' needs an https:// endpoint, the "
     "endpoint is http://crm.internal:8443/crm"),
    (("{ca: certs/ca.pem, server_name", "{cert: certs/client.pem, server_name"),
     "adaptercar.yaml:18: ambassador[0].upstream.tls: 'cert' and 'key' go together "
     "(the client certificate and its key)"),
    (("    upstream:\n", "    protocol: tcp\n    upstream:\n"),
     "adaptercar.yaml:14: ambassador[0]: 'upstream.tls' needs protocol: http (tcp routes "
     "pass bytes through)"),
])
def test_unusable_tls_files_are_reported_at_their_line(
        tmp_path: Path, edit: tuple[str, str], expected: str) -> None:
    old, new = edit
    assert old in GOOD
    project(tmp_path, GOOD.replace(old, new, 1))
    r = check("adaptercar.yaml", tmp_path)
    assert r.code == 1, r.text
    assert r.err[0] == expected.format(dir=tmp_path), r.text


def test_an_encrypted_key_is_refused_clearly(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization

    _, certs = project(tmp_path, GOOD)
    key = serialization.load_pem_private_key(Path(certs.path("server.key")).read_bytes(), None)
    Path(certs.path("server.key")).write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret")))
    r = check("adaptercar.yaml", tmp_path)
    assert r.code == 1
    assert r.err[0].startswith("adaptercar.yaml:3: grpc.tls.key: ")
    assert "expected an unencrypted PEM key" in r.err[0]
