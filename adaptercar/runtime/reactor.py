"""Install Twisted's asyncioreactor on a fresh loop (uvloop when installed), once per process.

grpc.aio and Twisted must share one loop in a worker; the order matters (see DESIGN.md,
"Facts"): create the loop, make it current, then install the reactor on it.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any


def install() -> asyncio.AbstractEventLoop:
    if "twisted.internet.reactor" in sys.modules:
        from twisted.internet import reactor

        existing: Any = getattr(reactor, "_asyncioEventloop", None)
        if existing is None:
            raise RuntimeError("a non-asyncio Twisted reactor was installed before adaptercar's")
        return existing  # type: ignore[no-any-return]
    new_loop: asyncio.AbstractEventLoop
    try:
        import uvloop

        new_loop = uvloop.new_event_loop()
    except ImportError:
        new_loop = asyncio.new_event_loop()
    loop = new_loop
    asyncio.set_event_loop(loop)
    from twisted.internet import asyncioreactor

    asyncioreactor.install(loop)
    return loop
