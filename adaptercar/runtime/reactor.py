"""Install Twisted's asyncioreactor on a fresh loop (uvloop when installed), once per process.

grpc.aio and Twisted must share one loop in a worker; the order matters (see DESIGN.md,
"Facts"): create the loop, make it current, then install the reactor on it.

Child processes: Twisted learns that a child exited from a SIGCHLD handler that writes to
its own wakeup fd (`signal.set_wakeup_fd`). uvloop's `run_forever` takes the process-wide
wakeup fd for itself, so Twisted's waker is never written and a child that exits just after
closing its pipes is never reaped: `processEnded` never fires (the supervisor then waited
for its drain timeout on a worker that had long exited). We route SIGCHLD through a
Python-level handler that schedules the reap on the loop, which works with uvloop and the
stdlib loop alike.
"""

from __future__ import annotations

import asyncio
import signal
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
    from twisted.internet import reactor as _reactor

    r: Any = _reactor
    # "after startup": Twisted has installed its own SIGCHLD handler by then; ours replaces it.
    r.callWhenRunning(reap_children_on_sigchld, loop)
    return loop


def reap_children_on_sigchld(loop: asyncio.AbstractEventLoop) -> None:
    """Reap exited children (and fire their `processEnded`) whenever SIGCHLD arrives.

    uvloop refuses `add_signal_handler(SIGCHLD)`, but it does run Python-level handlers when
    its wakeup fd is written, so a plain handler that schedules the reap on the loop works
    under both loops (the stdlib loop keeps Twisted's waker too: reaping twice is harmless).
    """
    from twisted.internet import process

    def on_sigchld(signum: int, frame: Any) -> None:
        loop.call_soon_threadsafe(process.reapAllProcesses)

    try:
        signal.signal(signal.SIGCHLD, on_sigchld)
        signal.siginterrupt(signal.SIGCHLD, False)
    except (ValueError, OSError):
        return  # not the main thread: Twisted's own handling stays
    process.reapAllProcesses()  # a child may have exited before the handler was in place
