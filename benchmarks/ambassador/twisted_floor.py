"""The stack's own ceiling for the ambassador: a hand-written twisted.web reverse proxy on uvloop.

    python benchmarks/ambassador/twisted_floor.py --port P --upstream 127.0.0.1:A [--upstream ...]

No discovery, retries, breakers, timers, header rules or streaming request bodies: round robin
over static upstreams, a pooled keep-alive `Agent`, the response buffered whole (`readBody`).
Not a scenario of `make bench`; used to tell what adaptercar's proxy adds from what
twisted.web and its HTTP client cost (docs/performance.md, the ambassador's method).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
from typing import Any

import uvloop
from twisted.internet import asyncioreactor


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--upstream", action="append", required=True)
    args = p.parse_args()
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    asyncioreactor.install(loop)
    from twisted.internet import reactor as _reactor
    from twisted.web import client, resource, server

    reactor: Any = _reactor
    pool = client.HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = 64
    agent = client.Agent(reactor, pool=pool)
    targets = itertools.cycle([u.encode() for u in args.upstream])

    class Proxy(resource.Resource):
        isLeaf = True

        def render(self, request: Any) -> Any:
            url = b"http://" + next(targets) + request.uri
            d = agent.request(request.method, url)

            def got(resp: Any) -> Any:
                request.setResponseCode(resp.code)
                return client.readBody(resp)

            def done(body: bytes) -> None:
                request.write(body)
                request.finish()

            def failed(_f: Any) -> None:
                request.setResponseCode(502)
                request.finish()

            d.addCallback(got).addCallbacks(done, failed)
            return server.NOT_DONE_YET

    class QuietSite(server.Site):
        def log(self, request: Any) -> None:
            pass

    reactor.listenTCP(args.port, QuietSite(Proxy()), interface="127.0.0.1")
    gc.freeze()
    reactor.run()


if __name__ == "__main__":
    main()
