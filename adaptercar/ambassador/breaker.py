"""One pybreaker per endpoint, driven from Twisted coroutines.

pybreaker has no Twisted support, but its `calling()` context manager works around an
`await` inside a coroutine run by `defer.ensureDeferred`. What it does not do is let only one
trial through while half-open (every concurrent call would be a "trial"), so `available()`
and `run()` guard that here. A cancelled try (the caller left, or the overall deadline hit)
says nothing about the endpoint: pybreaker counts excluded exceptions as successes, so a
cancelled half-open trial re-opens the breaker instead of closing it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import pybreaker
from twisted.internet import defer

T = TypeVar("T")

CLOSED, HALF_OPEN, OPEN = 0, 1, 2
_STATE = {pybreaker.STATE_CLOSED: CLOSED, pybreaker.STATE_HALF_OPEN: HALF_OPEN,
          pybreaker.STATE_OPEN: OPEN}


class _Failed(Exception):
    """Raised inside the breaker's block so pybreaker counts an HTTP-level failure."""


class _Listener(pybreaker.CircuitBreakerListener):
    def __init__(self, on_change: Callable[[int], None]) -> None:
        self.on_change = on_change

    def state_change(self, cb: Any, old_state: Any, new_state: Any) -> None:
        self.on_change(_STATE[new_state.name])


class EndpointBreaker:
    def __init__(self, failures: int, reset: float,
                 on_change: Callable[[int], None] = lambda _s: None) -> None:
        self.reset = reset
        self.cb = pybreaker.CircuitBreaker(
            fail_max=failures, reset_timeout=reset,
            exclude=[defer.CancelledError, asyncio.CancelledError],
            listeners=[_Listener(on_change)])
        self.trial = False

    @property
    def state(self) -> int:
        return _STATE[self.cb.current_state]

    def available(self) -> bool:
        """May a try go to this endpoint now? (closed, or the one half-open trial is free)."""
        st = self.cb.current_state
        if st == pybreaker.STATE_CLOSED:
            return True
        if self.trial:
            return False
        if st == pybreaker.STATE_OPEN:
            opened = self.cb._state_storage.opened_at
            return opened is None or datetime.now(UTC) >= opened + timedelta(seconds=self.reset)
        return True

    async def run(self, attempt: Callable[[], Awaitable[T]], failed: Callable[[T], bool]) -> T | None:
        """Run one try under the breaker; None when the breaker refused it (still open)."""
        cb = self.cb
        if cb.current_state == pybreaker.STATE_CLOSED and cb.fail_counter == 0:
            return await self._run_healthy(attempt, failed)
        trial = cb.current_state != pybreaker.STATE_CLOSED
        self.trial = self.trial or trial
        result: T | None = None
        done = False
        try:
            with self.cb.calling():
                result = await attempt()
                done = True
                if failed(result):
                    raise _Failed()
        except _Failed:
            pass
        except pybreaker.CircuitBreakerError:
            if not done:
                return None  # refused before the try: nothing was sent
        except (defer.CancelledError, asyncio.CancelledError):
            if trial:
                self.cb.open()
            raise
        finally:
            if trial:
                self.trial = False
        return result

    async def _run_healthy(self, attempt: Callable[[], Awaitable[T]],
                           failed: Callable[[T], bool]) -> T:
        """The common case, closed with no failure counted: a success changes nothing.

        pybreaker's `calling()` takes a lock, resets the counter and calls every listener
        on each success; here only a failure goes through pybreaker (recorded after the
        fact, with the same effect: the counter grows, or the breaker opens).
        """
        try:
            result = await attempt()
        except (defer.CancelledError, asyncio.CancelledError):
            raise  # says nothing about the endpoint (counted as a success: a no-op here)
        except Exception as e:
            self._record_failure(e)
            raise
        if failed(result):
            self._record_failure(_Failed())
        return result

    def _record_failure(self, why: Exception) -> None:
        try:
            with self.cb.calling():
                raise why
        except (type(why), pybreaker.CircuitBreakerError):
            pass  # the try already happened; opening now only affects the next picks
