"""Test certificates (made with trustme at test time) and a small TLS-terminating relay.

The relay stands in front of a plaintext fixture (crm, an HTTP upstream) so that the sidecar's
upstream TLS meets a real, independent TLS server (Python's ssl module, not Twisted's): it
records the SNI names it was sent and can require client certificates.
"""

from __future__ import annotations

import select
import socket
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path

import trustme


@dataclass
class Certs:
    """PEM files in `folder`: `ca.pem` signs `server.pem`/`server.key` (for `names`) and
    `client.pem`/`client.key`; `other-ca.pem` signs `other-client.pem`/`other-client.key`."""

    folder: Path
    ca: trustme.CA
    other: trustme.CA

    def path(self, name: str) -> str:
        return str(self.folder / name)


def make_certs(folder: Path, *names: str) -> Certs:
    folder.mkdir(parents=True, exist_ok=True)
    ca, other = trustme.CA(), trustme.CA()
    ca.cert_pem.write_to_path(str(folder / "ca.pem"))
    other.cert_pem.write_to_path(str(folder / "other-ca.pem"))
    write_leaf(ca.issue_cert(*(names or ("localhost", "127.0.0.1"))), folder, "server")
    write_leaf(ca.issue_cert("client.example", common_name="client.example"), folder, "client")
    write_leaf(other.issue_cert("intruder.example"), folder, "other-client")
    return Certs(folder, ca, other)


def write_leaf(leaf: trustme.LeafCert, folder: Path, stem: str) -> None:
    (folder / f"{stem}.pem").write_bytes(b"".join(p.bytes() for p in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(str(folder / f"{stem}.key"))


class TlsRelay:
    """Accepts TLS on 127.0.0.1:`port`, relays plaintext to `target`."""

    def __init__(self, target: tuple[str, int], cert: str, key: str,
                 client_ca: str | None = None) -> None:
        self.target = target
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(cert, key)
        if client_ca is not None:
            self.ctx.verify_mode = ssl.CERT_REQUIRED
            self.ctx.load_verify_locations(client_ca)
        self.sni: list[str | None] = []
        self.client_subjects: list[object] = []
        self.ctx.sni_callback = lambda _sock, name, _ctx: self.sni.append(name)
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self.stopped:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, raw: socket.socket) -> None:
        try:
            tls = self.ctx.wrap_socket(raw, server_side=True)
        except (OSError, ssl.SSLError):
            raw.close()
            return
        if tls.getpeercert():
            self.client_subjects.append(tls.getpeercert().get("subject"))
        with tls, socket.create_connection(self.target) as up:
            socks = [tls, up]
            while True:
                ready, _, _ = select.select(socks, [], [], 30)
                if not ready:
                    return
                for s in ready:
                    try:
                        data = s.recv(65536)
                        while s is tls and tls.pending():
                            data += tls.recv(65536)
                    except (OSError, ssl.SSLError):
                        return
                    if not data:
                        return
                    (up if s is tls else tls).sendall(data)

    def stop(self) -> None:
        self.stopped = True
        self.sock.close()
