"""Whether and when to retry: conditions, full-jitter backoff, and the retry budget.

Sans-IO: callers pass the clock reading and the random source, so the budget and the
backoff bounds are property-testable without sleeping.
"""

from __future__ import annotations

import random
from typing import Any

CONNECT_FAILURE = "connect-failure"
RESET = "reset"
TIMEOUT_STATUS = 504
"""A per-try timeout counts as a 504 for `on:` and for the breaker (DESIGN, Ambassador)."""

BREAKER_STATUSES = frozenset({502, 503, 504})


def backoff(n: int, base: float, cap: float, rng: random.Random) -> float:
    """Sleep before retry `n` (0 for the first retry): random(0, min(cap, base * 2**n)).

    The exponent is clamped so a large attempt count cannot overflow the float.
    """
    ceiling = min(cap, base * (2.0 ** min(n, 62)))
    return rng.uniform(0.0, ceiling)


class RetryPolicy:
    """The `retry:` section of a route, compiled once."""

    def __init__(self, cfg: Any) -> None:
        self.attempts = int(cfg.attempts)
        self.base = float(cfg.backoff.base)
        self.cap = float(cfg.backoff.max)
        on = set(cfg.on)
        self.on_connect = CONNECT_FAILURE in on
        self.on_reset = RESET in on
        self.on_status = frozenset(int(c) for c in on if isinstance(c, int))
        self.methods = frozenset(cfg.methods)

    def reason(self, method: str, outcome: str | int) -> str | None:
        """The retry reason for this outcome, or None when it must not be retried.

        Connect failures are retried for any method (nothing reached the upstream); everything
        else only for idempotent methods, because the upstream may have acted on the request.
        """
        if outcome == CONNECT_FAILURE:
            return CONNECT_FAILURE if self.on_connect else None
        if method not in self.methods:
            return None
        if outcome == RESET:
            return RESET if self.on_reset else None
        if isinstance(outcome, int) and outcome in self.on_status:
            return str(outcome)
        return None

    def backoff(self, n: int, rng: random.Random) -> float:
        return backoff(n, self.base, self.cap, rng)


class RetryBudget:
    """Retries ≤ ratio × requests over a sliding window, plus `min_per_second` × window.

    The floor (as in Linkerd's retry budget) lets a quiet route still retry; the ratio keeps a
    failing upstream from seeing more than about (1 + ratio) × the offered load. Counts are
    kept in one-second buckets, so the window slides in whole seconds.
    """

    WINDOW = 10

    def __init__(self, ratio: float, min_per_second: float, window: int = WINDOW) -> None:
        self.ratio = ratio
        self.floor = min_per_second * window
        self.window = window
        self._sec = [-1] * window
        self._req = [0] * window
        self._ret = [0] * window

    def _slot(self, now: float) -> int:
        sec = int(now)
        i = sec % self.window
        if self._sec[i] != sec:
            self._sec[i], self._req[i], self._ret[i] = sec, 0, 0
        return i

    def _totals(self, now: float) -> tuple[int, int]:
        low = int(now) - self.window
        req = ret = 0
        for i in range(self.window):
            if self._sec[i] > low:
                req += self._req[i]
                ret += self._ret[i]
        return req, ret

    def request(self, now: float) -> None:
        self._req[self._slot(now)] += 1

    def try_retry(self, now: float) -> bool:
        """Spend one retry if the budget allows it."""
        i = self._slot(now)
        req, ret = self._totals(now)
        if ret + 1 > self.ratio * req + self.floor:
            return False
        self._ret[i] += 1
        return True


def retry_after(value: bytes | None, now: float) -> float | None:
    """Seconds to wait from a `Retry-After` header (delta-seconds or HTTP-date), or None."""
    if not value:
        return None
    text = value.decode("latin-1").strip()
    if text.isdigit():
        return float(text)
    from email.utils import parsedate_to_datetime

    try:
        when = parsedate_to_datetime(text).timestamp()
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when - now)
