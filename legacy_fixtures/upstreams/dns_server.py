"""A DNS server on loopback (twisted.names) whose SRV and A answers tests change at run time.

The zone is a JSON file re-read whenever its modification time changes, so a test rewrites
it to move weights, priorities or targets without restarting anything:

    {"srv": {"_pay._tcp.svc.test": {"ttl": 1, "records": [[10, 60, 8001, "a.svc.test"]]}},
     "a":   {"a.svc.test": {"ttl": 1, "addresses": ["127.0.0.1"]}}}

A name absent from the zone answers NXDOMAIN. twisted.names does not add the SRV targets'
A records by itself; they are served from the `a` section. Run it as
`python -m legacy_fixtures.upstreams.dns_server --zone FILE [--port N]`; it prints
`LISTENING 127.0.0.1:PORT` once bound.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from twisted.internet import defer
from twisted.names import common, dns, error, server


def _rec(record: Any) -> Any:
    """twisted.names' stubs do not declare its records as IEncodableRecord."""
    return record


class ZoneResolver(common.ResolverBase):
    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        self.mtime = -1.0
        self.zone: dict[str, Any] = {}

    def _load(self) -> None:
        try:
            mtime = os.stat(self.path).st_mtime_ns
            if mtime != self.mtime:
                self.zone = json.loads(self.path.read_text())
                self.mtime = mtime
        except (OSError, ValueError) as e:  # a half-written file: keep the previous zone
            print(f"dns_server: zone not reloaded: {e}", file=sys.stderr)

    def _lookup(self, name: bytes, cls: int, type: int, timeout: Any) -> defer.Deferred[Any]:  # noqa: A002
        self._load()
        key = name.decode().rstrip(".").lower()
        srv = self.zone.get("srv", {})
        a = self.zone.get("a", {})
        answers: list[dns.RRHeader] = []
        if type == dns.SRV and key in srv:
            entry = srv[key]
            for prio, weight, port, target in entry["records"]:
                answers.append(dns.RRHeader(name, dns.SRV, dns.IN, entry.get("ttl", 1),
                                            _rec(dns.Record_SRV(prio, weight, port, target, ttl=entry.get("ttl", 1))),
                                            auth=True))
        elif type == dns.A and key in a:
            entry = a[key]
            for addr in entry["addresses"]:
                answers.append(dns.RRHeader(name, dns.A, dns.IN, entry.get("ttl", 1),
                                            _rec(dns.Record_A(addr, ttl=entry.get("ttl", 1))), auth=True))
        elif key not in srv and key not in a:
            return defer.fail(error.DomainError(name))
        return defer.succeed((answers, [], []))


def main() -> None:
    ap = argparse.ArgumentParser(description="loopback DNS server for ambassador tests")
    ap.add_argument("--zone", required=True, type=Path)
    ap.add_argument("--port", type=int, default=0)
    args = ap.parse_args()
    from twisted.internet import reactor as _reactor

    reactor: Any = _reactor
    factory = server.DNSServerFactory(authorities=[ZoneResolver(args.zone)])
    factory.noisy = False
    proto = dns.DNSDatagramProtocol(factory)
    proto.noisy = False
    port = reactor.listenUDP(args.port, proto, interface="127.0.0.1")
    print(f"LISTENING 127.0.0.1:{port.getHost().port}", flush=True)
    reactor.run()


if __name__ == "__main__":
    main()
